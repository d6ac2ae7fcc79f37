"""The trainer against a real Kafka-protocol broker (Tansu) and a real Redis.

The crash test SIGKILLs the trainer process mid-stream several times and compares the
final Redis state with a replay of the same events computed offline: nothing lost,
nothing applied twice.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from kafka.structs import TopicPartition

from services.trainer.loop import decode
from vidrec import schema
from vidrec.events import NAME_OF, FeedbackWeights, base_weight, kind_of
from vidrec.store import trending
from vidrec.store.features import FeatureStore, UserSeed
from vidrec.v1 import events_pb2

E = events_pb2
VIDEOS = [f"v{i:03d}" for i in range(60)]


def make_events(n: int, users: int, seed: int) -> list[events_pb2.Event]:
    rng = random.Random(seed)
    types = [E.EVENT_TYPE_IMPRESSION] * 5 + [E.EVENT_TYPE_CLICK, E.EVENT_TYPE_WATCH,
                                              E.EVENT_TYPE_WATCH, E.EVENT_TYPE_LIKE,
                                              E.EVENT_TYPE_DISLIKE, E.EVENT_TYPE_SKIP]
    out = []
    for i in range(n):
        t = rng.choice(types)
        value = round(rng.random(), 2) if t == E.EVENT_TYPE_WATCH else 0.0
        out.append(E.Event(event_id=f"e{seed}-{i}", user_id=f"u{rng.randrange(users)}",
                           video_id=rng.choice(VIDEOS), type=t, value=value,
                           timestamp=1_700_000_000 + i, watch_time_s=value * 100,
                           model_version="v1", experiment_arm=rng.choice(["a", "b"])))
    return out


def kind(e: events_pb2.Event) -> str:
    """The contract's kind of a non-rating event (make_events makes no ratings)."""
    name = NAME_OF[e.type]
    return kind_of(name, base_weight(name, e.value, FeedbackWeights())).value


def expected_state(events: list[events_pb2.Event]) -> tuple[dict, dict, dict]:
    """Offline replay: per-user history and seen sets, per (version, arm) counters."""
    history: dict[str, list[str]] = defaultdict(list)
    seen: dict[str, set[str]] = defaultdict(set)
    counts: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    done = set()
    for e in events:
        if e.event_id in done:
            continue
        done.add(e.event_id)
        k = kind(e)
        if k == "positive":  # a video keeps the place of its first positive event
            h = history[e.user_id]
            if e.video_id not in h:
                h.insert(0, e.video_id)
                del h[schema.HISTORY_LEN:]
        if k in ("positive", "negative", "seen"):
            seen[e.user_id].add(e.video_id)
        c = counts[(e.model_version, e.experiment_arm)]
        name = {E.EVENT_TYPE_IMPRESSION: "impressions", E.EVENT_TYPE_CLICK: "clicks",
                E.EVENT_TYPE_WATCH: "watches", E.EVENT_TYPE_LIKE: "likes",
                E.EVENT_TYPE_DISLIKE: "dislikes"}.get(e.type)
        if name:
            c[name] += 1
        if e.type == E.EVENT_TYPE_WATCH and e.value >= 0.9:
            c["completed"] += 1
    return dict(history), dict(seen), {k: dict(v) for k, v in counts.items()}


def counters(store: FeatureStore) -> dict[tuple[str, str], dict[str, float]]:
    fields = ("impressions", "clicks", "watches", "completed", "likes", "dislikes")
    return {(r["model_version"], r["experiment_arm"]): {f: float(r[f]) for f in fields
                                                        if r[f]}
            for r in store.read_stats()}


