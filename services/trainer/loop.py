"""The consuming loop: poll -> decode -> log -> apply -> dead letters -> commit.

Offsets are committed only after the batch's effects are in Redis (the script returned), its
events are in the fsync'd log and its dead letters are acknowledged by Kafka. A crash
anywhere before the commit redelivers the batch, and the store skips what was applied.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError

from vidrec import events as ev
from vidrec import schema
from vidrec.events import MAX_RECORD_BYTES, FeedbackWeights, event_problem
from vidrec.infra.streams import Record, RecordSink, RecordSource
from vidrec.serving.convert import video_row
from vidrec.serving.metrics import (
    ARM_EVENTS,
    ARM_WATCH_SECONDS,
    BATCH_SECONDS,
    EVENTS,
    HEARTBEAT,
    LAG,
)
from vidrec.store.apply import DEDUPE_HORIZON_S, Position
from vidrec.store.eventlog import EventLog
from vidrec.store.features import FeatureStore
from vidrec.v1 import events_pb2

log = logging.getLogger(__name__)


def decode(value: bytes | None) -> events_pb2.Event | str:
    """The event in a record, or the reason it goes to the dead-letter topic."""
    if value is None:
        return "empty record"
    if len(value) > MAX_RECORD_BYTES:
        return f"record is {len(value)} bytes; the limit is {MAX_RECORD_BYTES}"
    e = events_pb2.Event()
    try:
        e.ParseFromString(value)
    except DecodeError as exc:
        return f"not a vidrec.v1.Event: {exc}"
    return event_problem(e) or e


@dataclass
class LoopStats:
    batches: int = 0
    applied: int = 0
    duplicates: int = 0
    dead: int = 0
    videos: int = 0
    last_batch_s: float = 0.0
    lag: int = -1  # records not consumed yet, from the last fetch (-1: unknown); heartbeat
    reasons: dict[str, int] = field(default_factory=dict)


def dead_letter(reason: str, record: Record) -> bytes:
    return json.dumps({
        "reason": reason, "topic": record.topic, "partition": record.partition,
        "offset": record.offset,
        "key": record.key.decode("utf-8", "replace") if record.key else None,
        "value_b64": base64.b64encode(record.value or b"").decode()[:100_000],
    }).encode()


class TrainerLoop:
    def __init__(self, consumer: RecordSource, store: FeatureStore, producer: RecordSink,
                 event_log: EventLog, batch_size: int = 2000,
                 on_video: Callable[[dict[str, Any]], None] | None = None,
                 linger_s: float = 0.1, weights: FeedbackWeights | None = None,
                 dedupe_horizon_s: float = DEDUPE_HORIZON_S,
                 log_id: Callable[[], str] | None = None, trending_min_seen: int = 0) -> None:
        self.consumer = consumer
        self.trending_min_seen = trending_min_seen
        # Which Kafka log the offsets belong to (vidrec.infra.kafka.log_id): positions are
        # stored as "<log>/<topic>:<partition>", so a broker that restarted empty (offsets
        # from 0 again) is not mistaken for redeliveries of the old log.
        self.log_id = log_id or (lambda: "")
        self._log = ""
        self._rewind = False  # a new log seen, not yet read again from its start
        self.store = store
        self.producer = producer
        self.weights = weights
        self.dedupe_horizon_s = dedupe_horizon_s
        self.log = event_log
        self.batch_size = batch_size
        self.stats = LoopStats()
        self.on_video = on_video
        self.linger_s = linger_s

    def run_once(self, timeout_ms: int = 500) -> int:
        records = self._gather(timeout_ms)
        # Checked after an empty poll too: a broker that restarted empty answers fetches at
        # the old log's positions with nothing (no out-of-range error), so waiting for a
        # record to notice the new log stalled the trainer until the new log grew past
        # them (about 2 minutes in the fault benchmark).
        prefix = self._log_prefix()
        if prefix is None or not records:  # a new log: dropped, read again from its start
            return 0
        t0 = time.perf_counter()
        good: list[tuple[Record, events_pb2.Event]] = []
        dead: list[tuple[str, Record]] = []
        for r in records:
            if r.topic == schema.TOPIC_VIDEOS:
                self._video(r, dead)
                continue
            d = decode(r.value)
            if isinstance(d, str):
                dead.append((d, r))
            else:
                good.append((r, d))
        events = [e for _, e in good]
        self.log.append(events)
        res = self.store.apply_events(
            events, self.weights,
            [Position(f"{prefix}{r.topic}:{r.partition}", r.offset,
                      int(getattr(r, "timestamp", -1) or -1)) for r, _ in good],
            self.dedupe_horizon_s, trending_min_seen=self.trending_min_seen)
        unknown = {id(e) for e in res.unknown_video}
        dead += [(f"unknown video {e.video_id!r}", r) for r, e in good if id(e) in unknown]
        if dead:
            self.producer.send_records(schema.TOPIC_EVENTS_DLQ,
                                       [(r.key, dead_letter(reason, r)) for reason, r in dead])
            for reason, _ in dead:
                key = reason.split(":")[0].split(" '")[0][:60]
                self.stats.reasons[key] = self.stats.reasons.get(key, 0) + 1
        self.consumer.commit()
        s = self.stats
        s.batches += 1
        s.applied += len(res.applied)
        s.duplicates += res.duplicates
        s.dead += len(dead)
        s.last_batch_s = time.perf_counter() - t0
        EVENTS.labels("applied").inc(len(res.applied))
        EVENTS.labels("duplicate").inc(res.duplicates)
        EVENTS.labels("dead_letter").inc(len(dead))
        BATCH_SECONDS.observe(s.last_batch_s)
        HEARTBEAT.set_to_current_time()
        # Summed per batch first: a labelled metric update costs microseconds, once per
        # (arm, type) per batch instead of once per event.
        per_type: Counter[tuple[str, str]] = Counter()
        watch: dict[str, float] = {}
        for e in res.applied:
            arm = e.experiment_arm or "-"
            per_type[arm, ev.NAME_OF.get(e.type, "other")] += 1
            if e.watch_time_s:
                watch[arm] = watch.get(arm, 0.0) + e.watch_time_s
        for (arm, kind), n in per_type.items():
            ARM_EVENTS.labels(arm, kind).inc(n)
        for arm, secs in watch.items():
            ARM_WATCH_SECONDS.labels(arm).inc(secs)
        self._record_lag()
        if dead:
            log.warning("batch: %d applied, %d duplicates, %d to DLQ", len(res.applied),
                        res.duplicates, len(dead))
        return len(records)

    def _record_lag(self) -> None:
        """Consumer lag from what the last fetches said (no request to the broker)."""
        highwater = getattr(self.consumer, "highwater", None)
        position = getattr(self.consumer, "position", None)
        if highwater is None or position is None:
            return
        try:
            lag = 0
            for tp in self.consumer.assignment():
                hw = highwater(tp)
                if hw is not None:
                    lag += max(0, hw - position(tp))
            LAG.set(lag)
            self.stats.lag = lag
        except Exception:  # a rebalance under way: the next batch says it
            log.debug("lag unknown", exc_info=True)

    def _log_prefix(self) -> str | None:
        """The applied-offset prefix of the log this batch came from; None when the broker
        turned out to hold a new log (the batch is dropped and the log read again from its
        start: the consumer may have fetched the new log at the old log's positions,
        skipping its first records; event ids catch what was applied already)."""
        current = self.log_id()
        if current and current != self._log:
            previous, self._log = self._log, current
            # The marks of other logs can never match a record again.
            dropped = self.store.forget_positions(keep_prefix=f"{current}/")
            if previous:
                log.warning("Kafka log changed (%s -> %s: the broker restarted empty); "
                            "reading it from the start, %d old position marks dropped, "
                            "event ids still dedupe", previous, current, dropped)
                self._rewind = True
        if self._rewind:
            # Kept until partitions are assigned: a group rejoin may be under way.
            parts = list(self.consumer.assignment())
            if parts:
                self.consumer.seek_to_beginning(*parts)
                self._rewind = False
            return None
        return f"{self._log}/" if self._log else ""

    def _gather(self, timeout_ms: int) -> list[Record]:
        """A batch: up to batch_size records, waiting at most linger_s after the first one.

        Every batch pays a fixed cost (log fsync, one script call, an offset commit); a
        trickle of events applied one poll at a time cost ~1 ms per event, batching them
        over linger_s costs ~0.05 ms per event and adds at most linger_s of delay.
        """
        polled = self.consumer.poll(timeout_ms=timeout_ms, max_records=self.batch_size)
        records = [r for rs in polled.values() for r in rs]
        deadline = time.monotonic() + self.linger_s
        while records and len(records) < self.batch_size and time.monotonic() < deadline:
            left_ms = max(1, int(1000 * (deadline - time.monotonic())))
            more = self.consumer.poll(timeout_ms=left_ms,
                                      max_records=self.batch_size - len(records))
            records += [r for rs in more.values() for r in rs]
        return records

    def _video(self, r: Record, dead: list[tuple[str, Record]]) -> None:
        v = events_pb2.VideoUpserted()
        try:
            v.ParseFromString(r.value or b"")
        except Exception as exc:
            dead.append((f"not a vidrec.v1.VideoUpserted: {exc}", r))
            return
        if not v.video_id:
            dead.append(("video_id is empty", r))
            return
        row = video_row(v)
        self.store.put_videos([row])
        if not v.hidden:
            self.store.push_fresh(v.video_id)
        self.stats.videos += 1
        if self.on_video is not None:
            self.on_video(row)
