"""The web front door and the catalog API, measured against the same running stack:

1. HTTP/JSON (POST /v1/recommend through services/web) against gRPC straight to the
   gateway, at the same open-loop rate, request mix and users, in alternating rounds
   (gRPC, HTTP, gRPC, HTTP, ...) so both see the same machine; the overhead is the
   difference of the rounds' median p50 (and p99).
2. Upsert -> retrievable: N uploads, one at a time, through Gateway.UpsertVideos; for each,
   the seconds until the candidate stage returns it to a new user (as a fresh upload).

    python -m benchmarks.front_door --model MODEL_DIR [--rate 100] [--rounds 3] [--uploads 100]
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
from vidrec.serving.publish import publish
from vidrec.stack import Stack
from vidrec.store.artifacts import ArtifactStore
from vidrec.store.features import FeatureStore
from vidrec.store.index import EdgeIndex


def _load(module: str, arg: dict, timeout_s: float) -> dict:
    proc = subprocess.run([sys.executable, "-m", module, json.dumps(arg)], capture_output=True,
                          text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def upload_latency(stack: Stack, n: int, timeout_s: float = 30.0) -> list[float]:
    """Seconds from UpsertVideos' answer until a new user's candidates hold the video."""
    from vidrec.client import Client
    from vidrec.v1 import candidate_pb2, candidate_pb2_grpc, common_pb2

    out = []
    with Client.for_stack(stack.var, timeout_s=10.0) as c, \
            stack.client_security.channel(stack.services["candidate"].addr) as ch:
        cand = candidate_pb2_grpc.CandidateStub(ch)
        for i in range(n):
            vid = f"bench-upload-{int(time.time())}-{i}"
            c.upsert_videos([{"video_id": vid, "title": f"Benchmark upload {i}",
                              "category": "music", "tags": ["live"], "creator_id": "c-bench",
                              "language": "en", "duration_s": 200.0}])
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < timeout_s:
                got = cand.Generate(candidate_pb2.GenerateRequest(
                    user=common_pb2.UserContext(user_id=f"fresh-eyes-{i}"), n=200), timeout=5)
                if any(x.video_id == vid for x in got.candidates):
                    break
                time.sleep(0.02)
            out.append(time.perf_counter() - t0)
            print(f"  upload {i + 1}/{n}: {out[-1]:.2f} s", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--duration", type=float, default=20.0, help="seconds per round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per protocol")
    ap.add_argument("--uploads", type=int, default=100)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--http-workers", type=int, default=4,
                    help="the HTTP load generator's connections (threads)")
    ap.add_argument("--out", default="var/bench/front_door")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    var = Path(tempfile.mkdtemp(prefix="vidrec-bench-"))
    stack = Stack(var)
    results: dict = {"model": a.model, "rate": a.rate, "duration_s": a.duration}
    try:
        stack.start_stores()
        index = EdgeIndex(stack.index_root)
        version = publish(Path(a.model), ArtifactStore(stack.artifact_root), index,
                          FeatureStore.from_url(stack.redis_url), overwrite_history=True)
        index.close()
        users = list(ModelBundle.load(stack.artifact_root / version).users)[:2000]
        results["catalog"] = len(ModelBundle.load(stack.artifact_root / version).video_ids)
        stack.start_services(trainer=True, timeout_s=300)
        sec = stack.client_security
        grpc_arg = {"addr": stack.services["gateway"].addr, "rate": a.rate,
                    "duration_s": a.duration, "users": users, "k": a.k, "seed": 1,
                    "var": str(var)}
        http_arg = {"url": stack.http_url, "rate": a.rate, "duration_s": a.duration,
                    "users": users, "k": a.k, "seed": 1, "api_key": sec.bearer, "ca": sec.ca,
                    "workers": a.http_workers}
        # warm-up, discarded
        _load("benchmarks.loadgen", {**grpc_arg, "duration_s": 5.0}, 120)
        _load("benchmarks.httpgen", {**http_arg, "duration_s": 5.0}, 120)
        rounds: dict[str, list[dict]] = {"grpc": [], "http": []}
        for r in range(a.rounds):
            for mode, module, arg in (("grpc", "benchmarks.loadgen", grpc_arg),
                                      ("http", "benchmarks.httpgen", http_arg)):
                res = _load(module, {**arg, "seed": r + 1}, a.duration * 4 + 120)
                rounds[mode].append(res)
                print(f"round {r + 1} {mode:4s}: p50 {res['p50_ms']:.1f} ms, p99 "
                      f"{res['p99_ms']:.1f} ms, ok {res['ok']}/{res['sent']}, errors "
                      f"{res['errors']}", flush=True)
        results["rounds"] = rounds
        summary = {m: {"p50_ms": float(np.median([x["p50_ms"] for x in rs])),
                       "p99_ms": float(np.median([x["p99_ms"] for x in rs]))}
                   for m, rs in rounds.items()}
        summary["overhead_p50_ms"] = summary["http"]["p50_ms"] - summary["grpc"]["p50_ms"]
        summary["overhead_p99_ms"] = summary["http"]["p99_ms"] - summary["grpc"]["p99_ms"]
        results["summary"] = summary
        print(f"HTTP/JSON vs gRPC at {a.rate:.0f} req/s: p50 {summary['http']['p50_ms']:.1f} "
              f"vs {summary['grpc']['p50_ms']:.1f} ms (+{summary['overhead_p50_ms']:.1f} ms), "
              f"p99 {summary['http']['p99_ms']:.1f} vs {summary['grpc']['p99_ms']:.1f} ms",
              flush=True)
        if a.uploads:
            lat = upload_latency(stack, a.uploads)
            results["upload_s"] = {"n": len(lat), "p50": float(np.percentile(lat, 50)),
                                   "p95": float(np.percentile(lat, 95)), "max": max(lat)}
            print(f"upsert -> retrievable over {len(lat)} uploads: p50 "
                  f"{results['upload_s']['p50']:.2f} s, p95 {results['upload_s']['p95']:.2f} s, "
                  f"max {results['upload_s']['max']:.2f} s", flush=True)
    finally:
        stack.stop()
    (out / "front_door.json").write_text(json.dumps(results, indent=2))
    print(f"wrote {out / 'front_door.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
