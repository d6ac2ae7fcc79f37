"""Choosing what `vidrec train` does not learn by gradient: the demographic prior's field
weights (cross-validation), the second-stage blend weights and the MF recency boost
(validation splits carved from the training data only), then training on everything."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import scipy.sparse as sp

from vidrec import schema
from vidrec.data.dataset import Dataset, user_profiles
from vidrec.data.feedback import build_feedback_matrix, first_liked, recency_ranks
from vidrec.data.splits import cold_start_split, relevant_sets, temporal_split
from vidrec.metrics import evaluate
from vidrec.models.bundle import BatchRecommender, ModelBundle, RankerWeights
from vidrec.models.demographic import FieldFit, fit_field_weights
from vidrec.models.features import FeatureEncoder
from vidrec.models.mf import recency_user_factors
from vidrec.training.pipeline import PipelineConfig, positive_scores, train_bundle

log = logging.getLogger(__name__)


@dataclass
class TuneResult:
    weights: RankerWeights
    recency_boost: float  # MFConfig.recency_boost
    validation: dict[str, float]
    seconds: float


# Every grid includes 0 (that term off): on MovieLens the cold-start optimum is a strong
# popularity/demographic prior, on the synthetic data the two-tower alone; the validation
# split decides per dataset. The grids reach past the largest weights validation picked
# on either dataset (an optimum on a grid's edge means the grid was too small).
WARM_GRID_MF = (0.0, 0.15, 0.25, 0.4, 0.6, 0.9, 1.3)
WARM_GRID_POP = (0.0, 0.15, 0.3, 0.5)
WARM_GRID_DEMO = (0.0, 0.15, 0.3, 0.5)
COLD_GRID_POP = (0.0, 1.0, 3.0, 5.0, 8.0, 12.0, 20.0, 40.0, 80.0)
COLD_GRID_DEMO = (0.0, 3.0, 8.0, 12.0, 20.0, 40.0, 80.0)
RECENCY_GRID = (0.0, 3.0, 10.0, 30.0, 100.0)  # MFConfig.recency_boost
# Scoring a validation user costs one pass over the catalog per grid sweep, so validation
# users are sampled down to TUNE_CELLS / catalog (never below MIN_TUNE_USERS): on a
# 1M-video catalog 2,700 users x ~6 sweeps ran past 15 minutes. Catalogs up to 200k
# videos with up to 5,000 validation users (every benchmark here) are not sampled.
TUNE_CELLS = 1e9
MIN_TUNE_USERS = 500


def tune_sample(users: list[str], catalog: int, seed: int) -> list[str]:
    """`users`, or a seeded sample of them small enough that users x catalog stays within
    TUNE_CELLS."""
    cap = max(MIN_TUNE_USERS, int(TUNE_CELLS // max(catalog, 1)))
    if len(users) <= cap:
        return users
    log.info("tuning on %d of %d validation users (catalog %d)", cap, len(users), catalog)
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(np.array(users, dtype=object), cap, replace=False).tolist())


def tune_demographic(ds: Dataset, cfg: PipelineConfig, seed: int = 0) -> FieldFit:
    """The demographic prior's field weights, by 5-fold cross-validation over every
    training user of `ds` (see `fit_field_weights`)."""

    encoder = FeatureEncoder.fit(ds.videos.reset_index(drop=True), ds.users, ref_ts=0.0)
    pscore = positive_scores(ds.interactions, cfg.weights)
    pscore = pscore[pscore["video_id"].isin(encoder.video_index)]
    profiles = user_profiles(ds.users)
    users = sorted(set(pscore["user_id"].astype(str)) & set(profiles))
    row = {u: i for i, u in enumerate(users)}
    pscore = pscore[pscore["user_id"].astype(str).isin(row)]
    shape = (len(users), len(encoder.video_ids))
    pos = sp.csr_matrix(
        (pscore["score"].to_numpy(np.float64) ** cfg.popularity_power,
         (pscore["user_id"].astype(str).map(row).to_numpy(np.int64),
          pscore["video_id"].map(encoder.video_index).to_numpy(np.int64))), shape=shape)
    pairs = [(row[u], encoder.video_index[v]) for u, vs in relevant_sets(ds.interactions).items()
             if u in row for v in vs if v in encoder.video_index]
    r, c = (np.array(x, dtype=np.int64) for x in zip(*pairs, strict=True)) if pairs else (
        np.zeros(0, np.int64), np.zeros(0, np.int64))
    rel = sp.csr_matrix((np.ones(len(r), dtype=np.float64), (r, c)), shape=shape)
    sizes = [encoder.sizes()["user." + n] for n in schema.USER_CAT_FEATURES]
    return fit_field_weights(encoder.encode_users([profiles[u] for u in users]), pos, rel,
                             sizes, schema.USER_CAT_FEATURES, cfg.demographic.smoothing,
                             seed=seed)


def tune_ranker(ds: Dataset, cfg: PipelineConfig, seed: int = 1, progress: bool = True
                ) -> TuneResult:
    """Pick the second-stage weights on a validation split carved from `ds` only.

    10% of users are held out entirely (cold-start validation); of the rest, each user's
    last 20% of interactions is the warm validation set. One model is trained on what is
    left and the weight grid (with the MF user vectors' recency boost) is scored by
    NDCG@10 on both. The caller's test data never enters: `ds` is already the training
    side of any evaluation split.
    """

    t0 = time.perf_counter()
    rest, cold_val, cold_users = cold_start_split(ds.interactions, 0.1, seed)
    fit, warm_val = temporal_split(rest)
    sub = Dataset(ds.videos, ds.users, fit.reset_index(drop=True), ds.root)
    bundle = train_bundle(sub, cfg, progress=progress, version="tune")
    rec = BatchRecommender(bundle)
    best: dict[str, float] = {}
    w = RankerWeights(**asdict(cfg.ranker))
    rel = relevant_sets(warm_val)
    users = tune_sample(sorted(rel), len(bundle.video_ids), seed)
    boost = cfg.mf.recency_boost
    if users:
        fm = build_feedback_matrix(fit, cfg.weights,
                                   video_ids=np.array(bundle.video_ids, dtype=object))
        ranks = recency_ranks(fm, first_liked(fit, fm))
        scores: dict[tuple[float, float, float, float], float] = {}

        def score_grid(rb: float, grid: Iterable[tuple[float, float, float]]) -> None:
            # The score terms are computed once per boost; each grid point only blends them.
            bundle.mf_user = recency_user_factors(bundle.mf_video, fm, ranks,
                                                  replace(cfg.mf, recency_boost=rb))
            points = list(grid)
            ndcg = grid_ndcg(rec, users, [{}] * len(users), rel,
                             [RankerWeights(1.0, mf, pop, 0.0, demo, 0.0)
                              for mf, pop, demo in points])
            for (mf, pop, demo), v in zip(points, ndcg, strict=True):
                scores[(rb, mf, pop, demo)] = v

        def best_point() -> tuple[float, float, float, float]:
            return max(scores.items(), key=lambda kv: kv[1])[0]

        # Coordinate search: the full blend grid without recency, then the MF weight for
        # each recency boost, then the priors again at the best of those (~150 points,
        # not the 560 of a full product: tuning is part of `vidrec train`'s minute).
        score_grid(0.0, itertools.product(WARM_GRID_MF, WARM_GRID_POP, WARM_GRID_DEMO))
        _, _, pop0, demo0 = best_point()
        for rb in RECENCY_GRID[1:]:
            score_grid(rb, ((mf, pop0, demo0) for mf in WARM_GRID_MF))
        boost, mf1, _, _ = best_point()
        if boost:
            score_grid(boost, ((mf1, p, d) for p, d in itertools.product(WARM_GRID_POP,
                                                                          WARM_GRID_DEMO)))
        boost, w.mf, w.pop, w.demo = best_point()
        best["val_warm_ndcg@10"] = scores[(boost, w.mf, w.pop, w.demo)]
        best["val_warm_ndcg@10_no_recency"] = max(v for k, v in scores.items() if k[0] == 0)
    crel = relevant_sets(cold_val)
    cusers = tune_sample(sorted(crel), len(bundle.video_ids), seed + 1)
    if cusers:
        profiles = user_profiles(ds.users)
        prof = [profiles.get(u, {}) for u in cusers]
        cpoints = list(itertools.product(COLD_GRID_POP, COLD_GRID_DEMO))
        cndcg = grid_ndcg(rec, cusers, prof, crel,
                          [RankerWeights(1.0, 0.0, 0.0, cp, 0.0, cd) for cp, cd in cpoints])
        cscores = dict(zip(cpoints, cndcg, strict=True))
        (w.cold_pop, w.cold_demo), best["val_cold_ndcg@10"] = max(cscores.items(),
                                                                  key=lambda kv: kv[1])
    seconds = time.perf_counter() - t0
    log.info("tuned ranker weights %s, MF recency boost %g on validation (%d warm, %d cold"
             " users) in %.1fs: %s", w.to_dict(), boost, len(users), len(cold_users), seconds,
             best)
    return TuneResult(w, boost, best, seconds)


def grid_ndcg(rec: BatchRecommender, users: list[str], profiles: Sequence[Mapping[str, Any]],
              relevant: dict[str, set[str]], grid: list[RankerWeights]) -> list[float]:
    """Hybrid NDCG@10 over `users` for every weight setting in `grid`.

    The score terms are computed once per chunk of users (`BatchRecommender.chunk_size`,
    so a large catalog stays within memory); each setting only blends them.
    """

    sums, n = np.zeros(len(grid)), 0.0
    step = rec.chunk_size()
    for s in range(0, len(users), step):
        part = users[s: s + step]
        comp = rec.components(part, list(profiles[s: s + step]))
        sub = {u: relevant[u] for u in part}
        for i, w in enumerate(grid):
            lists = rec.top_k(comp, 10, "hybrid", w)
            m = evaluate(dict(zip(part, lists, strict=True)), sub, [10], ())
            if m["users"]:
                sums[i] += m["ndcg@10"] * m["users"]
        n += m["users"] if grid else 0.0
    return (sums / n).tolist() if n else [float("nan")] * len(grid)


def train_tuned(ds: Dataset, cfg: PipelineConfig | None = None, progress: bool = True,
                version: str | None = None) -> ModelBundle:
    """`vidrec train`: the demographic field weights (cross-validated), then the ranker
    weights on validation, then train on everything."""
    cfg = cfg or PipelineConfig()
    t0 = time.perf_counter()
    demo = tune_demographic(ds, cfg)
    demo_seconds = time.perf_counter() - t0
    cfg.demographic = replace(cfg.demographic, field_weights=demo.field_weights)
    tuned = tune_ranker(ds, cfg, progress=progress)
    cfg.ranker = tuned.weights
    cfg.mf = replace(cfg.mf, recency_boost=tuned.recency_boost)
    bundle = train_bundle(ds, cfg, progress=progress, version=version)
    bundle.manifest["metrics"].update(tuned.validation)
    if demo.users:
        bundle.manifest["metrics"].update({
            "cv_cold_ndcg@10_prior": round(demo.ndcg, 4),
            "cv_cold_ndcg@10_popularity": round(demo.ndcg_popularity, 4),
            "cv_cold_ndcg@10_equal_fields": round(demo.ndcg_equal, 4)})
    bundle.manifest["train_seconds"]["tune"] = round(demo_seconds + tuned.seconds, 3)
    bundle.manifest["train_seconds"]["total"] = round(
        bundle.manifest["train_seconds"]["total"] + demo_seconds + tuned.seconds, 3)
    return bundle


