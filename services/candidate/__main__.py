"""python -m services.candidate: wire settings, stores, model holder and the gRPC server."""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path

from services.candidate.servicer import CandidateServicer
from services.candidate.sources import CandidateModel
from vidrec.config import CandidateSettings, SettingsError, load_settings
from vidrec.logs import setup_logging
from vidrec.security.stores import read_secret, store_credentials
from vidrec.serving.holder import ModelHolder
from vidrec.serving.server import Server
from vidrec.store.artifacts import ArtifactStore
from vidrec.store.features import FeatureStore
from vidrec.store.index import open_index
from vidrec.v1 import candidate_pb2, candidate_pb2_grpc

log = logging.getLogger("services.candidate")


def follow_videos(s: CandidateSettings, holder: ModelHolder[CandidateModel]) -> None:
    """Upsert videos announced on vidrec.videos into the live index within seconds.

    Each candidate process reads the whole topic in a group of its own (every replica must
    index every video); offsets are committed after the upsert.
    """
    import socket

    from vidrec import schema
    from vidrec.infra.kafka import log_id, make_consumer
    from vidrec.serving.convert import video_row
    from vidrec.v1 import events_pb2

    group = f"vidrec-candidate-{socket.gethostname()}-{s.listen_addr.rsplit(':', 1)[-1]}"
    consumer = make_consumer(s.kafka_bootstrap, group, [schema.TOPIC_VIDEOS])
    indexed_for: str | None = None
    kafka_log, rewind = "", False
    while True:
        try:
            version = holder.version
            if version is None:
                # No index to add to yet: consuming now would commit past these videos and
                # lose them (a restarted candidate used to).
                threading.Event().wait(0.5)
                continue
            now_log = log_id(consumer)
            if kafka_log and now_log and now_log != kafka_log:
                # The broker restarted empty: it answers fetches at the old log's positions
                # with nothing until its new log grows past them, so read it from its start.
                log.warning("Kafka log changed (%s -> %s): reading vidrec.videos from the "
                            "start", kafka_log, now_log)
                rewind = True
            kafka_log = now_log or kafka_log
            if rewind and consumer.assignment():  # kept until a group rejoin assigned them
                consumer.seek_to_beginning(*consumer.assignment())
                rewind = False
            if version != indexed_for and consumer.assignment():
                # A newly loaded version's index lacks what was upserted since its model was
                # built: replay the topic into it (upserts of the same id are idempotent).
                consumer.seek_to_beginning(*consumer.assignment())
                indexed_for = version
            for records in consumer.poll(timeout_ms=1000).values():
                for r in records:
                    msg = events_pb2.VideoUpserted()
                    msg.ParseFromString(r.value or b"")
                    if not msg.video_id:
                        continue
                    _, cm = holder.current()
                    cm.add_video(video_row(msg))
                    log.info("indexed new video %s", msg.video_id)
            consumer.commit()
        except Exception:
            log.exception("vidrec.videos follower failed; retrying")
            threading.Event().wait(1.0)


def main() -> int:
    try:
        s = load_settings(CandidateSettings)
    except SettingsError as exc:
        print(f"candidate: {exc}", file=sys.stderr)
        return 2
    setup_logging("candidate", s.log_level, s.log_format)
    index = open_index(s.qdrant_url, s.index_root, read_secret(s.qdrant_api_key_file))
    store = FeatureStore.from_url(store_credentials(s), s.key_prefix, s.redis_timeout_ms / 1000)
    holder: ModelHolder[CandidateModel] = ModelHolder(
        ArtifactStore(s.artifact_root), lambda v, p: CandidateModel(v, Path(p), index, s.ann_ef),
        keep=s.keep_versions, name="candidate")
    servicer = CandidateServicer(holder, store, s.num_candidates)
    server = Server("candidate", s.listen_addr,
                    [candidate_pb2.DESCRIPTOR.services_by_name["Candidate"].full_name],
                    lambda g: candidate_pb2_grpc.add_CandidateServicer_to_server(servicer, g),
                    grace_s=s.grace_s, max_in_flight=s.max_in_flight, settings=s)
    server.start()

    holder.serve_when_loaded(server.set_serving, s.reload_interval_s, "candidate")
    if s.kafka_bootstrap:
        threading.Thread(target=follow_videos, args=(s, holder), daemon=True).start()
    server.run_until_signal()
    holder.stop()
    index.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
