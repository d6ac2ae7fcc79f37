"""Trainer benchmark: seconds-tier throughput and event -> visible latency.

    python -m benchmarks.trainer [--events 200000] [--rate 20000]

Phase 1 (throughput): a backlog of N events sits in Kafka; the trainer process drains it;
events/s = N / drain time (from its first applied batch to the last).
Phase 2 (freshness under load): a producer process streams events at --rate while probe
watch events are sent; for each probe, the time until the user's Redis history shows it
(the history the next Recommend reads). Reports p50/p95.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis

from vidrec.infra.embedded import KafkaBroker, RedisServer
from vidrec.infra.kafka import ALL_TOPICS, EventProducer, ensure_topics
from vidrec.store.features import FeatureStore
from vidrec.v1 import events_pb2

E = events_pb2
VIDEOS = [f"v{i:05d}" for i in range(10_000)]


def events(n: int, seed: int, users: int = 20_000) -> list[bytes]:
    rng = random.Random(seed)
    types = [E.EVENT_TYPE_IMPRESSION] * 6 + [E.EVENT_TYPE_CLICK, E.EVENT_TYPE_WATCH,
                                              E.EVENT_TYPE_LIKE, E.EVENT_TYPE_SKIP]
    out = []
    for i in range(n):
        t = rng.choice(types)
        out.append(E.Event(event_id=f"{seed}-{i}", user_id=f"u{rng.randrange(users)}",
                           video_id=rng.choice(VIDEOS), type=t,
                           value=rng.random() if t == E.EVENT_TYPE_WATCH else 0.0,
                           timestamp=time.time(), model_version="v1",
                           experiment_arm="a").SerializeToString())
    return out


def stream(bootstrap: str, rate: float, seconds: float) -> None:
    """Producer process for phase 2."""
    batch = events(int(rate * seconds), seed=99)
    with EventProducer(bootstrap) as p:
        t0 = time.perf_counter()
        step = max(1, int(rate / 20))
        for s in range(0, len(batch), step):
            due = t0 + s / rate
            if due > time.perf_counter():
                time.sleep(due - time.perf_counter())
            p.send_records("vidrec.events", [(b"k", v) for v in batch[s: s + step]])


def applied(store: FeatureStore) -> int:
    beat = store.heartbeat()
    return int(beat["applied"]) if beat else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--rate", type=float, default=20_000)
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--out", default="var/bench/trainer")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="vidrec-bench-trainer-"))
    res: dict = {"events": a.events}
    with RedisServer() as rs, KafkaBroker() as kb:
        ensure_topics(kb.bootstrap, ALL_TOPICS)
        store = FeatureStore.from_url(rs.url)
        watch = redis.Redis.from_url(rs.url)  # a tight observer of the trainer's writes
        store.put_videos({"video_id": v} for v in VIDEOS)
        backlog = events(a.events, seed=1)
        t = time.perf_counter()
        with EventProducer(kb.bootstrap) as p:
            for s in range(0, len(backlog), 10_000):
                p.send_records("vidrec.events", [(b"k", v) for v in backlog[s: s + 10_000]])
        res["produce_events_per_s"] = round(a.events / (time.perf_counter() - t))
        env = {k: v for k, v in os.environ.items() if not k.startswith("VIDREC_")}
        env.update({"VIDREC_KAFKA_BOOTSTRAP": kb.bootstrap, "VIDREC_REDIS_URL": rs.url,
                    "VIDREC_EVENTS_DIR": str(tmp / "events"),
                    "VIDREC_ARTIFACT_ROOT": str(tmp / "artifacts"), "VIDREC_LOG_LEVEL": "WARNING"})
        trainer = subprocess.Popen([sys.executable, "-m", "services.trainer"], env=env)
        try:
            # heartbeat every 2 s is too coarse for the start: watch the counters instead.
            key = store.keys.counters("v1", "a")
            while not watch.exists(key):
                time.sleep(0.005)
            t_first = time.perf_counter()
            while True:
                n = sum(int(x) for x in watch.hvals(key))
                if n and applied(store) >= a.events:
                    break
                if time.perf_counter() - t_first > 300:
                    break
                time.sleep(0.05)
            drain = time.perf_counter() - t_first
            res["drain_s"] = round(drain, 2)
            res["applied"] = applied(store)
            res["events_per_s"] = round(a.events / drain)
            print(f"phase 1: {a.events} events drained in {drain:.1f}s = "
                  f"{a.events / drain:,.0f} events/s", flush=True)
            # phase 2
            prod = subprocess.Popen([sys.executable, "-c",
                                     "import sys; from benchmarks.trainer import stream; "
                                     f"stream({kb.bootstrap!r}, {a.rate}, {a.seconds})"])
            lat = []
            with EventProducer(kb.bootstrap) as p:
                time.sleep(1.0)
                end = time.perf_counter() + a.seconds - 2
                i = 0
                while time.perf_counter() < end:
                    user, vid = f"probe{i}", VIDEOS[i % len(VIDEOS)]
                    ev = E.Event(event_id=uuid.uuid4().hex, user_id=user, video_id=vid,
                                 type=E.EVENT_TYPE_WATCH, value=0.9, timestamp=time.time())
                    t0 = time.perf_counter()
                    p.send_events([ev])
                    hk = store.keys.user_history(user)
                    while watch.lindex(hk, 0) is None and time.perf_counter() - t0 < 10:
                        time.sleep(0.002)
                    lat.append(time.perf_counter() - t0)
                    i += 1
                    time.sleep(0.2)
            prod.wait(60)
            lat.sort()
            res["visible_p50_ms"] = round(1000 * lat[len(lat) // 2], 1)
            res["visible_p95_ms"] = round(1000 * lat[int(0.95 * (len(lat) - 1))], 1)
            res["probes"] = len(lat)
            res["stream_rate"] = a.rate
            print(f"phase 2: event -> Redis history under {a.rate:,.0f} events/s: p50 "
                  f"{res['visible_p50_ms']} ms, p95 {res['visible_p95_ms']} ms "
                  f"({len(lat)} probes)", flush=True)
        finally:
            trainer.terminate()
            trainer.wait(30)
    (out / "trainer.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
