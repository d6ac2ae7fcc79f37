"""python -m services.ranker: wire settings, model holder and the gRPC server."""

from __future__ import annotations

import logging
import sys

from services.ranker.servicer import RankerServicer
from vidrec.config import RankerSettings, SettingsError, load_settings
from vidrec.logs import setup_logging
from vidrec.models.bundle import ModelBundle
from vidrec.models.online import OnlineModel
from vidrec.security.stores import store_credentials
from vidrec.serving.holder import ModelHolder
from vidrec.serving.server import Server
from vidrec.store.artifacts import ArtifactStore
from vidrec.store.features import FeatureStore
from vidrec.v1 import ranker_pb2, ranker_pb2_grpc

log = logging.getLogger("services.ranker")


def load_model(version: str, path: object) -> OnlineModel:
    from pathlib import Path

    m = OnlineModel(ModelBundle.load(Path(str(path))))
    m.version = version
    return m


def main() -> int:
    try:
        s = load_settings(RankerSettings)
    except SettingsError as exc:
        print(f"ranker: {exc}", file=sys.stderr)
        return 2
    setup_logging("ranker", s.log_level, s.log_format)
    store = FeatureStore.from_url(store_credentials(s), s.key_prefix, s.redis_timeout_ms / 1000)
    holder: ModelHolder[OnlineModel] = ModelHolder(ArtifactStore(s.artifact_root), load_model,
                                                   keep=s.keep_versions)
    servicer = RankerServicer(holder, store, s.top_m)
    server = Server("ranker", s.listen_addr,
                    [ranker_pb2.DESCRIPTOR.services_by_name["Ranker"].full_name],
                    lambda g: ranker_pb2_grpc.add_RankerServicer_to_server(servicer, g),
                    grace_s=s.grace_s, max_in_flight=s.max_in_flight, settings=s)
    server.start()

    holder.serve_when_loaded(server.set_serving, s.reload_interval_s, "ranker")
    server.run_until_signal()
    holder.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