# --- pure parts ---------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "reason"), [
    (b"\xff\xfe", "not a vidrec.v1.Event"),
    (b"x" * 70_000, "bytes; the limit"),
    (E.Event(event_id="1", user_id="u", video_id="v", type=42).SerializeToString(),
     "type 42 is not a known event type"),
    (E.Event(event_id="1", user_id="u", video_id="v", type=E.EVENT_TYPE_WATCH,
             value=float("nan")).SerializeToString(), "value is not a finite number"),
    (E.Event(event_id="1", user_id="u", video_id="v", type=E.EVENT_TYPE_RATING,
             value=7).SerializeToString(), "a rating must be in 1..5, got 7.0"),
    (E.Event(user_id="u", video_id="v", type=E.EVENT_TYPE_CLICK).SerializeToString(),
     "event_id is required"),
    (E.Event(event_id="1", user_id="u", video_id="v", type=E.EVENT_TYPE_CLICK,
             timestamp=1.7e308).SerializeToString(), "ahead of the server clock"),
])
def test_decode_rejects_with_a_reason(raw: bytes, reason: str) -> None:
    d = decode(raw)
    assert isinstance(d, str) and reason in d


def test_apply_is_idempotent_and_matches_replay(redis_client, key_prefix: str) -> None:  # type: ignore[no-untyped-def]
    store = FeatureStore(redis_client, key_prefix)
    store.put_videos([{"video_id": v} for v in VIDEOS])
    events = make_events(3000, users=40, seed=1)
    for s in range(0, 3000, 700):
        store.apply_events(events[s: s + 700])
    again = store.apply_events(events[:1000])  # redelivery: nothing changes
    assert again.duplicates == 1000 and not again.applied
    history, seen, counts = expected_state(events)
    for u in history:
        assert store.user(u).history == history[u]
    for u in seen:
        assert store.user(u).seen == seen[u]
    assert counters(store) == counts


def test_unknown_video_is_reported_not_applied(redis_client, key_prefix: str) -> None:  # type: ignore[no-untyped-def]
    store = FeatureStore(redis_client, key_prefix)
    store.put_videos([{"video_id": "v000"}])
    ev = [E.Event(event_id="a", user_id="u", video_id="nope", type=E.EVENT_TYPE_LIKE,
                  timestamp=1.0)]
    res = store.apply_events(ev)
    assert [e.video_id for e in res.unknown_video] == ["nope"] and not res.applied
    assert store.user("u").seen == set()


# --- the process under SIGKILL ------------------------------------------------------------


