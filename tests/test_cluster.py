"""Redis Cluster and the trainer group, against a real three-master cluster
(vidrec.infra.embedded.RedisClusterServers) and a real Kafka-protocol broker: no mocks.

The reference is always the single-Redis apply (one script per batch, store/apply.py),
itself checked against an offline replay in test_trainer.py: the cluster's two-step apply
must leave the same per-user keys and the same merged global state.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
import zlib
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.test_trainer import (
    VIDEOS,
    counters,
    expected_state,
    kind,
    make_events,
    start_trainer,
    trainer_env,
)
from vidrec import schema
from vidrec.events import FeedbackWeights
from vidrec.store import trending
from vidrec.store.apply import Position
from vidrec.store.cluster_apply import ClusterApplier
from vidrec.store.features import NEG_LEN, FeatureStore
from vidrec.v1 import events_pb2

E = events_pb2
NOW = 1_700_100_000.0
PARTS = 4


def cluster_store(redis_cluster: Any, prefix: str) -> FeatureStore:
    store = FeatureStore.from_url(redis_cluster.url, prefix, timeout_s=5.0)
    assert store.cluster
    return store


def with_ratings(events: list[events_pb2.Event], seed: int) -> list[events_pb2.Event]:
    """Every seventh event a rating (its kind depends on the user's ratings so far)."""
    rng = random.Random(seed)
    for e in events[::7]:
        e.type, e.value = E.EVENT_TYPE_RATING, float(rng.randint(1, 5))
    return events


def positions(events: list[events_pb2.Event], log: str = "L") -> list[Position]:
    """Kafka positions as the broker gives them: partition by user, offsets in order."""
    nxt: dict[int, int] = defaultdict(int)
    out = []
    for i, e in enumerate(events):
        p = zlib.crc32(e.user_id.encode()) % PARTS
        out.append(Position(f"{log}/{schema.TOPIC_EVENTS}:{p}", nxt[p], 1_700_000_000_000 + i))
        nxt[p] += 1
    return out


def batches(events: list[Any], pos: list[Position], size: int
            ) -> list[tuple[list[Any], list[Position]]]:
    return [(events[s: s + size], pos[s: s + size]) for s in range(0, len(events), size)]


def state(store: FeatureStore, users: set[str]) -> dict[str, Any]:
    """Everything the apply writes, read through the store's public methods."""
    w = FeedbackWeights()
    out: dict[str, Any] = {}
    for u in sorted(users):
        st = store.user(u)
        fb = store.user_feedback(u, w)
        out[u] = (st.history, st.seen, st.negatives,
                  {v: (round(a, 9), b) for v, (a, b) in fb.items()})
    stats = []
    for r in sorted(store.read_stats(), key=lambda r: (r["model_version"], r["experiment_arm"])):
        stats.append({k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()})
    out["stats"] = stats
    return out


def trending_close(a: dict[str, float], b: dict[str, float]) -> bool:
    return a.keys() == b.keys() and all(abs(a[v] / b[v] - 1) < 1e-9 for v in a)


def test_cluster_apply_equals_single_redis_apply(
        redis_client: redis.Redis, redis_cluster: Any, key_prefix: str) -> None:
    """(a) The same stream, with redeliveries, a client resend, unknown videos and
    ratings, applied in batches: the same user keys and the same merged trending,
    counters (with their per-user moments) and dirty users on both."""
    single = FeatureStore(redis_client, key_prefix)
    multi = cluster_store(redis_cluster, key_prefix)
    events = with_ratings(make_events(3000, users=60, seed=21), seed=21)
    events[600].video_id = "nope"  # unknown video: reported every time, never applied
    # Ids and arms are any UTF-8 (the cluster script gets a user's events as one JSON
    # argument): they must come through byte for byte.
    for i in range(10, 14):
        events[i].user_id, events[i].experiment_arm = "ü-用户-😀", "ärm"
    events[12].video_id = events[13].video_id = "vidé-😀"
    pos = positions(events)
    resend = E.Event()
    resend.CopyFrom(events[50])  # a client resending through LogEvents: a new record
    for s in (single, multi):
        s.put_videos([{"video_id": v} for v in [*VIDEOS, "vidé-😀"]])
    unknown: dict[str, list[str]] = {"single": [], "multi": []}
    for name, s in (("single", single), ("multi", multi)):
        for evs, ps in batches(events, pos, 250):
            res = s.apply_events(evs, positions=ps, now=NOW)
            unknown[name] += [e.event_id for e in res.unknown_video]
        # A redelivery of a stretch (crash before the commit), and the resend.
        again = s.apply_events(events[500:900], positions=pos[500:900], now=NOW)
        assert not again.applied and again.duplicates == 399  # 400 less the unknown one
        unknown[name] += [e.event_id for e in again.unknown_video]
        r2 = s.apply_events([resend], positions=[Position(pos[-1].partition, 99_999,
                                                          1_800_000_000_000)], now=NOW)
        assert not r2.applied and r2.duplicates == 1
    assert unknown["single"] == unknown["multi"] == [events[600].event_id] * 2
    users = {e.user_id for e in events}
    want, got = state(single, users), state(multi, users)
    assert got == want
    assert multi.user("ü-用户-😀").seen == single.user("ü-用户-😀").seen != set()
    # The offline replay's counters agree too (its histories know no ratings).
    assert counters(multi) == expected_state([e for e in events if e.video_id != "nope"])[2]
    ref = single.trending_ref()
    assert ref is not None and multi.trending_ref() == ref
    assert trending_close(multi.trending_scores(now=ref), single.trending_scores(now=ref))
    assert multi.refresh_trending(now=NOW) == single.refresh_trending(now=NOW)
    assert multi.popular_list(500) == single.popular_list(500)
    dirty_single = set(single.pop_dirty_users(10_000))
    assert set(multi.pop_dirty_users(10_000)) == dirty_single and dirty_single
    assert multi.pop_dirty_users(10) == []


def test_a_crash_between_the_steps_loses_nothing_and_doubles_nothing(
        redis_client: redis.Redis, redis_cluster: Any, key_prefix: str) -> None:
    """(b) Step A applied a batch, the trainer died before step B: the whole batch comes
    again (also cut shorter, as a consumer may fetch it), and the global deltas of the
    events step A had applied are taken from the outboxes exactly once."""
    single = FeatureStore(redis_client, key_prefix)
    multi = cluster_store(redis_cluster, key_prefix)
    for s in (single, multi):
        s.put_videos([{"video_id": v} for v in VIDEOS])
    events = with_ratings(make_events(2000, users=50, seed=22), seed=22)
    pos = positions(events)
    for evs, ps in batches(events, pos, 400):
        single.apply_events(evs, positions=ps, now=NOW)
    a = ClusterApplier(multi._r, multi.keys)  # type: ignore[arg-type]
    # Crash 1: step A of [0, 400) only; redelivered as [0, 150), [150, 400).
    plan = a.step_a(events[:400], schema.HISTORY_LEN, NEG_LEN, pos[:400], NOW)
    assert len(plan.result.applied) == 400
    for lo, hi in ((0, 150), (150, 400)):
        res = multi.apply_events(events[lo:hi], positions=pos[lo:hi], now=NOW)
        assert not res.applied and res.duplicates == hi - lo  # applied by step A already
    # Crash 2: step A twice over (two replicas in a rebalance), then the batch again.
    a.step_a(events[400:800], schema.HISTORY_LEN, NEG_LEN, pos[400:800], NOW)
    a.step_a(events[400:800], schema.HISTORY_LEN, NEG_LEN, pos[400:800], NOW)
    multi.apply_events(events[400:800], positions=pos[400:800], now=NOW)
    # Crash 3: step B ran, the trim did not (the outboxes keep judged entries).
    plan = a.step_a(events[800:1200], schema.HISTORY_LEN, NEG_LEN, pos[800:1200], NOW)
    plan.owner.clear()
    a.step_b(plan, trending.HALF_LIFE_S)
    for evs, ps in batches(events[800:], pos[800:], 400):
        multi.apply_events(evs, positions=ps, now=NOW)
    # Events without a Kafka position (judged by event id alone) survive a crash too.
    extra = make_events(300, users=20, seed=23)
    for e in extra:
        e.event_id = "x" + e.event_id
    single.apply_events(extra, now=NOW)
    a.step_a(extra, schema.HISTORY_LEN, NEG_LEN, None, NOW)
    multi.apply_events(extra, now=NOW)
    users = {e.user_id for e in events + extra}
    assert state(multi, users) == state(single, users)
    ref = single.trending_ref()
    assert ref is not None
    assert trending_close(multi.trending_scores(now=ref), single.trending_scores(now=ref))
    # Nothing is left waiting in an outbox.
    r = multi._r
    assert all(r.hlen(multi.keys.user_outbox(u)) == 0 for u in users)


# --- the trainer on a cluster, alone and as a group ----------------------------------------


def replay_matches(store: FeatureStore, events: list[events_pb2.Event]) -> None:
    """The final state equals the offline replay: counters, histories, seen sets and
    trending weights (every counted positive once, at its decayed weight)."""
    history, seen, counts = expected_state(events)
    assert counters(store) == counts
    assert all(store.user(u).history == history[u] for u in history)
    assert all(store.user(u).seen == seen[u] for u in seen)
    ref = store.trending_ref()
    assert ref is not None
    want: dict[str, float] = defaultdict(float)
    recent: dict[str, list[str]] = defaultdict(list)
    for e in {e.event_id: e for e in events}.values():
        if kind(e) == "positive":
            h = recent[e.user_id]
            if e.video_id not in h:
                want[e.video_id] += 2 ** ((e.timestamp - ref) / trending.HALF_LIFE_S)
                h.insert(0, e.video_id)
                del h[schema.HISTORY_LEN:]
    assert trending_close(store.trending_scores(now=ref), dict(want))


def wait_for(store: FeatureStore, want: dict, procs: list[subprocess.Popen[bytes]],
             log: Path, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while counters(store) != want:
        assert time.monotonic() < deadline, (counters(store), log.read_text()[-3000:])
        assert all(p.poll() is None for p in procs), log.read_text()[-3000:]
        time.sleep(0.2)


def applied_count(store: FeatureStore) -> int:
    return int(sum(sum(c.values()) for c in counters(store).values()))


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


@pytest.mark.timeout(400)
def test_trainer_on_a_cluster_killed_mid_stream_matches_the_replay(
        redis_cluster: Any, private_kafka_broker: Any, key_prefix: str, tmp_path: Path) -> None:
    """(c) One trainer on the cluster, SIGKILLed twice while events are pending and
    restarted: the final state equals the offline replay."""
    from vidrec.infra.kafka import EventProducer

    store = cluster_store(redis_cluster, key_prefix)
    store.put_videos([{"video_id": v} for v in VIDEOS])
    events = make_events(12_000, users=200, seed=24)
    env = trainer_env(private_kafka_broker.bootstrap, redis_cluster.url, key_prefix, tmp_path,
                      batch_size=200)
    log = tmp_path / "trainer.log"
    procs = [start_trainer(env, log)]
    mid_stream = []
    try:
        with EventProducer(private_kafka_broker.bootstrap) as p:
            p.send_events(events[:8000])
            for chunk in (events[8000:10_000], events[10_000:]):
                before = applied_count(store)
                deadline = time.monotonic() + 120
                while applied_count(store) < before + 300 and time.monotonic() < deadline:
                    time.sleep(0.01)
                os.killpg(procs[-1].pid, signal.SIGKILL)
                procs[-1].wait()
                mid_stream.append(applied_count(store) < 8000)
                p.send_events(chunk)
                procs.append(start_trainer(env, log))
        wait_for(store, expected_state(events)[2], procs[-1:], log)
    finally:
        stop_all(procs)
    assert any(mid_stream), "no kill landed while events were pending"
    replay_matches(store, events)


@pytest.mark.timeout(500)
def test_a_trainer_group_with_a_replica_killed_mid_batch_matches_the_replay(
        redis_cluster: Any, private_kafka_broker: Any, key_prefix: str, tmp_path: Path) -> None:
    """(d) Three replicas in one consumer group share the partitions; one is SIGKILLed
    while applying, the group rebalances its partitions to the others: the final state
    equals the offline replay, and more than one replica did the work."""
    from vidrec.infra.kafka import EventProducer

    store = cluster_store(redis_cluster, key_prefix)
    store.put_videos([{"video_id": v} for v in VIDEOS])
    events = make_events(12_000, users=240, seed=25)
    env = trainer_env(private_kafka_broker.bootstrap, redis_cluster.url, key_prefix, tmp_path,
                      batch_size=150)
    log = tmp_path / "trainer.log"
    procs = [start_trainer({**env, "VIDREC_REPLICA_ID": f"r{i}"}, log) for i in range(3)]
    try:
        with EventProducer(private_kafka_broker.bootstrap) as p:
            p.send_events(events[:9000])
            deadline = time.monotonic() + 180
            while applied_count(store) < 1500 and time.monotonic() < deadline:
                time.sleep(0.01)
            os.killpg(procs[0].pid, signal.SIGKILL)  # mid-batch: the group is busy
            procs[0].wait()
            mid = applied_count(store)
            p.send_events(events[9000:])
        wait_for(store, expected_state(events)[2], procs[1:], log)
    finally:
        stop_all(procs)
    assert mid < len(events), "the kill landed after the work was done"
    replay_matches(store, events)
    logged = [f for f in (tmp_path / "events").glob("events-r*.csv")
              if f.stat().st_size > 0 and len(f.read_text().splitlines()) > 1]
    assert len(logged) >= 2, [f.name for f in logged]  # the partitions were shared


@pytest.mark.parametrize("where", ["single", "cluster"])
def test_the_retrain_lease_has_one_holder_and_fences_a_stale_one(
        where: str, redis_server: Any, redis_cluster: Any, key_prefix: str) -> None:
    """(e) Two replicas contend: one holds the lease; when it lapses the other takes it
    with a larger token, and the stale holder's publish is refused by the fence."""
    from vidrec.store.lease import LeaseLost

    url = redis_server.url if where == "single" else redis_cluster.url
    store = FeatureStore.from_url(url, key_prefix, timeout_s=5.0)
    a, b = store.lease("a", ttl_s=0.5), store.lease("b", ttl_s=30)
    ta = a.acquire()
    assert ta is not None and b.acquire() is None
    assert a.acquire() == ta  # the holder extends, same token
    a.fence()  # the holder may publish
    deadline = time.monotonic() + 30
    tb = b.acquire()
    while tb is None:  # a stops renewing (a long pause): its lease lapses
        assert time.monotonic() < deadline
        time.sleep(0.05)
        tb = b.acquire()
    assert tb > ta
    with pytest.raises(LeaseLost):
        a.fence()  # the stale holder still has its token: refused
    assert not a.renew()
    b.fence()
    b.release()
    assert a.acquire() is not None and a.token is not None and a.token > tb
    with pytest.raises(LeaseLost):
        b.fence()  # released: b's old token is stale now
    a.fence()


def test_publish_side_writes_and_reads_work_on_the_cluster(
        redis_cluster: Any, key_prefix: str) -> None:
    """What a publish and the serving path do, on the cluster client: seeding users (one
    script per user, pipelined), the fresh list (replaced and pushed), the trending seed
    merged with live counts into the popular list, video records, dirty users and the
    rebuild's id marks."""
    import numpy as np

    from vidrec.store.features import UserSeed

    store = cluster_store(redis_cluster, key_prefix)
    store.put_videos([{"video_id": v, "title": f"t{v}"} for v in VIDEOS])
    assert store.videos(["v001", "nope"]) == {"v001": {**store.videos(["v001"])["v001"]}}
    assert store.videos(["v001"])["v001"]["title"] == "tv001"
    n = store.seed_users([UserSeed(f"s{i}", {"country": "fr"}, ["v001", "v002"],
                                   ["v001", "v002", "v003"]) for i in range(30)])
    assert n == 30
    st = store.user("s7")
    assert (st.profile, st.history, st.seen) == ({"country": "fr"}, ["v001", "v002"],
                                                 {"v001", "v002", "v003"})
    store.put_fresh(["v010", "v011", "v012"])
    store.push_fresh("v011")
    assert store.fresh_list(10) == ["v011", "v010", "v012"]
    assert store.seed_trending(["v020", "v021"], np.array([5.0, 1.0]), now=NOW)
    assert not store.seed_trending(["v021"], np.array([9.0]), now=NOW)  # seeded once
    like = E.Event(event_id="l1", user_id="s1", video_id="v021", type=E.EVENT_TYPE_LIKE,
                   timestamp=NOW, model_version="v1", experiment_arm="a")
    assert [e.event_id for e in store.apply_events([like], now=NOW).applied] == ["l1"]
    assert store.refresh_trending(now=NOW) == ["v020", "v021"]  # 5 against 1 + 1
    assert store.trending_scores(now=NOW) == {"v020": 5.0, "v021": 2.0}
    assert store.popular_list(5) == ["v020", "v021"]
    store.mark_dirty(["s2"])
    assert sorted(store.pop_dirty_users(10)) == ["s1", "s2"]
    store.mark_applied(["m1"], now=NOW, user_ids=["s3"])
    resend = E.Event(event_id="m1", user_id="s3", video_id="v005", type=E.EVENT_TYPE_CLICK)
    assert store.apply_events([resend], now=NOW).duplicates == 1
    with pytest.raises(ValueError):
        store.mark_applied(["m2"], now=NOW)  # a cluster keeps ids per user
