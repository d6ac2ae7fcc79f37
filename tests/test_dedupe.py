"""Exactly-once with bounded memory, in a real Redis (store/apply.py).

Before: applied ids were kept 7 days in sets keyed by the event's own timestamp hour, so a
client resending an event with another timestamp had it applied twice, and memory grew with
everything applied in a week.
"""

from __future__ import annotations

import time

from vidrec.store.apply import Position
from vidrec.store.features import FeatureStore
from vidrec.v1 import events_pb2

E = events_pb2
HOUR = 3600.0


def like(eid: str, user: str = "u", video: str = "a", t: float = 1_700_000_000.0
         ) -> events_pb2.Event:
    return E.Event(event_id=eid, user_id=user, video_id=video, type=E.EVENT_TYPE_LIKE,
                   timestamp=t, model_version="m", experiment_arm="x")


def likes(store: FeatureStore) -> int:
    return int(store.stats_counters("m", "x").get("likes", 0))


def store_with(redis_client, key_prefix: str) -> FeatureStore:  # type: ignore[no-untyped-def]
    s = FeatureStore(redis_client, key_prefix)
    s.put_videos([{"video_id": v} for v in "abc"])
    return s


def test_a_resend_with_another_timestamp_is_applied_once(redis_client, key_prefix: str) -> None:  # type: ignore[no-untyped-def]
    store = store_with(redis_client, key_prefix)
    assert len(store.apply_events([like("e1", t=1_700_000_000.0)]).applied) == 1
    again = store.apply_events([like("e1", t=1_700_000_000.0 + 7200)])  # other hour
    assert again.duplicates == 1 and not again.applied
    assert likes(store) == 1


def test_kafka_redeliveries_are_duplicates_at_any_age(redis_client, key_prefix: str) -> None:  # type: ignore[no-untyped-def]
    store = store_with(redis_client, key_prefix)
    now = time.time()
    batch = [like(f"e{i}", user=f"u{i % 3}") for i in range(10)]
    pos = [Position("vidrec.events:0", 100 + i) for i in range(10)]
    assert len(store.apply_events(batch, positions=pos, now=now).applied) == 10
    # A day later the ids are forgotten (bounded memory), the offsets are not.
    later = now + 24 * HOUR
    res = store.apply_events(batch[4:], positions=pos[4:], now=later)
    assert res.duplicates == 6 and not res.applied
    # The same ids as new records (a client resend a day later) count again: the horizon
    # is the promise for client resends.
    fresh = [Position("vidrec.events:0", 200 + i) for i in range(2)]
    assert len(store.apply_events(batch[:2], positions=fresh, now=later).applied) == 2
    # Another partition's offsets are its own.
    other = store.apply_events([like("z1")], positions=[Position("vidrec.events:1", 0)],
                               now=later)
    assert len(other.applied) == 1
    assert likes(store) == 13


def test_remembered_ids_stay_bounded(redis_client, key_prefix: str) -> None:  # type: ignore[no-untyped-def]
    """Ids are kept in arrival buckets of one horizon that expire whole (after two):
    memory follows the traffic of the last two horizons, not the total."""
    store = store_with(redis_client, key_prefix)
    t0 = (time.time() // HOUR) * HOUR  # the start of a bucket
    for hour in range(48):
        store.apply_events([like(f"h{hour}-{i}") for i in range(50)], now=t0 + hour * HOUR)
    now = t0 + 47 * HOUR
    # This bucket's 50 and the previous one's (+ each bucket's empty marker).
    assert store.remembered_ids(now=now) == 102
    done = list(redis_client.scan_iter(f"{store.keys.processed_events()}:*"))
    assert len(done) == 48 and all(0 < redis_client.ttl(k) <= 2 * HOUR + 60 for k in done)
    nbytes = redis_client.memory_usage(store.keys.processed_events(int(now // HOUR)))
    assert nbytes / 50 < 200  # measured bytes per id: docs/redis.md
    # An id from the previous bucket is still a duplicate; one from two buckets back is not.
    assert store.apply_events([like("h46-0")], now=now).duplicates == 1
    assert len(store.apply_events([like("h45-0")], now=now).applied) == 1


def test_an_unknown_video_is_reported_on_every_delivery(redis_client, key_prefix: str) -> None:  # type: ignore[no-untyped-def]
    """A crash after the script and before the dead-letter send must not lose the record:
    its redelivery is reported again, not skipped as a duplicate."""
    store = store_with(redis_client, key_prefix)
    batch = [like("bad", video="nope"), like("good", video="a")]
    pos = [Position("vidrec.events:0", 5), Position("vidrec.events:0", 6)]
    first = store.apply_events(batch, positions=pos)
    assert [e.event_id for e in first.unknown_video] == ["bad"]
    again = store.apply_events(batch, positions=pos)
    assert [e.event_id for e in again.unknown_video] == ["bad"] and again.duplicates == 1


def test_a_passed_offset_with_a_newer_record_is_judged_by_its_event_id(
        redis_client, key_prefix: str) -> None:  # type: ignore[no-untyped-def]
    """A broker restarted empty numbers records from 0 again: a record at an offset the
    trainer passed long ago, but produced after everything it applied, is new (applied
    unless its id was applied within the horizon), not a redelivery to drop."""
    store = store_with(redis_client, key_prefix)
    now = time.time()
    t0 = 1_800_000_000_000  # record timestamps, ms
    old = [like(f"o{i}") for i in range(5)]
    store.apply_events(old, positions=[Position("p:0", 500 + i, t0 + i) for i in range(5)],
                       now=now)
    # Genuine redeliveries: passed offsets, record times within what was applied.
    res = store.apply_events(old[2:], positions=[Position("p:0", 502 + i, t0 + 2 + i)
                                                 for i in range(3)], now=now + 2 * 86400)
    assert res.duplicates == 3 and not res.applied
    # A new log: offsets from 0 again, records produced later. One id already applied.
    new = [like(f"n{i}") for i in range(3)] + [old[0]]
    res = store.apply_events(new, positions=[Position("p:0", i, t0 + 60_000 + i)
                                             for i in range(4)], now=now)
    assert [e.event_id for e in res.applied] == ["n0", "n1", "n2"] and res.duplicates == 1
    assert likes(store) == 8


def test_per_user_stats_keys_expire(redis_client, key_prefix: str) -> None:  # type: ignore[no-untyped-def]
    """The per-user counts behind the A/B intervals are kept 30 days, not forever (they
    grew with users x arms x versions)."""
    store = store_with(redis_client, key_prefix)
    e = E.Event(event_id="i1", user_id="u7", video_id="a", type=E.EVENT_TYPE_IMPRESSION,
                timestamp=1_700_000_000.0, model_version="m", experiment_arm="x")
    store.apply_events([e])
    key = store.keys.counters("m", "x") + ":u:u7"
    assert redis_client.exists(key)
    assert 29 * 86400 < redis_client.ttl(key) <= 30 * 86400
