"""The trainer as a group on Redis Cluster: events/s with 1, 2 and 4 replicas.

    python -m benchmarks.trainer_group [--events 20000] [--replicas 1,2,4]

A local 3-master Redis Cluster (vidrec.infra.embedded.RedisClusterServers) and a fresh
embedded broker per round; the events (benchmarks.trainer's mix, 20,000 users) are in the
topic before the replicas start, so what is timed is the group applying a backlog. Each
replica is a `python -m services.trainer` process with its own VIDREC_REPLICA_ID; their
heartbeats say how many events each applied. Reported: the group's rate over the middle
80% of the backlog (joins and the last partial batches left out), the wall time from the
first start to the last event, and each replica's share. On this 2-core machine every
replica, the three Redis nodes and the broker share the same cores: more replicas measure
contention here, partition parallelism only where cores are free.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from benchmarks.trainer import VIDEOS, events
from vidrec.infra.embedded import KafkaBroker, RedisClusterServers
from vidrec.infra.kafka import ALL_TOPICS, EventProducer, ensure_topics
from vidrec.store.features import FeatureStore
from vidrec.v1 import events_pb2


def run_round(cluster: RedisClusterServers, replicas: int, n: int, tmp: Path) -> dict:
    prefix = f"b{uuid.uuid4().hex[:8]}"
    store = FeatureStore.from_url(cluster.url, prefix, timeout_s=5.0)
    store.put_videos({"video_id": v} for v in VIDEOS)
    evs = [events_pb2.Event.FromString(v) for v in events(n, seed=replicas)]
    with KafkaBroker() as broker:
        ensure_topics(broker.bootstrap, ALL_TOPICS)
        with EventProducer(broker.bootstrap) as p:
            for i in range(0, n, 5000):
                p.send_events(evs[i: i + 5000])
        env = {k: v for k, v in os.environ.items() if not k.startswith("VIDREC_")}
        env.update({"VIDREC_KAFKA_BOOTSTRAP": broker.bootstrap, "VIDREC_REDIS_URL": cluster.url,
                    "VIDREC_KEY_PREFIX": prefix, "VIDREC_EVENTS_DIR": str(tmp / prefix),
                    "VIDREC_ARTIFACT_ROOT": str(tmp / prefix / "artifacts"),
                    "VIDREC_GROUP_ID": f"g-{prefix}", "VIDREC_BATCH_SIZE": "2000",
                    "VIDREC_REDIS_TIMEOUT_MS": "5000"})
        log = (tmp / f"{prefix}.log").open("ab")
        names = [f"r{i}" for i in range(replicas)]
        t0 = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-m", "services.trainer"],
                                  env={**env, "VIDREC_REPLICA_ID": r}, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
                 for r in names]
        marks: dict[float, float] = {}
        per: dict[str, int] = {}
        try:
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                per = {r: int((store.heartbeat(r) or {}).get("applied", 0)) for r in names}
                done = sum(per.values())
                for q in (0.1, 0.9, 1.0):
                    if q not in marks and done >= q * n:
                        marks[q] = time.perf_counter()
                if 1.0 in marks:
                    break
                time.sleep(0.05)
        finally:
            for pr in procs:
                pr.send_signal(signal.SIGTERM)
            for pr in procs:
                pr.wait(60)
            log.close()
    if 1.0 not in marks:
        raise RuntimeError(f"{replicas} replicas did not apply {n} events (log {log.name})")
    window = marks[0.9] - marks[0.1]
    return {"replicas": replicas, "events": n,
            "events_per_s": round(0.8 * n / window),
            "wall_s": round(marks[1.0] - t0, 1),
            "per_replica_events": per,
            "per_replica_events_per_s": {r: round(c / (marks[1.0] - marks[0.1]))
                                         for r, c in per.items()}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--replicas", default="1,2,4")
    ap.add_argument("--out", default="")
    a = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as d, RedisClusterServers(masters=3) as cluster:
        for r in (int(x) for x in a.replicas.split(",")):
            row = run_round(cluster, r, a.events, Path(d))
            rows.append(row)
            print(f"{r} replica(s): {row['events_per_s']:,} events/s (middle 80%), "
                  f"{row['wall_s']} s wall incl. group join; per replica "
                  f"{row['per_replica_events_per_s']}", flush=True)
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "trainer_group.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
