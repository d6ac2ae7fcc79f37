"""Recall and latency of the published index against its search breadth (ef), per named
vector, on a collection a publish already built (no rebuild: a 1M-video build takes an
hour on 2 cores).

    python -m benchmarks.ann_sweep --index VAR/index --model MODEL_DIR [--efs 256,768,2048]

Queries are real: 200 known users' two-tower and MF vectors, and the content vectors of
their latest watches. Recall@100 is against exact search over the same collection.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from vidrec.models.bundle import ModelBundle
from vidrec.models.online import OnlineModel
from vidrec.store.index import CONTENT, MF, TT, EdgeIndex


def sweep(index: EdgeIndex, name: str, queries: np.ndarray, using: str, efs: list[int],
          k: int = 100) -> list[dict[str, float]]:
    exact = [{v for v, _ in index.search(name, q, k, exact=True, using=using)}
             for q in queries]
    rows = []
    for ef in efs:
        ms, rec = [], []
        for q, truth in zip(queries, exact, strict=True):
            t = time.perf_counter()
            got = {v for v, _ in index.search(name, q, k, using=using, ef=ef)}
            ms.append((time.perf_counter() - t) * 1000)
            rec.append(len(got & truth) / max(len(truth), 1))
        rows.append({"vector": using, "ef": ef, "recall@100": round(float(np.mean(rec)), 4),
                     "p50_ms": round(float(np.median(ms)), 2),
                     "p99_ms": round(float(np.percentile(ms, 99)), 2)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", required=True, help="the index root (holds the collection)")
    ap.add_argument("--model", required=True)
    ap.add_argument("--collection", default="videos_v1")
    ap.add_argument("--efs", default="256,768,1536,3072")
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--out", default="var/bench/ann_sweep")
    a = ap.parse_args()
    bundle = ModelBundle.load(Path(a.model))
    online = OnlineModel(bundle)
    index = EdgeIndex(Path(a.index))
    index.remember_ids(bundle.video_ids)
    rng = np.random.default_rng(0)
    users = [u for u in rng.permutation(list(bundle.users)) if bundle.users[u].history]
    users = users[: a.users]
    tt = np.stack([online.user_vectors(u, bundle.users[u].profile,
                                       bundle.users[u].history).two_tower for u in users])
    row = {str(u): i for i, u in enumerate(bundle.mf_user_ids)}
    mf = np.stack([bundle.mf_user[row[u]] for u in users if u in row])
    vid = {v: i for i, v in enumerate(bundle.video_ids)}
    content = np.stack([bundle.content_vectors[vid[bundle.users[u].history[0]]]
                        for u in users])
    efs = [int(x) for x in a.efs.split(",")]
    res = {"catalog": len(bundle.video_ids), "queries": len(users),
           "rows": sweep(index, a.collection, tt, TT, efs)}
    if len(mf):
        res["rows"] += sweep(index, a.collection, mf, MF, [128, 768])
    res["rows"] += sweep(index, a.collection, content, CONTENT, [128, 768])
    index.close()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ann_sweep.json").write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
