"""python -m services.reranker: wire settings, Redis and the gRPC server."""

from __future__ import annotations

import sys

from services.reranker.servicer import RerankerServicer
from vidrec.config import RerankerSettings, SettingsError, load_settings
from vidrec.logs import setup_logging
from vidrec.rerank import RerankConfig
from vidrec.security.stores import store_credentials
from vidrec.serving.server import Server
from vidrec.store.features import FeatureStore
from vidrec.v1 import reranker_pb2, reranker_pb2_grpc


def main() -> int:
    try:
        s = load_settings(RerankerSettings)
        cfg = RerankConfig.from_settings(s)
    except (SettingsError, ValueError) as exc:
        print(f"reranker: {exc}", file=sys.stderr)
        return 2
    setup_logging("reranker", s.log_level, s.log_format)
    store = FeatureStore.from_url(store_credentials(s), s.key_prefix, s.redis_timeout_ms / 1000)
    servicer = RerankerServicer(store, cfg)
    server = Server("reranker", s.listen_addr,
                    [reranker_pb2.DESCRIPTOR.services_by_name["Reranker"].full_name],
                    lambda g: reranker_pb2_grpc.add_RerankerServicer_to_server(servicer, g),
                    grace_s=s.grace_s, max_in_flight=s.max_in_flight, settings=s)
    server.start()
    server.set_serving(True)
    server.run_until_signal()
    return 0


if __name__ == "__main__":
    sys.exit(main())
