"""`vidrec train`: a data directory in, a model directory out (everything serving needs)."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from vidrec import schema
from vidrec.data.dataset import Dataset, user_profiles
from vidrec.data.feedback import (
    FeedbackWeights,
    build_feedback_matrix,
    event_scores,
    recency_ranks,
)
from vidrec.models.bundle import BatchRecommender, ModelBundle, RankerWeights, UserRecord
from vidrec.models.content import ContentModel
from vidrec.models.demographic import (
    DemographicConfig,
    FieldFit,
    demographic_counts,
    fit_field_weights,
)
from vidrec.models.features import FeatureEncoder
from vidrec.models.mf import MFConfig, recency_user_factors, train_mf
from vidrec.models.two_tower import TwoTowerConfig
from vidrec.models.two_tower_task import (
    TrainConfig,
    build_sequences,
    embed_videos,
    train_two_tower,
)

log = logging.getLogger(__name__)


@dataclass
class PipelineConfig:
    weights: FeedbackWeights = field(default_factory=FeedbackWeights)
    mf: MFConfig = field(default_factory=MFConfig)
    two_tower: TwoTowerConfig = field(default_factory=TwoTowerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ranker: RankerWeights = field(default_factory=RankerWeights)
    demographic: DemographicConfig = field(default_factory=DemographicConfig)
    # Popularity (and the demographic prior) count each positive (user, video) pair with
    # weight score ** popularity_power, score its summed feedback (0: plain counts).
    popularity_power: float = 1.0


def positive_scores(interactions: pd.DataFrame, weights: FeedbackWeights) -> pd.DataFrame:
    """user_id, video_id, score: each pair's summed, clipped feedback score where > 0."""
    s = event_scores(interactions, weights)
    df = pd.DataFrame({"user_id": interactions["user_id"].to_numpy(),
                       "video_id": interactions["video_id"].to_numpy(), "score": s})
    df = df.groupby(["user_id", "video_id"], sort=False, as_index=False)["score"].sum()
    df["score"] = df["score"].clip(upper=weights.max_abs)
    return df[df["score"] > 0].reset_index(drop=True)


def positives(interactions: pd.DataFrame, weights: FeedbackWeights) -> pd.DataFrame:
    """Positive (user, video) pairs with the time of their first positive event."""
    s = event_scores(interactions, weights)
    pos = interactions.loc[s > 0, ["user_id", "video_id", "timestamp"]]
    return pos.drop_duplicates(["user_id", "video_id"], keep="first")


