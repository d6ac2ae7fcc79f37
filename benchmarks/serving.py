"""Serving benchmark: ANN recall against exact search, and gateway latency under an
open-loop load at increasing request rates (the load generator runs in its own process).

    python -m benchmarks.serving --data DIR --model MODEL_DIR [--rates 50,100,200]

Everything runs on this machine: embedded Redis + Kafka, the four gRPC services and the
trainer (it consumes the gateway's impressions, as in production), plus the generator.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from vidrec.models.bundle import ModelBundle
from vidrec.models.online import OnlineModel
from vidrec.serving.publish import collection_name, publish
from vidrec.stack import Stack
from vidrec.store.artifacts import ArtifactStore
from vidrec.store.features import FeatureStore
from vidrec.store.index import EdgeIndex


def ann_recall(index: EdgeIndex, version: str, bundle: ModelBundle, n_users: int = 200,
               k: int = 100, seed: int = 0) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    online = OnlineModel(bundle)
    users = rng.choice(list(bundle.users), size=min(n_users, len(bundle.users)), replace=False)
    recalls, ann_ms, exact_ms = [], [], []
    for u in users:
        rec = bundle.users[u]
        v = online.user_vectors(u, rec.profile, rec.history).two_tower
        t = time.perf_counter()
        got = {vid for vid, _ in index.search(collection_name(version), v, k)}
        ann_ms.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        s = bundle.video_vectors @ v
        top = np.argpartition(-s, k)[:k]
        exact_ms.append((time.perf_counter() - t) * 1000)
        truth = {bundle.video_ids[i] for i in top}
        recalls.append(len(got & truth) / k)
    return {"recall@100": float(np.mean(recalls)), "ann_ms_p50": float(np.median(ann_ms)),
            "ann_ms_p99": float(np.percentile(ann_ms, 99)),
            "exact_ms_p50": float(np.median(exact_ms)), "queries": len(users)}


def family(pid: int) -> list[int]:
    """A process and all its live descendants (Linux /proc). Descendants matter: the
    embedded Redis and Kafka run under a watchdog shell, whose own counters stay at zero
    while the server works."""
    out, todo, seen = [], [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            tasks = list(Path(f"/proc/{p}/task").iterdir())
        except OSError:
            continue
        out.append(p)
        for t in tasks:
            try:
                todo += [int(c) for c in (t / "children").read_text().split()]
            except OSError:
                pass
    return out


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and its live descendants."""
    import os

    total = 0.0
    for p in family(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
    return total / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    """Resident memory (MB) of a process and its live descendants."""
    total = 0
    for p in family(pid):
        try:
            total += sum(int(line.split()[1]) for line in
                         Path(f"/proc/{p}/status").read_text().splitlines()
                         if line.startswith("VmRSS:"))
        except OSError:
            continue
    return round(total / 1024, 1)


def rpc_histogram(metrics_addr: str, method: str) -> dict[float, float]:
    """Cumulative bucket counts (upper bound in s -> calls) of one gRPC method's OK calls
    from a process's /metrics (vidrec_rpc_duration_seconds)."""
    import urllib.request

    text = urllib.request.urlopen(f"http://{metrics_addr}/metrics", timeout=5).read().decode()
    out: dict[float, float] = {}
    for line in text.splitlines():
        if (line.startswith("vidrec_rpc_duration_seconds_bucket{")
                and f'method="{method}"' in line and 'code="OK"' in line):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out[float("inf") if le == "+Inf" else float(le)] = float(line.rsplit(" ", 1)[1])
    return out


def histogram_quantile(before: dict[float, float], after: dict[float, float], q: float,
                       under_s: float) -> dict[str, float]:
    """The q-quantile (ms, linear inside its bucket, as Prometheus does) of the calls
    between two scrapes, and the share of them at or under `under_s`."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    if total <= 0:
        return {"calls": 0}
    rank, lo, prev = q * total, 0.0, 0.0
    quant = float("inf")
    for b, c in zip(bounds, counts, strict=True):
        if c >= rank:
            quant = b if b == float("inf") or c == prev else lo + (b - lo) * (rank - prev) / (
                c - prev)
            break
        lo, prev = b, c
    share = next((c for b, c in zip(bounds, counts, strict=True) if b >= under_s), total)
    return {"calls": int(total), f"p{round(q * 100)}_ms": round(quant * 1000, 2),
            f"share_under_{round(under_s * 1000)}ms": round(share / total, 4)}


def foldin_latency(stack: Stack, bundle: ModelBundle, n: int = 30, timeout_s: float = 60.0,
                   seed: int = 2) -> dict[str, float]:
    """Seconds from LogEvents' answer (a like on a video the user has not seen) until the
    trainer has folded the user's MF vector in again (the vector in Redis changed): the
    path by which a watch reaches the next recommendation on this catalog."""
    import uuid

    from vidrec.client import Client
    from vidrec.v1 import events_pb2

    rng = np.random.default_rng(seed)
    store = FeatureStore.from_url(stack.redis_url)
    users = [u for u in bundle.users if bundle.users[u].history][:n]
    lat: list[float] = []
    with Client.for_stack(stack.var, timeout_s=10.0) as c:
        for u in users:
            before = store.user(u).mf_vector
            seen = set(bundle.users[u].seen)
            vid = next(v for v in (bundle.video_ids[int(i)] for i in
                                   rng.integers(0, len(bundle.video_ids), 50)) if v not in seen)
            c.log_events([events_pb2.Event(event_id=uuid.uuid4().hex, user_id=u, video_id=vid,
                                           type=events_pb2.EVENT_TYPE_LIKE, value=1.0,
                                           timestamp=time.time())])
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < timeout_s:
                after = store.user(u).mf_vector
                if after is not None and (before is None or not np.array_equal(before, after)):
                    lat.append(time.perf_counter() - t0)
                    break
                time.sleep(0.01)
    lat.sort()
    if not lat:
        return {"probes": len(users), "folded_in": 0}
    return {"probes": len(users), "folded_in": len(lat), "p50_s": round(lat[len(lat) // 2], 3),
            "p95_s": round(lat[int(0.95 * (len(lat) - 1))], 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--rates", default="25,50,75,100,150")
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--out", default="var/bench/serving")
    ap.add_argument("--insecure", action="store_true",
                    help="plaintext, no API keys (the baseline for the cost of security)")
    ap.add_argument("--no-trainer", action="store_true")
    ap.add_argument("--no-metrics", action="store_true",
                    help="no /metrics endpoints (the baseline for their overhead)")
    ap.add_argument("--warmup", type=float, default=5.0,
                    help="seconds of load at the first rate before measuring (discarded): "
                         "caches, the trainer's first batches")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    var = Path(tempfile.mkdtemp(prefix="vidrec-bench-"))
    # --insecure: plaintext and no keys, to measure what TLS, mTLS and auth cost.
    stack = Stack(var, secure=not a.insecure, with_metrics=not a.no_metrics)
    results: dict = {"model": a.model}
    try:
        stack.start_stores()
        index = EdgeIndex(stack.index_root)
        t = time.perf_counter()
        version = publish(Path(a.model), ArtifactStore(stack.artifact_root), index,
                          FeatureStore.from_url(stack.redis_url), overwrite_history=True)
        results["publish_s"] = round(time.perf_counter() - t, 1)
        bundle = ModelBundle.load(stack.artifact_root / version)
        results["catalog"] = len(bundle.video_ids)
        results["dim"] = int(bundle.video_vectors.shape[1])
        results["ann"] = ann_recall(index, version, bundle)
        index.close()
        print("ANN:", results["ann"], flush=True)
        stack.start_services(trainer=not a.no_trainer, timeout_s=300)
        users = list(bundle.users)[:2000]
        results["load"] = []
        pids = {n: sp.proc.pid for n, sp in stack.services.items() if sp.proc is not None}
        if stack.redis is not None and stack.redis.pid:
            pids["redis"] = stack.redis.pid
        if stack.kafka is not None and stack.kafka.pid:
            pids["kafka"] = stack.kafka.pid
        rates = [float(r) for r in a.rates.split(",")]
        if a.warmup > 0:
            arg = json.dumps({"addr": stack.services["gateway"].addr, "rate": rates[0],
                              "duration_s": a.warmup, "users": users, "k": a.k, "seed": 0,
                              "var": str(var)})
            subprocess.run([sys.executable, "-m", "benchmarks.loadgen", arg],
                           capture_output=True, text=True, timeout=a.warmup * 4 + 60)
        cand = stack.metrics.get("candidate")
        for rate in rates:
            before = {n: cpu_seconds(p) for n, p in pids.items()}
            cand_before = rpc_histogram(cand, "Generate") if cand else {}
            arg = json.dumps({"addr": stack.services["gateway"].addr, "rate": rate,
                              "duration_s": a.duration, "users": users, "k": a.k, "seed": 1,
                              "var": str(var)})
            proc = subprocess.run([sys.executable, "-m", "benchmarks.loadgen", arg],
                                  capture_output=True, text=True, timeout=a.duration * 4 + 60)
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            r["cpu_ms_per_request"] = {
                n: round(1000 * (cpu_seconds(p) - before[n]) / max(r["ok"], 1), 2)
                for n, p in pids.items()}
            if cand:
                # The candidate stage as the candidate service itself timed it (its
                # histogram's buckets: 2, 5, 10 ms, ...).
                r["candidate_stage"] = histogram_quantile(
                    cand_before, rpc_histogram(cand, "Generate"), 0.99, 0.005)
                print("  candidate stage:", r["candidate_stage"], flush=True)
            results["load"].append(r)
            print("  CPU ms per request:", r["cpu_ms_per_request"], flush=True)
            print(f"rate {rate:6.0f}/s: p50 {r['p50_ms']:.1f} ms, p90 {r['p90_ms']:.1f} ms, "
                  f"p99 {r['p99_ms']:.1f} ms, errors {r['errors']}, achieved "
                  f"{r['achieved_rps']:.0f}/s", flush=True)
        if not a.no_trainer:
            results["foldin"] = foldin_latency(stack, bundle)
            print("like -> MF vector folded in:", results["foldin"], flush=True)
        results["rss_mb"] = {n: rss_mb(p) for n, p in pids.items()}
        print("resident memory (MB):", results["rss_mb"], flush=True)
    finally:
        stack.stop()
    (out / "serving.json").write_text(json.dumps(results, indent=2))
    _plot(results, out / "serving.png")
    return 0


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    load = results.get("load", [])
    if not load:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    rates = [r["rate"] for r in load]
    for key in ("p50_ms", "p90_ms", "p99_ms"):
        ax.plot(rates, [r[key] for r in load], marker="o", label=key.replace("_ms", ""))
    ax.axhline(100, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("offered load (requests/s, open loop)")
    ax.set_ylabel("gateway latency (ms)")
    ax.set_yscale("log")
    ax.set_title(f"Recommend latency, {results['catalog']:,} videos, 2 cores")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
