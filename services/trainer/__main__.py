"""python -m services.trainer: the event consumer plus fold-in and retrain timers, and
the popular list rewritten from trending counts every few seconds.

Several replicas form a trainer group: one Kafka consumer group, each replica applying the
partitions it owns (exactly once across rebalances: store/apply.py, store/cluster_apply.py).
Fold-in pops dirty users from shared sets (each user to one replica); the popular list is
rewritten by whichever replica, all from the same merged counts; a retrain runs on the
replica holding the retrain lease, and publishes only through its fence (store/lease.py).
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from services.trainer.loop import TrainerLoop
from vidrec import schema
from vidrec.config import SettingsError, TrainerSettings, load_settings
from vidrec.events import FeedbackWeights
from vidrec.infra.streams import RecordSource
from vidrec.logs import setup_logging
from vidrec.security.stores import store_credentials
from vidrec.store import trending
from vidrec.store.artifacts import ArtifactStore
from vidrec.store.eventlog import EventLog
from vidrec.store.features import FeatureStore

if TYPE_CHECKING:
    from vidrec.models.online import OnlineModel

log = logging.getLogger("services.trainer")


def main() -> int:
    try:
        s = load_settings(TrainerSettings)
        if not s.kafka_bootstrap:
            raise SettingsError("VIDREC_KAFKA_BOOTSTRAP is required for the trainer")
    except SettingsError as exc:
        print(f"trainer: {exc}", file=sys.stderr)
        return 2
    setup_logging("trainer", s.log_level, s.log_format)
    from vidrec.infra.kafka import (
        ALL_TOPICS,
        EventProducer,
        ensure_topics,
        log_id,
        make_consumer,
    )

    redis_url = store_credentials(s)  # first: it configures every Kafka client below
    if s.metrics_addr:
        from vidrec.serving.metrics import serve

        serve(s.metrics_addr)
    ensure_topics(s.kafka_bootstrap, ALL_TOPICS)
    store = FeatureStore.from_url(redis_url, s.key_prefix)
    producer = EventProducer(s.kafka_bootstrap)
    replica = s.replica_id or socket.gethostname()
    consumer = make_consumer(s.kafka_bootstrap, s.group_id,
                             [schema.TOPIC_EVENTS, schema.TOPIC_VIDEOS],
                             client_id=f"vidrec-{s.group_id}-{replica}")
    # Replicas may share the events directory (the retrain reads every replica's file).
    events = EventLog(Path(s.events_dir), replica=s.replica_id)
    videos_log = Path(s.events_dir) / "videos.jsonl"

    def on_video(row: dict) -> None:
        with videos_log.open("a") as f:
            f.write(json.dumps(row) + "\n")

    artifacts = ArtifactStore(s.artifact_root)
    loop = TrainerLoop(consumer, store, producer, events, s.batch_size, on_video=on_video,
                       weights=serving_weights(artifacts), dedupe_horizon_s=s.dedupe_horizon_s,
                       log_id=lambda: log_id(consumer),
                       trending_min_seen=s.trending_min_seen)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    model: dict[str, OnlineModel] = {}

    def foldin_loop() -> None:
        # Imported here, off the consuming thread's start: torch takes seconds to import on
        # a busy machine, and events must be applied from the first second.
        from vidrec.models.bundle import ModelBundle
        from vidrec.models.online import OnlineModel  # noqa: F811
        from vidrec.training.foldin import fold_in_dirty

        while not stop.wait(s.foldin_interval_s):
            try:
                v = artifacts.latest()
                if v is None or not artifacts.loadable(v):
                    continue
                if v not in model:
                    model.clear()
                    model[v] = OnlineModel(ModelBundle.load(artifacts.path(v)))
                fold_in_dirty(store, model[v], v)
            except Exception:
                log.exception("fold-in pass failed; will retry")

    def retrain_loop() -> None:
        from vidrec.store.lease import LeaseLost
        from vidrec.training.retrain import run_retrain

        lease = store.lease(f"trainer-{replica}", s.retrain_lease_s)
        last_t, last_n = time.monotonic(), events.count()
        while not stop.wait(2.0):
            n = events.count()
            due_n = s.retrain_every_events and n - last_n >= s.retrain_every_events
            due_t = s.retrain_every_s and time.monotonic() - last_t >= s.retrain_every_s
            if not (due_n or due_t):
                continue
            last_t, last_n = time.monotonic(), n
            try:
                if lease.acquire() is None:
                    log.info("retrain due, but another replica holds the retrain lease")
                    continue
            except Exception:
                log.exception("retrain lease unavailable; retrain skipped")
                continue
            done = threading.Event()

            def renew(done: threading.Event = done) -> None:
                while not done.wait(s.retrain_lease_s / 3):
                    try:
                        if not lease.renew():
                            log.warning("retrain lease lost; its publish will be refused")
                            return
                    except Exception:  # Redis trouble: the fence decides at publish
                        log.warning("retrain lease not renewed")

            renewer = threading.Thread(target=renew, name="lease", daemon=True)
            renewer.start()
            try:
                run_retrain(s, events, videos_log, artifacts, store, producer,
                            fence=lease.fence)
            except LeaseLost as exc:
                log.warning("retrain not published: %s", exc)
            except Exception:
                log.exception("retrain failed; serving version unchanged")
            finally:
                done.set()
                renewer.join()
                try:
                    lease.release()
                except Exception:  # it expires on its own
                    log.warning("retrain lease not released")

    threading.Thread(target=foldin_loop, name="fold-in", daemon=True).start()
    threading.Thread(target=retrain_loop, name="retrain", daemon=True).start()
    log.info("trainer %s consuming %s, %s as group %s", replica, schema.TOPIC_EVENTS,
             schema.TOPIC_VIDEOS, s.group_id)
    last_beat = last_trend = 0.0
    beat_assigned = False
    must_rewind = False
    while not stop.is_set():
        try:
            if must_rewind:
                # Until the consumer is back at the committed offsets, polling on would
                # skip the failed batch (and a later commit would lose it for good).
                rewind(consumer)
                must_rewind = False
            loop.run_once(timeout_ms=500)
        except Exception:
            # Nothing was committed for this batch: it is redelivered after a pause.
            log.exception("batch failed; not committed, retrying")
            must_rewind = True
            stop.wait(1.0)
        assigned = len(consumer.assignment())
        if time.monotonic() - last_beat > 2.0 or (assigned and not beat_assigned):
            # The first beat with partitions tells `vidrec status` and the stack that
            # events are being applied; then one every 2 s.
            last_beat = time.monotonic()
            try:
                store.beat({**loop.stats.__dict__, "partitions": assigned,
                            "replica": replica}, replica=s.replica_id)
                beat_assigned = beat_assigned or bool(assigned)
            except Exception:  # Redis trouble: the batch loop already says so
                log.warning("heartbeat not written")
        if time.monotonic() - last_trend > trending.REFRESH_S:
            last_trend = time.monotonic()
            try:
                store.refresh_trending()
            except Exception:  # the previous list stays; the next pass retries
                log.exception("trending refresh failed")
    log.info("trainer stopping: %s", loop.stats)
    consumer.close(autocommit=False)
    producer.close()
    return 0


def serving_weights(artifacts: ArtifactStore) -> FeedbackWeights:
    """The feedback weights the serving model was trained with (the fold-in solves against
    it), else the defaults."""
    latest = artifacts.latest()
    if latest is None:
        return FeedbackWeights()
    manifest = json.loads((artifacts.path(latest) / "manifest.json").read_text())
    return FeedbackWeights(**manifest.get("config", {}).get("weights", {}))


def rewind(consumer: RecordSource) -> None:
    """Back to the last committed offsets, so the failed batch is fetched again."""
    for tp in consumer.assignment():
        committed = consumer.committed(tp)
        if committed is None:
            consumer.seek_to_beginning(tp)
        else:
            consumer.seek(tp, committed)


if __name__ == "__main__":
    sys.exit(main())
