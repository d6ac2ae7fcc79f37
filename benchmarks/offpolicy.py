"""Does the retrain gate's off-policy estimate agree in sign with the online difference?

    python -m benchmarks.offpolicy [--seeds 0,1,2] [--users 400] [--videos 600]
                                   [--days 8] [--noise 1.0,3.0] [--out var/bench/offpolicy]

Per seed: synthetic data with a hidden ground truth (vidrec.data.synth), one trained model
("good") and deliberately degraded copies of it (Gaussian noise on its MF factors and
video vectors, `degrade`). Each model in turn serves every user once a day for `days`
days through the served funnel offline (ranker top 50 -> the reranker's rules, the
exploration slot included: vidrec.evaluation.funnel), and the hidden user model answers
(GroundTruth.respond): that is its online CTR and true precision. Then the retrain gate's
estimator (vidrec.evaluation.offpolicy) judges each pair from the other model's log only:
the sign of its SNIPS difference against the sign of the measured CTR difference.
Writes results.json and prints a table.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vidrec.data.synth import GroundTruth, generate
from vidrec.evaluation.funnel import TOP_M, CatalogMeta, user_context
from vidrec.evaluation.offpolicy import compare_models
from vidrec.models.bundle import BatchRecommender, ModelBundle
from vidrec.rerank import DAY_S, RerankConfig
from vidrec.serving.rerank import apply_rules
from vidrec.v1 import common_pb2

K = 10


@dataclass
class Online:
    """What the hidden users did with one model's served lists."""

    events: pd.DataFrame
    ctr: float
    true_precision: float
    requests: int


def degrade(bundle: ModelBundle, noise: float, seed: int) -> ModelBundle:
    """A copy whose MF factors and video vectors carry Gaussian noise of `noise` times
    each matrix's own standard deviation: a worse model of known direction."""
    rng = np.random.default_rng(seed)
    b = copy.copy(bundle)
    for name in ("mf_user", "mf_video", "video_vectors"):
        m = np.asarray(getattr(bundle, name), dtype=np.float32)
        setattr(b, name, (m + noise * float(m.std()) * rng.standard_normal(m.shape))
                .astype(np.float32))
    return b


def serve_online(bundle: ModelBundle, truth: GroundTruth, users: Sequence[str], days: int,
                 seed: int, cfg: RerankConfig | None = None, k: int = K,
                 start: float | None = None) -> Online:
    """Every user asks once a day; the served list (rules on) is shown and answered.

    The lists are the model's (no learning between days); the exploration slot's draw
    changes with the day (vidrec.rerank._exploration_rng), as in serving."""
    cfg = cfg or RerankConfig()
    rng = np.random.default_rng(seed)
    rec = BatchRecommender(bundle)
    users = list(users)
    ranked = rec.ranked(users, TOP_M, profiles=[{}] * len(users))
    meta = CatalogMeta(bundle.video_rows())
    known = set(truth.video_ids)
    t0 = float(truth.params.t_end if start is None else start)
    rows: list[tuple[Any, ...]] = []
    shown_n = clicks = relevant = 0
    for d in range(days):
        now = t0 + d * DAY_S
        for u, items in zip(users, ranked, strict=True):
            ctx = user_context(u, bundle.users.get(u))
            videos = [common_pb2.ScoredVideo(video_id=v, score=s,
                                             source=common_pb2.CANDIDATE_SOURCE_TWO_TOWER)
                      for v, s in items]
            out = [v for v in apply_rules(meta, ctx, videos, k, cfg, now) if v.video_id in known]
            shown = [v.video_id for v in out]
            if not shown:
                continue
            req = f"d{d}:{u}"
            for pos, v in enumerate(out):
                rows.append((u, v.video_id, now, "impression", np.nan, req, pos, v.propensity,
                             tuple(v.exploration_pool)))
            relevant += int(truth.relevant_matrix([u], video_ids=shown)[0].sum())
            shown_n += len(shown)
            for vid, ev, value in truth.respond(u, shown, rng, now=now):
                if ev == "impression":
                    continue
                clicks += ev == "click"
                rows.append((u, vid, now, ev, np.nan if value is None else value, req,
                             shown.index(vid), np.nan, ()))
    events = pd.DataFrame(rows, columns=["user_id", "video_id", "timestamp", "event", "value",
                                         "request_id", "position", "propensity",
                                         "exploration_pool"])
    return Online(events, clicks / max(shown_n, 1), relevant / max(shown_n, 1),
                  days * len(users))