def trainer_env(bootstrap: str, redis_url: str, key_prefix: str, tmp: Path,
                batch_size: int) -> dict[str, str]:
    """A trainer's environment of its own: group, event log and artifacts under `tmp`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIDREC_")}
    env.update({"VIDREC_KAFKA_BOOTSTRAP": bootstrap, "VIDREC_REDIS_URL": redis_url,
                "VIDREC_KEY_PREFIX": key_prefix, "VIDREC_EVENTS_DIR": str(tmp / "events"),
                "VIDREC_ARTIFACT_ROOT": str(tmp / "artifacts"),
                "VIDREC_GROUP_ID": f"g-{uuid.uuid4().hex[:6]}",
                "VIDREC_BATCH_SIZE": str(batch_size),
                # Every positive moves trending here (the expected counts below assume it).
                "VIDREC_TRENDING_MIN_SEEN": "0"})
    return env


def start_trainer(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "services.trainer"], env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


@pytest.mark.timeout(300)
def test_trainer_killed_mid_stream_loses_nothing_and_doubles_nothing(
        redis_server, private_kafka_broker, key_prefix: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from vidrec.infra.kafka import EventProducer

    store = FeatureStore.from_url(redis_server.url, key_prefix)
    store.put_videos([{"video_id": v} for v in VIDEOS])
    events = make_events(40_000, users=300, seed=2)
    redelivered = events[5000:5500]  # a producer retrying a batch: same event ids again
    env = trainer_env(private_kafka_broker.bootstrap, redis_server.url, key_prefix, tmp_path,
                      batch_size=300)
    log = tmp_path / "trainer.log"
    def applied() -> int:
        return int(sum(sum(c.values()) for c in counters(store).values()))

    mid_stream = []
    with EventProducer(private_kafka_broker.bootstrap) as p:
        p.send_events(events[:25_000])
        sent = 25_000
        proc = start_trainer(env, log)
        kills = 0
        try:
            for chunk in (events[25_000:30_000], redelivered, events[30_000:]):
                # Kill as soon as this incarnation has made progress: mid-stream, not idle.
                before = applied()
                deadline = time.monotonic() + 60
                while applied() < before + 500 and time.monotonic() < deadline:
                    time.sleep(0.01)
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                kills += 1
                mid_stream.append(applied() < sent)
                p.send_events(chunk)
                sent = min(len(events), sent + len(chunk))
                proc = start_trainer(env, log)
            expected = expected_state(events)[2]
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and counters(store) != expected:
                time.sleep(0.5)
            time.sleep(trending.REFRESH_S + 1)  # one more popular-list refresh
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    assert kills == 3
    assert any(mid_stream), "no kill landed while events were still pending"
    history, seen, counts = expected_state(events)
    assert counters(store) == counts, log.read_text()[-3000:]
    assert all(store.user(u).history == history[u] for u in history)
    assert all(store.user(u).seen == seen[u] for u in seen)
    # Trending counts too: every positive event exactly once, at its decayed weight, and
    # the running trainer writes the popular list from them.
    # A positive counts when the video is not in the user's recent history already.
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
    raw = store.trending_scores(now=ref)  # at the reference time: the stored weights
    assert raw.keys() == want.keys()
    assert all(abs(raw[v] / want[v] - 1) < 1e-9 for v in want)
    assert store.popular_list(100) == sorted(want, key=lambda v: -want[v])


def test_fold_in_weights_recent_positives_by_the_models_recency_boost(
        redis_client, key_prefix: str, small_model: Path) -> None:  # type: ignore[no-untyped-def]
    from vidrec.models.bundle import ModelBundle
    from vidrec.models.online import OnlineModel
    from vidrec.training.foldin import fold_in_dirty

    store = FeatureStore(redis_client, key_prefix)
    bundle = ModelBundle.load(small_model)
    vids = bundle.video_ids
    history = vids[:12]  # most recent first: vids[0] is the latest positive
    # Liked, the latest first: the recency rank follows each video's first event time.
    store.seed_users([UserSeed("fresh", {}, history, history,
                               feedback={v: (1.0, 0.0, 0.0, 1_700_000_000.0 - i)
                                         for i, v in enumerate(history)})])

    def folded(boost: float) -> np.ndarray:
        bundle.manifest["config"]["mf"].update(recency_boost=boost, recency_half_life=0.05)
        store.mark_dirty(["fresh"])
        assert fold_in_dirty(store, OnlineModel(bundle), "vX") == 1
        st = store.user("fresh")
        assert st.mf_version == "vX" and st.mf_vector is not None
        return st.mf_vector

    plain, boosted = folded(0.0), folded(10.0)
    # With a half-life this short only the latest positive is weighted up, and raising one
    # entry's weight in a weighted least-squares solve shrinks that entry's residual.
    latest = bundle.mf_video[bundle.encoder.video_index[history[0]]]
    assert abs(1 - boosted @ latest) < abs(1 - plain @ latest)
    assert not np.allclose(plain, boosted)


@pytest.mark.timeout(180)
def test_a_paused_redis_does_not_kill_the_trainer_and_loses_nothing(
        private_kafka_broker, key_prefix: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Redis frozen (SIGSTOP) for 6 s while events keep coming: the trainer keeps running
    (its heartbeat and batches fail and are retried) and, once Redis is back, every event
    is applied exactly once. The trainer once died on the heartbeat's Redis timeout."""
    from vidrec.infra.embedded import RedisServer
    from vidrec.infra.kafka import EventProducer

    events = make_events(3000, users=50, seed=7)
    with RedisServer() as rs:
        store = FeatureStore.from_url(rs.url, key_prefix)
        store.put_videos([{"video_id": v} for v in VIDEOS])
        env = trainer_env(private_kafka_broker.bootstrap, rs.url, key_prefix, tmp_path,
                          batch_size=200)
        log = tmp_path / "trainer.log"
        proc = start_trainer(env, log)
        try:
            with EventProducer(private_kafka_broker.bootstrap) as p:
                p.send_events(events[:1000])
                first = expected_state(events[:1000])[2]
                deadline = time.monotonic() + 60
                while counters(store) != first:
                    assert time.monotonic() < deadline, log.read_text()[-3000:]
                    time.sleep(0.1)
                assert rs.pid is not None
                os.killpg(rs.pid, signal.SIGSTOP)
                try:
                    p.send_events(events[1000:2000])
                    time.sleep(6)  # batches and heartbeats time out meanwhile
                    assert proc.poll() is None, log.read_text()[-3000:]
                finally:
                    os.killpg(rs.pid, signal.SIGCONT)
                p.send_events(events[2000:])
            expected = expected_state(events)[2]
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and counters(store) != expected:
                time.sleep(0.2)
            assert proc.poll() is None, log.read_text()[-3000:]
            assert counters(store) == expected
            assert store.heartbeat() is not None
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


