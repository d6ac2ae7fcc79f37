"""How training cost grows: wall time and peak memory of `vidrec train` against the number
of interactions (catalog fixed) and against the catalog (interactions fixed), each command
in its own process, on this machine in one run.

    python -m benchmarks.scaling [--interactions 1e5,1e6,1e7] [--catalogs 1e4,1e5,1e6]
                                 [--ml ../shared/data/ml-100k] [--epochs 1]

The sweeps train without tuning and with `--epochs` two-tower epochs (the per-epoch cost
is what grows); with `--ml` the run also times the full `vidrec train` (tuning included)
on MovieLens-100K and on a synthetic set of the same size (100k interactions, 10k
videos), and prints their ratio. Writes scaling.json and scaling.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchmarks.scale import measure

PER_USER = 100  # synthetic event rows per user: users = interactions / PER_USER


def synth(root: Path, interactions: int, videos: int) -> Path:
    data = root / f"synth-{interactions}-{videos}"
    if not (data / "interactions.csv").exists():
        users = max(100, interactions // PER_USER)
        measure("data", "synth", "--out", str(data), "--users", str(users), "--videos",
                str(videos), "--seed", "3", "--interactions-per-user", str(PER_USER))
    return data


def train_point(root: Path, data: Path, epochs: int, tune: bool = False) -> dict:
    model = root / ("model-" + data.name + ("-tuned" if tune else ""))
    args = ["train", "--data", str(data), "--out", str(model), "--quiet"]
    if not tune:
        args += ["--no-tune", "--epochs", str(epochs)]
    res = measure(*args)
    m = json.loads((model / "manifest.json").read_text())
    res.update({"interactions": m["counts"]["interactions"], "videos": m["counts"]["videos"],
                "positives": m["counts"]["positives"], "seconds": m["train_seconds"]})
    tt = m["train_seconds"]["two_tower"]
    ep = m["config"]["train"]["epochs"]
    res["two_tower_samples_per_s"] = round(m["counts"]["positives"] * ep / max(tt, 1e-9))
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="var/bench/scaling")
    ap.add_argument("--interactions", default="1e5,1e6,1e7",
                    help="interaction counts for the first sweep (catalog: --catalog)")
    ap.add_argument("--catalog", type=float, default=1e4)
    ap.add_argument("--catalogs", default="1e4,1e5,1e6",
                    help="catalog sizes for the second sweep (interactions: --base)")
    ap.add_argument("--base", type=float, default=1e5)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--ml", default=None, help="MovieLens-100K folder: also time the full "
                    "`vidrec train` (tuning included) there and on synthetic data of its size")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"epochs": a.epochs, "by_interactions": [], "by_catalog": []}
    t0 = time.perf_counter()
    for n in (int(float(x)) for x in a.interactions.split(",") if x):
        row = train_point(out, synth(out, n, int(a.catalog)), a.epochs)
        results["by_interactions"].append(row)
        print(json.dumps(row), flush=True)
    for v in (int(float(x)) for x in a.catalogs.split(",") if x):
        row = train_point(out, synth(out, int(a.base), v), a.epochs)
        results["by_catalog"].append(row)
        print(json.dumps(row), flush=True)
    if a.ml:
        ml = out / "ml100k"
        if not (ml / "interactions.csv").exists():
            measure("data", "movielens", "--src", a.ml, "--out", str(ml))
        ml_row = train_point(out, ml, a.epochs, tune=True)
        syn_row = train_point(out, synth(out, 100_000, 10_000), a.epochs, tune=True)
        results["full_train"] = {"ml100k": ml_row, "synth_100k_10k": syn_row,
                                 "ratio": round(syn_row["wall_s"] / ml_row["wall_s"], 2)}
        print(f"vidrec train (tuning included): ml-100k {ml_row['wall_s']}s, synthetic "
              f"100k/10k {syn_row['wall_s']}s, ratio {results['full_train']['ratio']}",
              flush=True)
    results["bench_seconds"] = round(time.perf_counter() - t0, 1)
    (out / "scaling.json").write_text(json.dumps(results, indent=2))
    plot(results, out / "scaling.png")
    print(json.dumps({k: v for k, v in results.items() if k != "full_train"}, indent=2))
    return 0


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, xkey, label in ((axes[0], "by_interactions", "interactions",
                                  "interactions (catalog fixed)"),
                                 (axes[1], "by_catalog", "videos",
                                  "catalog videos (interactions fixed)")):
        rows = results[key]
        if not rows:
            continue
        x = [r[xkey] for r in rows]
        for part in ("mf", "two_tower", "total"):
            ax.plot(x, [r["seconds"][part] for r in rows], marker="o", label=part)
        ax2 = ax.twinx()
        ax2.plot(x, [r["max_rss_gb"] for r in rows], color="grey", ls="--", marker="x",
                 label="peak RSS (GB)")
        ax2.set_ylabel("peak resident memory (GB)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel(f"training seconds ({results['epochs']} two-tower epoch(s))")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left")
    fig.suptitle("vidrec train: cost against data and catalog size")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
