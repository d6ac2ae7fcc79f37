"""`make bench`: every benchmark in sequence; figures land in var/bench/.

    python -m benchmarks [--only models,cold,scale,serving,trainer,faults,offpolicy,front,
                                 twotower,group,scaling,gpu,million]
                         [--ml ../shared/data/ml-100k]

models   vidrec evaluate on MovieLens-100K (warm + cold-start splits), the tuned peers
         (implicit ALS, EASE, SASRec with full softmax CE, LightFM WARP; benchmark-only
         deps, see benchmarks/requirements.txt)
         on the same protocol, `vidrec train` wall time, and vidrec evaluate on synthetic
         data with precision against the generator's true relevance
cold     cold start over 5 user hold-outs (over one hold-out's ~94 users NDCG@10 ranged
         0.403-0.447): vidrec against tuned LightFM and popularity, split by split (~20 min)
scale    100k-video catalog: wall time and peak memory of `vidrec train` and of
         `vidrec recommend` for every user
serving  100k-video catalog: ANN recall@100 vs exact, gateway latency under open-loop load
trainer  seconds-tier events/s and event -> visible latency under 20k events/s; the apply
         script's own time per event (benchmarks.apply)
group    the trainer as a consumer group on a local 3-master Redis Cluster: events/s with
         1, 2 and 4 replicas, and each replica's share (benchmarks.trainer_group)
faults   stages killed and stopped, Redis stopped, the trainer killed, 3x overload, under
         load: errors, degraded share, p99, recovery, events acked vs applied
offpolicy  the retrain gate's off-policy estimate against the online difference of a model
         and degraded copies in a closed-loop simulation, 3 seeds, both exploration scopes
front    100k-video catalog: HTTP/JSON front door vs gRPC at 100 req/s (alternating
         rounds), and upsert -> retrievable latency over 100 uploads
twotower two-tower training samples/s against the idealised step (dense and sparse tables)
scaling  `vidrec train` time and peak memory vs interactions (1e5-1e7) and catalog (1e4-1e6);
         full train (tuning included) on ML-100K vs synthetic data of its size
gpu      the two-tower on a CUDA GPU vs the CPU: same quality within tolerance, time each
         (the CPU alone without a GPU)
million  1M-video catalog: publish time, ANN recall@100, candidate-stage p99, gateway
         latency at 50 and 100 req/s, like -> fold-in latency, memory per process
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

PY = sys.executable


def sh(*cmd: str) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def models(var: Path, ml: Path) -> None:
    data = var / "ml100k"
    if not (data / "interactions.csv").exists():
        sh(PY, "-m", "vidrec.cli", "data", "movielens", "--src", str(ml), "--out", str(data))
    t0 = time.perf_counter()
    sh(PY, "-m", "vidrec.cli", "train", "--data", str(data), "--out", str(var / "ml_model"),
       "--quiet")
    train_s = time.perf_counter() - t0
    print(f"vidrec train on ml-100k: {train_s:.1f}s wall", flush=True)
    sh(PY, "-m", "vidrec.cli", "evaluate", "--data", str(data), "--out", str(var / "eval_ml"),
       "--quiet")
    try:
        import implicit  # noqa: F401
        import lightfm  # noqa: F401
    except ImportError:
        print("peers skipped: install them with the two commands in benchmarks/requirements.txt",
              flush=True)
    else:
        sh(PY, "-m", "benchmarks.peers", "--data", str(ml), "--out", str(var / "peers"))
        lfm = json.loads((var / "peers" / "results.json").read_text())["results"].get(
            "lightfm_warp (warm)")
        if lfm:
            peer_s = lfm["tune_s"] + lfm["fit_s"]
            print(f"vidrec train (tuning included) {train_s:.1f}s vs LightFM WARP with "
                  f"features tuned and trained {peer_s:.1f}s: ratio {train_s / peer_s:.2f} "
                  "(issue 22 asks <= 1)", flush=True)
    synth = var / "synth"
    if not (synth / "interactions.csv").exists():
        sh(PY, "-m", "vidrec.cli", "data", "synth", "--out", str(synth), "--users", "3000",
           "--videos", "4000", "--seed", "5", "--interactions-per-user", "150")
    sh(PY, "-m", "vidrec.cli", "evaluate", "--data", str(synth), "--out",
       str(var / "eval_synth"), "--quiet")


def cold(var: Path, ml: Path) -> None:
    try:
        import lightfm  # noqa: F401
    except ImportError:
        print("cold skipped: install the peers with benchmarks/requirements.txt", flush=True)
        return
    sh(PY, "-m", "benchmarks.cold", "--data", str(ml), "--out", str(var / "cold"))


def serving_model(var: Path) -> Path:
    """The 100k-video benchmark model (made once, reused)."""
    data, model = var / "data100k", var / "model100k"
    if not (data / "interactions.csv").exists():
        sh(PY, "-m", "vidrec.cli", "data", "synth", "--out", str(data), "--users", "5000",
           "--videos", "100000", "--seed", "11", "--interactions-per-user", "40")
    if not (model / "manifest.json").exists():
        sh(PY, "-m", "vidrec.cli", "train", "--data", str(data), "--out", str(model), "--quiet",
           "--no-tune")
    return model


def serving(var: Path) -> None:
    model = serving_model(var)
    sh(PY, "-m", "benchmarks.serving", "--model", str(model), "--out", str(var / "serving"))


def scale(var: Path) -> None:
    sh(PY, "-m", "benchmarks.scale", "--out", str(var / "scale"))


def trainer(var: Path) -> None:
    sh(PY, "-m", "benchmarks.trainer", "--out", str(var / "trainer"))
    sh(PY, "-m", "benchmarks.apply")


def group(var: Path) -> None:
    sh(PY, "-m", "benchmarks.trainer_group", "--out", str(var / "trainer_group"))


def faults(var: Path) -> None:
    sh(PY, "-m", "benchmarks.faults", "--out", str(var / "faults"))


def offpolicy(var: Path) -> None:
    for scope, pool in (("tiers", "5"), ("ranked", "10"), ("top", "10")):
        sh(PY, "-m", "benchmarks.offpolicy", "--scope", scope, "--pool", pool, "--out",
           str(var / f"offpolicy-{scope}-{pool}"))


def front(var: Path) -> None:
    model = serving_model(var)
    sh(PY, "-m", "benchmarks.front_door", "--model", str(model), "--out", str(var / "front"))


def scaling(var: Path, ml: Path) -> None:
    sh(PY, "-m", "benchmarks.scaling", "--out", str(var / "scaling"), "--ml", str(ml))
    try:
        import lightfm  # noqa: F401
    except ImportError:
        print("train cost vs LightFM skipped: install the peers (benchmarks/requirements.txt)",
              flush=True)
    else:
        sh(PY, "-m", "benchmarks.train_cost", "--ml", str(ml), "--out",
           str(var / "train_cost"))


def gpu(var: Path, ml: Path) -> None:
    sh(PY, "-m", "benchmarks.gpu_parity", "--ml", str(ml), "--out", str(var / "gpu_parity"))


def million(var: Path) -> None:
    """The 1M-video catalog: train (no tuning), publish, serve at 50 and 100 req/s, fold in."""
    data, model = var / "data1m", var / "model1m"
    if not (data / "interactions.csv").exists():
        sh(PY, "-m", "vidrec.cli", "data", "synth", "--out", str(data), "--users", "3000",
           "--videos", "1000000", "--seed", "1")
    if not (model / "manifest.json").exists():
        sh(PY, "-m", "vidrec.cli", "train", "--data", str(data), "--out", str(model), "--quiet",
           "--no-tune")
    sh(PY, "-m", "benchmarks.serving", "--model", str(model), "--rates", "50,100",
       "--duration", "30", "--out", str(var / "million"))


def twotower(var: Path) -> None:
    sh(PY, "-m", "benchmarks.two_tower_step", "--out", str(var / "two_tower_step"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="models,cold,scale,serving,trainer,faults,front,"
                                      "twotower,group,scaling,gpu,million")
    ap.add_argument("--ml", default="../shared/data/ml-100k")
    ap.add_argument("--var", default="var/bench")
    a = ap.parse_args()
    var = Path(a.var)
    var.mkdir(parents=True, exist_ok=True)
    for name in a.only.split(","):
        {"models": lambda: models(var, Path(a.ml)), "cold": lambda: cold(var, Path(a.ml)),
         "scale": lambda: scale(var), "serving": lambda: serving(var),
         "trainer": lambda: trainer(var), "faults": lambda: faults(var),
         "group": lambda: group(var),
         "offpolicy": lambda: offpolicy(var), "front": lambda: front(var),
         "twotower": lambda: twotower(var), "scaling": lambda: scaling(var, Path(a.ml)),
         "gpu": lambda: gpu(var, Path(a.ml)), "million": lambda: million(var)}[name]()
    print(f"figures in {var}/", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
