"""Offline commands on a large catalog: wall time and peak memory of `vidrec train` (tuning
included) and `vidrec recommend` for every user.

MovieLens has 1,682 videos; a streaming catalog has 100k or more, and every users x catalog
matrix grows with it. Each command runs in its own process, so its peak resident memory
is its own.

    python -m benchmarks.scale --out var/bench/scale [--videos 100000 --users 3000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

# Runs one vidrec command in-process and prints its peak RSS (KB on Linux) on the last line.
_CHILD = ("import json, resource, sys; from vidrec.cli import main; rc = main(sys.argv[1:]); "
          "print(json.dumps({'rc': rc, 'maxrss_kb': "
          "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))")


def measure(*args: str) -> dict[str, float]:
    """Wall seconds and peak resident memory of `vidrec ARGS` in a fresh process."""
    print("+ vidrec", " ".join(args), flush=True)
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _CHILD, *args], check=True,
                         capture_output=True, text=True)
    wall = time.perf_counter() - t0
    last = json.loads(out.stdout.strip().splitlines()[-1])
    if last["rc"] != 0:
        raise SystemExit(f"vidrec {' '.join(args)} exited {last['rc']}: {out.stderr[-2000:]}")
    res = {"wall_s": round(wall, 1), "max_rss_gb": round(last["maxrss_kb"] / 2**20, 2)}
    print(f"  {res}", flush=True)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="var/bench/scale")
    ap.add_argument("--videos", type=int, default=100_000)
    ap.add_argument("--users", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    data, model = out / "data", out / "model"
    if not (data / "interactions.csv").exists():
        measure("data", "synth", "--out", str(data), "--users", str(a.users), "--videos",
                str(a.videos), "--seed", str(a.seed))
    results = {"videos": a.videos, "users": a.users,
               "train": measure("train", "--data", str(data), "--out", str(model), "--quiet")}
    manifest = json.loads((model / "manifest.json").read_text())
    results["train_seconds"] = manifest["train_seconds"]
    users = out / "users.txt"
    ids = [line.split(",", 1)[0] for line in
           (data / "users.csv").read_text().splitlines()[1:] if line]
    users.write_text("\n".join(ids) + "\n")
    results["recommend"] = measure("recommend", "--model", str(model), "--users", str(users),
                                   "--k", "10", "--out", str(out / "recs.jsonl"))
    results["recommend"]["users"] = len(ids)
    (out / "scale.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
