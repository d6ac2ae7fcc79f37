"""The two-tower trained on a CUDA GPU against the CPU, on one machine in one run: the same
quality within float tolerance, and the time each took.

Same data, seed, initial weights (made on the CPU, then moved), batch order and dropout
masks (numpy draws) on every device: only the arithmetic's order differs. MovieLens-100K,
per-user temporal split, no tuning (the default blend), so the run is short.

    python -m benchmarks.gpu_parity --ml ../shared/data/ml-100k [--devices cpu,cuda]

Without a GPU it measures the CPU alone and says so.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from vidrec.data.dataset import Dataset, load_dataset
from vidrec.data.movielens import import_movielens
from vidrec.data.splits import item_counts, relevant_sets, temporal_split
from vidrec.evaluation.offline import EvalResult, score_modes
from vidrec.training.pipeline import PipelineConfig, train_bundle


def run_device(ds: Dataset, train: Dataset, relevant: dict[str, set[str]], dev: str,
               epochs: int | None, batch: int | None) -> dict[str, float]:
    cfg = PipelineConfig()
    cfg.train = replace(cfg.train, threads=os.cpu_count() or 1, device=dev,
                        epochs=epochs or cfg.train.epochs,
                        batch_size=batch or cfg.train.batch_size)
    t0 = time.perf_counter()
    bundle = train_bundle(train, cfg, progress=False, version=f"parity-{dev}")
    wall = time.perf_counter() - t0
    res = EvalResult()
    score_modes(bundle, ds, relevant, ["hybrid", "two_tower"], [10], "warm",
                item_counts(train.interactions), res)
    out = {"device": dev, "train_wall_s": round(wall, 2),
           "two_tower_s": bundle.manifest["train_seconds"]["two_tower"],
           "examples": int(bundle.manifest["counts"]["positives"]),
           "epochs": cfg.train.epochs, "batch": cfg.train.batch_size}
    for mode in ("hybrid", "two_tower"):
        m = res.results[f"{mode} (warm)"]
        out[f"{mode}_ndcg@10"] = round(float(m["ndcg@10"]), 4)
        out[f"{mode}_map@10"] = round(float(m["map@10"]), 4)
    out["video_vectors_norm"] = round(float(np.linalg.norm(bundle.video_vectors)), 3)
    print(json.dumps(out), flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ml", default="../shared/data/ml-100k")
    ap.add_argument("--devices", default="cpu,cuda")
    ap.add_argument("--epochs", type=int, default=None, help="default: TrainConfig's")
    ap.add_argument("--batch", type=int, default=None, help="default: TrainConfig's")
    ap.add_argument("--out", default="var/bench/gpu_parity")
    a = ap.parse_args()
    devices = [d for d in a.devices.split(",") if d]
    if "cuda" in devices and not torch.cuda.is_available():
        print("no CUDA GPU visible to torch: measuring the CPU alone", flush=True)
        devices = [d for d in devices if d != "cuda"]
    with tempfile.TemporaryDirectory() as tmp:
        import_movielens(Path(a.ml), Path(tmp) / "ml")
        ds = load_dataset(Path(tmp) / "ml")
    tr, te = temporal_split(ds.interactions)
    train = Dataset(ds.videos, ds.users, tr.reset_index(drop=True), ds.root)
    relevant = relevant_sets(te)
    rows = [run_device(ds, train, relevant, d, a.epochs, a.batch) for d in devices]
    result: dict = {"torch": torch.__version__, "cpu_count": os.cpu_count(),
                    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                    "runs": rows}
    if len(rows) == 2:
        a_, b_ = rows
        result["delta"] = {k: round(b_[k] - a_[k], 4) for k in a_
                           if k.endswith("@10")}
        result["speedup_two_tower"] = round(a_["two_tower_s"] / max(b_["two_tower_s"], 1e-9), 2)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_parity.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