def _wait_counters(store: FeatureStore, want: dict, log: Path, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while counters(store) != want:
        assert time.monotonic() < deadline, (counters(store), log.read_text()[-3000:])
        time.sleep(0.1)


@pytest.mark.timeout(300)
def test_a_broker_restarted_empty_loses_no_later_event(
        redis_server, key_prefix: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The embedded broker keeps its log in memory: restarted, it numbers records from 0
    again. The trainer once kept the old log's applied offsets, so every new event at an
    offset it had already passed was skipped as a "redelivery" (silently lost)."""
    from vidrec.infra.embedded import KafkaBroker
    from vidrec.infra.kafka import ALL_TOPICS, EventProducer, ensure_topics

    store = FeatureStore.from_url(redis_server.url, key_prefix)
    store.put_videos([{"video_id": v} for v in VIDEOS])
    events = make_events(2400, users=80, seed=11)
    log = tmp_path / "trainer.log"
    with KafkaBroker() as broker:
        env = trainer_env(broker.bootstrap, redis_server.url, key_prefix, tmp_path,
                          batch_size=200)
        proc = start_trainer(env, log)
        try:
            with EventProducer(broker.bootstrap) as p:
                p.send_events(events[:1200])
            _wait_counters(store, expected_state(events[:1200])[2], log)
            old = broker.cluster_id
            broker.restart()  # same port, empty log, new cluster id
            assert broker.cluster_id != old
            ensure_topics(broker.bootstrap, ALL_TOPICS)
            with EventProducer(broker.bootstrap) as p:
                p.send_events(events[1200:])
            _wait_counters(store, expected_state(events)[2], log)
            assert proc.poll() is None, log.read_text()[-3000:]
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    history, seen, _ = expected_state(events)
    # Every video in every history, nothing twice. The order may differ around the restart:
    # a batch the consumer fetched at the old log's positions can be applied before the
    # trainer sees the new log id and rereads the log from its start.
    assert all(sorted(store.user(u).history) == sorted(history[u]) for u in history)
    assert all(store.user(u).seen == seen[u] for u in seen)
    fields = store._r.hkeys(store.keys.applied_offsets())
    assert fields and all(f.decode().startswith(f"{broker.cluster_id}/") for f in fields)


class _StaleFetchConsumer:
    """kafka-python against a broker that restarted empty, as seen with Tansu: partitions
    assigned, fetching at the old log's (higher) positions, answered with nothing (no
    out-of-range error) until someone seeks. In the fault benchmark this lasted until the
    new log grew past the old positions, about 2 minutes."""

    def __init__(self, records: list[SimpleNamespace]) -> None:
        self.records = records
        self.rewound = False
        self.part = TopicPartition(schema.TOPIC_EVENTS, 0)

    def poll(self, timeout_ms: int = 0, max_records: int = 500) -> dict:
        if not self.rewound or not self.records:
            return {}
        out, self.records = self.records[:max_records], self.records[max_records:]
        return {self.part: out}

    def assignment(self) -> set[TopicPartition]:
        return {self.part}

    def seek_to_beginning(self, *parts: TopicPartition) -> None:
        self.rewound = True

    def commit(self) -> None:
        pass


def test_a_new_log_is_read_from_its_start_without_waiting_for_a_record(
        redis_server, key_prefix: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The trainer used to look at the log id only when a batch arrived; against a broker
    that answers stale positions with nothing, none ever did (until the new log grew past
    them). An empty poll must be enough to notice the new log and read it from the start."""
    from services.trainer.loop import TrainerLoop
    from vidrec.store.eventlog import EventLog

    store = FeatureStore.from_url(redis_server.url, key_prefix)
    store.put_videos([{"video_id": v} for v in VIDEOS])
    events = make_events(300, users=20, seed=21)
    records = [SimpleNamespace(topic=schema.TOPIC_EVENTS, partition=0, offset=i, key=None,
                               value=e.SerializeToString(), timestamp=int(time.time() * 1000))
               for i, e in enumerate(events)]
    consumer = _StaleFetchConsumer(records)
    log = ["old-log"]
    loop = TrainerLoop(consumer, store, None, EventLog(tmp_path / "events"), 100,  # type: ignore[arg-type]
                       linger_s=0.0, log_id=lambda: log[0])
    assert loop.run_once(timeout_ms=1) == 0  # learns the log it is on
    log[0] = "new-log"  # the broker restarted empty
    for _ in range(10):
        loop.run_once(timeout_ms=1)
    assert consumer.rewound
    assert counters(store) == expected_state(events)[2]
    assert loop.stats.applied == len(events)


@pytest.mark.timeout(300)
def test_redis_killed_comes_back_from_its_append_only_file_with_nothing_lost(
        private_kafka_broker, key_prefix: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A durable Redis (make run's) SIGKILLed mid-stream restarts from its append-only file
    with every write it acknowledged; the trainer committed Kafka offsets only after those
    replies, so it resumes where Redis is: every event exactly once."""
    from vidrec.infra.embedded import RedisServer
    from vidrec.infra.kafka import EventProducer

    events = make_events(6000, users=120, seed=12)
    log = tmp_path / "trainer.log"
    with RedisServer(data_dir=tmp_path / "redis", durable=True) as rs:
        store = FeatureStore.from_url(rs.url, key_prefix)
        store.put_videos([{"video_id": v} for v in VIDEOS])
        env = trainer_env(private_kafka_broker.bootstrap, rs.url, key_prefix, tmp_path,
                          batch_size=150)
        proc = start_trainer(env, log)
        try:
            with EventProducer(private_kafka_broker.bootstrap) as p:
                p.send_events(events[:3000])
                deadline = time.monotonic() + 60
                while sum(sum(c.values()) for c in counters(store).values()) < 500:
                    assert time.monotonic() < deadline, log.read_text()[-3000:]
                    time.sleep(0.01)
                assert rs.pid is not None
                os.killpg(rs.pid, signal.SIGKILL)  # no shutdown, no final save
                p.send_events(events[3000:])
                time.sleep(1)
                rs.restart()
            store = FeatureStore.from_url(rs.url, key_prefix)
            _wait_counters(store, expected_state(events)[2], log)
            assert proc.poll() is None, log.read_text()[-3000:]
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        history, seen, _ = expected_state(events)
        assert all(store.user(u).history == history[u] for u in history)
        assert all(store.user(u).seen == seen[u] for u in seen)
