"""The trainer's Redis write alone: the exactly-once apply script on 100,000 events.

    python -m benchmarks.apply

Same events as benchmarks.trainer (60% impressions, 20,000 users, 300 videos), batches
of 2,000 against an embedded Redis; prints events/s seen from Python and the script's
own time per event (Redis INFO commandstats), which is what Kafka and Python do not blur.
Twice: a memory-only Redis (the tests') and a durable one (make run's: append-only file,
fsync on every write), so the cost of durability is measured beside its baseline. Then on
a local 3-master Redis Cluster (the two-step apply, vidrec.store.cluster_apply).
"""

from __future__ import annotations

import tempfile
import time

import redis

from benchmarks.trainer import VIDEOS, events
from vidrec.infra.embedded import RedisClusterServers, RedisServer
from vidrec.store.features import FeatureStore
from vidrec.v1 import events_pb2


def main() -> None:
    evs = [events_pb2.Event.FromString(v) for v in events(100_000, seed=1)]
    for durable in (False, True):
        with tempfile.TemporaryDirectory() as d, \
                RedisServer(data_dir=d, durable=durable) as rs:
            store = FeatureStore.from_url(rs.url)
            store.put_videos({"video_id": v} for v in VIDEOS)
            t = time.perf_counter()
            for i in range(0, len(evs), 2000):
                store.apply_events(evs[i: i + 2000])
            dt = time.perf_counter() - t
            stats = redis.Redis.from_url(rs.url).info("commandstats").get(
                "cmdstat_evalsha", {})
            per_call = float(stats.get("usec_per_call", 0.0))
            mode = "durable (AOF, fsync always)" if durable else "memory only"
            print(f"{mode:28s} {len(evs) / dt:,.0f} events/s; script {per_call / 2000:.2f} "
                  "us per event")

    with RedisClusterServers() as cl:  # the two-step apply (vidrec.store.cluster_apply)
        store = FeatureStore.from_url(cl.url)
        store.put_videos({"video_id": v} for v in VIDEOS)
        t = time.perf_counter()
        for i in range(0, len(evs), 2000):
            store.apply_events(evs[i: i + 2000])
        print(f"{'Redis Cluster, 3 masters':28s} {len(evs) / (time.perf_counter() - t):,.0f} "
              "events/s", flush=True)

if __name__ == "__main__":
    main()
