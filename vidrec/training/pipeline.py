"""`vidrec train`: a data directory in, a model directory out (everything serving needs)."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from vidrec import schema
from vidrec.data.dataset import Dataset, user_profiles
from vidrec.data.feedback import build_feedback_matrix, first_liked, recency_ranks
from vidrec.events import FeedbackWeights, Kind, event_kinds, event_weights
from vidrec.models.bundle import ModelBundle, RankerWeights, UserRecord
from vidrec.models.content import ContentModel
from vidrec.models.demographic import (
    DemographicConfig,
    demographic_counts,
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
    s = event_weights(interactions, weights)
    df = pd.DataFrame({"user_id": interactions["user_id"].to_numpy(),
                       "video_id": interactions["video_id"].to_numpy(), "score": s})
    df = df.groupby(["user_id", "video_id"], sort=False, as_index=False)["score"].sum()
    df["score"] = df["score"].clip(upper=weights.max_abs)
    return df[df["score"] > 0].reset_index(drop=True)


def in_time_order(interactions: pd.DataFrame) -> pd.DataFrame:
    """Rows by timestamp, ties in row order: the order the trainer applies events in."""
    return interactions.sort_values("timestamp", kind="stable")


def first_of_kind(interactions: pd.DataFrame, weights: FeedbackWeights, kind: Kind
                  ) -> pd.DataFrame:
    """(user, video) pairs with an event of `kind` (events.event_kinds), with the time of
    the first such event, in time order: a user's history (positives) or negatives."""
    df = in_time_order(interactions)
    sel = df.loc[event_kinds(df, weights) == kind.value, ["user_id", "video_id", "timestamp"]]
    return sel.drop_duplicates(["user_id", "video_id"], keep="first")


def positives(interactions: pd.DataFrame, weights: FeedbackWeights) -> pd.DataFrame:
    """Positive (user, video) pairs with the time of their first positive event."""
    return first_of_kind(interactions, weights, Kind.POSITIVE)


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
    mf.user_factors = recency_user_factors(mf.video_factors, fm,
                                           recency_ranks(fm, first_liked(inter, fm)),
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

    users = user_records(inter, cfg.weights, profiles)
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


def user_records(inter: pd.DataFrame, w: FeedbackWeights,
                 profiles: dict[str, dict[str, Any]]) -> dict[str, UserRecord]:
    """Per training user what a publish seeds into Redis: the same history, negatives and
    feedback the trainer's apply script would hold after applying `inter` in time order
    (tests/test_event_contract.py checks it)."""
    def latest_first(pairs: pd.DataFrame, cap: int) -> dict[str, list[str]]:
        # Reversed, then a stable sort: among equal times the later row comes first, as
        # LPUSH in row order leaves them.
        rev = pairs.iloc[::-1].sort_values("timestamp", kind="stable", ascending=False)
        return rev.groupby("user_id", sort=False)["video_id"].apply(
            lambda s: list(s[:cap])).to_dict()

    hist = latest_first(first_of_kind(inter, w, Kind.POSITIVE), schema.HISTORY_LEN)
    negs = latest_first(first_of_kind(inter, w, Kind.NEGATIVE), schema.NEGATIVES_LEN)
    seen = inter.groupby("user_id", sort=False)["video_id"].apply(
        lambda s: list(dict.fromkeys(s))).to_dict()
    fb, rsum = _feedback(inter, w)
    out = {}
    for u in set(seen) | set(profiles):
        rs, rn = rsum.get(u, (0.0, 0.0))
        out[str(u)] = UserRecord(profiles.get(u, {}), hist.get(u, []), seen.get(u, []),
                                 negs.get(u, []), fb.get(u, {}), rs, rn)
    return out


def _feedback(inter: pd.DataFrame, w: FeedbackWeights
              ) -> tuple[dict[str, dict[str, list[float]]], dict[str, tuple[float, float]]]:
    """Per user: video -> [summed non-rating weights, rating sum, rating count, time of
    the first event] over every event but impressions; and the user's (rating sum,
    rating count)."""
    df = inter[inter["event"] != "impression"]
    rating = (df["event"] == "rating").to_numpy()
    val = df["value"].to_numpy(np.float64)
    base = np.where(rating, 0.0, event_weights(df, w))
    parts = pd.DataFrame({"user_id": df["user_id"].to_numpy(),
                          "video_id": df["video_id"].to_numpy(), "s": base,
                          "r": np.where(rating, val, 0.0), "n": rating.astype(np.float64),
                          "t": df["timestamp"].to_numpy(np.float64)})
    g = parts.groupby(["user_id", "video_id"], sort=False).agg(
        s=("s", "sum"), r=("r", "sum"), n=("n", "sum"), t=("t", "min"))
    fb: dict[str, dict[str, list[float]]] = {}
    for (u, v), s_, r_, n_, t_ in zip(g.index, g["s"], g["r"], g["n"], g["t"], strict=True):
        fb.setdefault(str(u), {})[str(v)] = [float(s_), float(r_), float(n_), float(t_)]
    ru = parts[rating].groupby("user_id", sort=False)[["r", "n"]].sum()
    rsum = {str(u): (float(r_), float(n_)) for u, r_, n_ in zip(ru.index, ru["r"], ru["n"],
                                                                strict=True)}
    return fb, rsum
