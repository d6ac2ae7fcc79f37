"""The seconds tier: apply a batch of events to Redis, exactly once per event id.

One MULTI/EXEC per batch holds every effect *and* the event ids it applied, so a trainer
killed at any point either applied a batch completely (its ids are then found and skipped
on redelivery) or not at all. Kafka offsets are committed only after EXEC returns.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from services.trainer.events import EVENT_NAMES, kind
from vidrec.store.features import FeatureStore
from vidrec.store.stats import COMPLETE
from vidrec.v1 import events_pb2

E = events_pb2
PROCESSED_TTL_S = 7 * 86400
DIRTY_USERS = "dirty"


@dataclass
class ApplyResult:
    applied: list[events_pb2.Event] = field(default_factory=list)
    duplicates: int = 0
    unknown_video: list[events_pb2.Event] = field(default_factory=list)


def processed_key(store: FeatureStore, e: events_pb2.Event) -> str:
    """Ids are bucketed by event hour so old buckets expire; a replay has the same hour."""
    hour = int((e.timestamp or 0) // 3600)
    return f"{store.keys.processed_events()}:{hour}"


def dirty_key(store: FeatureStore) -> str:
    return f"{store.keys.prefix}:trainer:{DIRTY_USERS}"


def apply_batch(store: FeatureStore, events: Sequence[events_pb2.Event]) -> ApplyResult:
    res = ApplyResult()
    if not events:
        return res
    # Read phase: which ids are done, which videos exist (one round trip).
    p = store.r.pipeline(transaction=False)
    for e in events:
        p.sismember(processed_key(store, e), e.event_id)
    videos = sorted({e.video_id for e in events})
    for v in videos:
        p.exists(store.keys.video_features(v))
    out = p.execute()
    done = out[: len(events)]
    exists = dict(zip(videos, out[len(events):], strict=True))
    seen_ids: set[str] = set()
    todo = []
    for e, d in zip(events, done, strict=True):
        if d or e.event_id in seen_ids:
            res.duplicates += 1
        elif not exists[e.video_id]:
            res.unknown_video.append(e)
        else:
            seen_ids.add(e.event_id)
            todo.append(e)
    if not todo:
        return res
    # Write phase: all effects + the ids, atomically.
    t = store.r.pipeline(transaction=True)
    buckets: set[str] = set()
    counters: dict[tuple[str, str], dict[str, float]] = {}
    dirty: set[str] = set()
    for e in todo:
        k = kind(e)
        if k == "positive":
            store.record_positive(t, e.user_id, e.video_id)
            dirty.add(e.user_id)
        elif k == "negative":
            store.record_negative(t, e.user_id, e.video_id)
            dirty.add(e.user_id)
        elif k == "seen":
            store.record_seen(t, e.user_id, e.video_id)
        _count(counters, e)
        pk = processed_key(store, e)
        t.sadd(pk, e.event_id)
        buckets.add(pk)
    for (version, arm), inc in counters.items():
        ck = store.keys.counters(version, arm)
        for f, v in inc.items():
            if f == "watch_time_s":
                t.hincrbyfloat(ck, f, v)
            else:
                t.hincrby(ck, f, int(v))
        t.sadd(store.keys.stats_index(), f"{version}|{arm}")
    for b in buckets:
        t.expire(b, PROCESSED_TTL_S)
    if dirty:
        t.sadd(dirty_key(store), *dirty)
    t.execute()
    res.applied = todo
    return res


def _count(counters: dict[tuple[str, str], dict[str, float]], e: events_pb2.Event) -> None:
    c = counters.setdefault((e.model_version or "-", e.experiment_arm or "-"), {})
    name = EVENT_NAMES.get(e.type, "")
    field_ = {"impression": "impressions", "click": "clicks", "watch": "watches",
              "like": "likes", "dislike": "dislikes"}.get(name)
    if field_:
        c[field_] = c.get(field_, 0) + 1
    if e.type == E.EVENT_TYPE_WATCH:
        if e.value >= COMPLETE:
            c["completed"] = c.get("completed", 0) + 1
        if e.watch_time_s:
            c["watch_time_s"] = c.get("watch_time_s", 0.0) + e.watch_time_s


def now() -> float:
    return time.time()