def train_bundle(ds: Dataset, cfg: PipelineConfig | None = None, progress: bool = True,
                 version: str | None = None, init_from: ModelBundle | None = None
                 ) -> ModelBundle:
    """Train every model serving needs. `init_from` warm-starts the two-tower network from
    a previous version (tables whose shape still matches are copied)."""
    cfg = cfg or PipelineConfig()
    t0 = time.perf_counter()
    inter = ds.interactions
    cutoff = float(inter["timestamp"].max()) if len(inter) else time.time()
    videos = ds.videos.reset_index(drop=True)
    encoder = FeatureEncoder.fit(videos, ds.users, ref_ts=cutoff)
    video_rows = videos.to_dict("records")

    fm = build_feedback_matrix(inter, cfg.weights,
                               video_ids=np.array(encoder.video_ids, dtype=object))
    mf = train_mf(fm, cfg.mf, progress=progress)
    pos = positives(inter, cfg.weights)
    # The user vectors are re-solved with recent positives weighted up (recency_boost),
    # the way the trainer folds them in online.
    mf.user_factors = recency_user_factors(mf.video_factors, fm, recency_ranks(fm, pos),
                                           cfg.mf)

    profiles = user_profiles(ds.users)
    user_list = list(profiles)
    user_row = {u: i for i, u in enumerate(user_list)}
    user_cats = encoder.encode_users([profiles[u] for u in user_list])
    pscore = positive_scores(inter, cfg.weights)
    seqs = build_sequences(pos.merge(pscore, on=["user_id", "video_id"], how="inner"),
                           encoder, user_row)
    vt = encoder.encode_videos(video_rows)
    init = init_from.two_tower.state_dict() if init_from is not None else None
    tt, tt_seconds = train_two_tower(encoder, vt, user_cats, seqs, cfg.two_tower, cfg.train,
                                     progress=progress, init_state=init)
    video_vectors = embed_videos(tt, vt)
    content = ContentModel.fit(video_rows)
    content_vectors = content.vectors(video_rows)

    pscore = pscore[pscore["video_id"].isin(encoder.video_index)]
    pw = pscore["score"].to_numpy(np.float64) ** cfg.popularity_power
    popularity = np.bincount(pscore["video_id"].map(encoder.video_index).to_numpy(np.int64),
                             weights=pw, minlength=len(encoder.video_ids))
    known = pscore["user_id"].isin(user_row).to_numpy()
    demo_counts = demographic_counts(
        user_cats, pscore["user_id"][known].map(user_row).to_numpy(np.int64),
        pscore["video_id"][known].map(encoder.video_index).to_numpy(np.int64),
        [encoder.sizes()["user." + n] for n in schema.USER_CAT_FEATURES],
        len(encoder.video_ids), pw[known])

    users = _user_records(inter, pos, profiles)
    manifest: dict[str, Any] = {
        "version": version or datetime.now(UTC).strftime("m%Y%m%d%H%M%S"),
        "created_at": datetime.now(UTC).isoformat(),
        "schema_hash": schema.schema_hash(),
        "data_cutoff": cutoff,
        "dims": {"two_tower": int(video_vectors.shape[1]), "mf": mf.config.factors,
                 "content": int(content_vectors.shape[1])},
        "counts": {"users": len(user_list), "videos": len(encoder.video_ids),
                   "interactions": len(inter), "positives": len(pos)},
        "config": {"weights": asdict(cfg.weights), "mf": asdict(cfg.mf),
                   "two_tower": cfg.two_tower.to_dict(), "train": cfg.train.to_dict(),
                   "demographic": asdict(cfg.demographic)},
        "train_seconds": {"mf": round(mf.train_seconds, 3), "two_tower": round(tt_seconds, 3),
                          "total": round(time.perf_counter() - t0, 3)},
        "metrics": {},
    }
    return ModelBundle(manifest, encoder, content, tt, video_vectors, content_vectors,
                       mf.video_factors, mf.user_factors, mf.user_ids, popularity, users,
                       videos, cfg.ranker, demo_counts)


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


def tune_demographic(ds: Dataset, cfg: PipelineConfig, seed: int = 0) -> FieldFit:
    """The demographic prior's field weights, by 5-fold cross-validation over every
    training user of `ds` (see `fit_field_weights`)."""
    from vidrec.evaluation.splits import relevant_sets

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
    from vidrec.evaluation.splits import cold_start_split, relevant_sets, temporal_split

    t0 = time.perf_counter()
    rest, cold_val, cold_users = cold_start_split(ds.interactions, 0.1, seed)
    fit, warm_val = temporal_split(rest)
    sub = Dataset(ds.videos, ds.users, fit.reset_index(drop=True), ds.root)
    bundle = train_bundle(sub, cfg, progress=progress, version="tune")
    rec = BatchRecommender(bundle)
    best: dict[str, float] = {}
    w = RankerWeights(**asdict(cfg.ranker))
    rel = relevant_sets(warm_val)
    users = sorted(rel)
    boost = cfg.mf.recency_boost
    if users:
        fm = build_feedback_matrix(fit, cfg.weights,
                                   video_ids=np.array(bundle.video_ids, dtype=object))
        ranks = recency_ranks(fm, positives(fit, cfg.weights))
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
    cusers = sorted(crel)
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
    from vidrec.evaluation.metrics import evaluate

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


def _user_records(inter: pd.DataFrame, pos: pd.DataFrame,
                  profiles: dict[str, dict[str, Any]]) -> dict[str, UserRecord]:
    hist = (pos.sort_values("timestamp", kind="stable", ascending=False)
            .groupby("user_id", sort=False)["video_id"].apply(
                lambda s: list(s[: schema.HISTORY_LEN])).to_dict())
    seen = inter.groupby("user_id", sort=False)["video_id"].apply(
        lambda s: list(dict.fromkeys(s))).to_dict()
    out = {}
    for u in set(seen) | set(profiles):
        out[str(u)] = UserRecord(profiles.get(u, {}), hist.get(u, []), seen.get(u, []))
    return out
