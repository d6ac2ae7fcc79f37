"""The sparse user x video feedback matrix: explicit and implicit events -> preference + confidence.

Every (user, video) pair gets a score, the sum of its events' weights (the event contract,
vidrec/events.py), clipped to [-max_abs, max_abs]. Following Hu, Koren & Volinsky (2008):
preference = 1 if score > 0 else 0, confidence = 1 + alpha * |score|. A negative score is
a confident "not this", which weighted ALS uses as such. Ids are mapped to contiguous
indices (`user_ids[i]` is row i) and back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from vidrec.events import FeedbackWeights, event_weights


@dataclass
class FeedbackMatrix:
    user_ids: np.ndarray
    video_ids: np.ndarray
    score: sp.csr_matrix
    preference: sp.csr_matrix
    confidence: sp.csr_matrix
    user_index: dict[str, int] = field(default_factory=dict)
    video_index: dict[str, int] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.user_ids), len(self.video_ids))


def build_feedback_matrix(
    interactions: pd.DataFrame,
    weights: FeedbackWeights | None = None,
    cutoff: float | None = None,
    user_ids: np.ndarray | None = None,
    video_ids: np.ndarray | None = None,
) -> FeedbackMatrix:
    """Build the matrix from interactions with timestamp <= cutoff (all when None).

    `user_ids` / `video_ids` fix the index order (e.g. the full catalog, so that videos
    with no interactions still get a column); interactions naming other ids are dropped.
    """
    w = weights or FeedbackWeights()
    df = interactions
    if cutoff is not None:
        df = df[df["timestamp"] <= cutoff]
    if user_ids is None:
        user_ids = np.array(sorted(df["user_id"].unique()), dtype=object)
    if video_ids is None:
        video_ids = np.array(sorted(df["video_id"].unique()), dtype=object)
    user_index = {u: i for i, u in enumerate(user_ids)}
    video_index = {v: i for i, v in enumerate(video_ids)}
    rows = df["user_id"].map(user_index)
    cols = df["video_id"].map(video_index)
    keep = rows.notna().to_numpy() & cols.notna().to_numpy()
    s = event_weights(df, w)[keep]
    r = rows.to_numpy()[keep].astype(np.int64)
    c = cols.to_numpy()[keep].astype(np.int64)
    shape = (len(user_ids), len(video_ids))
    # coo -> csr sums duplicate (user, video) entries: all events of a pair add up.
    score = sp.coo_matrix((s, (r, c)), shape=shape).tocsr()
    score.sum_duplicates()
    # Pairs whose events cancel exactly stay as observed entries with score 0.
    score.data = np.clip(score.data, -w.max_abs, w.max_abs)
    pref = score.copy()
    pref.data = (score.data > 0).astype(np.float32)
    conf = score.copy()
    conf.data = (1.0 + w.alpha * np.abs(score.data)).astype(np.float32)
    return FeedbackMatrix(
        user_ids=user_ids,
        video_ids=video_ids,
        score=score.astype(np.float32),
        preference=pref.astype(np.float32),
        confidence=conf,
        user_index=user_index,
        video_index=video_index,
    )


def recency_ranks(fm: FeedbackMatrix, positives: pd.DataFrame) -> np.ndarray:
    """Each stored entry's recency rank among its user's positives, aligned with
    fm.confidence.data: 0 for the latest positive, 1 for the one before, ...; np.inf for
    an entry that is not in `positives` (user_id, video_id, timestamp of the pair's first
    positive event, as the user's history orders them)."""
    pos = positives[positives["user_id"].isin(fm.user_index)
                    & positives["video_id"].isin(fm.video_index)]
    rank = (pos.groupby("user_id", sort=False)["timestamp"]
            .rank(method="first", ascending=False).to_numpy(np.float64))
    r = pos["user_id"].map(fm.user_index).to_numpy(np.int64)
    c = pos["video_id"].map(fm.video_index).to_numpy(np.int64)
    # pandas ranks from 1, so the latest positive is stored too (a sparse 0 is no entry).
    lookup = sp.csr_matrix((rank, (r, c)), shape=fm.shape)
    conf = fm.confidence
    rows = np.repeat(np.arange(conf.shape[0]), np.diff(conf.indptr))
    got = np.asarray(lookup[rows, conf.indices]).ravel() if conf.nnz else np.zeros(0)
    return np.where(got > 0, got - 1.0, np.inf)


def first_liked(interactions: pd.DataFrame, fm: FeedbackMatrix) -> pd.DataFrame:
    """user_id, video_id, timestamp of every liked pair of `fm` (preference 1) with the
    time of the pair's first event (impressions aside), earliest row first among equal
    times: what the MF recency ranks count. The trainer's feedback hash keeps the same
    first time per pair, so the fold-in ranks a user's pairs as training does."""
    df = interactions[interactions["event"] != "impression"]
    df = df.sort_values("timestamp", kind="stable")
    first = df.drop_duplicates(["user_id", "video_id"], keep="first")
    pref = fm.preference.tocoo()
    liked = pd.DataFrame({"user_id": fm.user_ids[pref.row[pref.data > 0]],
                          "video_id": fm.video_ids[pref.col[pref.data > 0]]})
    out = first.merge(liked, on=["user_id", "video_id"], how="inner")
    return out[["user_id", "video_id", "timestamp"]]