def check_seed(seed: int, users: int, videos: int, days: int, noises: Sequence[float],
               epochs: int, work: Path, rules: RerankConfig | None = None,
               replicates: int = 500) -> list[dict[str, Any]]:
    """Every ordered pair of {good, degraded...}: the logging model serves, the gate
    judges the other one from that log; against the measured online CTR difference."""
    from vidrec.data.dataset import load_dataset
    from vidrec.training.pipeline import PipelineConfig, train_bundle

    data = work / f"synth{seed}"
    generate(data, users=users, videos=videos, seed=seed, interactions_per_user=100.0)
    cfg = PipelineConfig()
    cfg.train = replace(cfg.train, epochs=epochs)
    good = train_bundle(load_dataset(data), cfg, progress=False, version="v1")
    truth = GroundTruth.load(data)
    models = {"good": good} | {f"noise{n:g}": degrade(good, n, seed + 100) for n in noises}
    ids = [u for u in good.users if u in set(truth.user_ids)]
    online = {name: serve_online(m, truth, ids, days, seed, rules)
              for name, m in models.items()}
    rows = []
    for log_name, log_model in models.items():
        for cand_name, cand_model in models.items():
            if cand_name == log_name:
                continue
            d = compare_models(online[log_name].events, log_model, cand_model,
                               replicates=replicates, seed=seed)
            if d is None:
                continue
            ctr_diff = online[cand_name].ctr - online[log_name].ctr
            tp_diff = online[cand_name].true_precision - online[log_name].true_precision
            rows.append({
                "seed": seed, "logging": log_name, "candidate": cand_name,
                "online_ctr_logging": online[log_name].ctr,
                "online_ctr_candidate": online[cand_name].ctr,
                "online_ctr_diff": ctr_diff, "online_true_precision_diff": tp_diff,
                "snips_diff": d.snips.value, "snips_lo": d.snips.lo, "snips_hi": d.snips.hi,
                "ips_diff": d.ips.value, "slots": d.baseline.slots, "users": d.baseline.users,
                "verdict": d.verdict,
                "sign_agrees": bool(np.sign(d.snips.value) == np.sign(ctr_diff)),
            })
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--users", type=int, default=400)
    ap.add_argument("--videos", type=int, default=600)
    ap.add_argument("--days", type=int, default=8)
    ap.add_argument("--noise", default="1.0,3.0")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--scope", default="ranked", choices=["tiers", "ranked", "top"],
                    help="RerankConfig.exploration_scope of the logging policy")
    ap.add_argument("--pool", type=int, default=20, help="RerankConfig.exploration_pool")
    ap.add_argument("--out", default="var/bench/offpolicy")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="vidrec-offpolicy-") as tmp:
        for seed in (int(s) for s in a.seeds.split(",")):
            rows += check_seed(seed, a.users, a.videos, a.days,
                               [float(n) for n in a.noise.split(",")], a.epochs, Path(tmp),
                               RerankConfig(exploration_scope=a.scope,
                                            exploration_pool=a.pool))
            print(f"seed {seed} done, {time.perf_counter() - t0:.0f}s", flush=True)
    print(f"{'seed':>4} {'logging':>9} {'candidate':>9} {'online CTR diff':>16} "
          f"{'true prec diff':>15} {'SNIPS diff [95%]':>28} {'slots':>6} agrees")
    for r in rows:
        print(f"{r['seed']:>4} {r['logging']:>9} {r['candidate']:>9} "
              f"{r['online_ctr_diff']:>+16.4f} {r['online_true_precision_diff']:>+15.4f} "
              f"{r['snips_diff']:>+9.4f} [{r['snips_lo']:+.4f}, {r['snips_hi']:+.4f}] "
              f"{r['slots']:>6} {'yes' if r['sign_agrees'] else 'NO'}")
    agree = sum(r["sign_agrees"] for r in rows)
    print(f"sign agreement: {agree}/{len(rows)} pairs; {time.perf_counter() - t0:.0f}s")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"args": vars(a), "rows": rows,
                                                  "agree": agree, "pairs": len(rows)},
                                                 indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
