"""The minutes tier: users with new events get a fresh MF vector (fold-in).

The two-tower user vector needs no such step: the user tower runs at request time over
the Redis history, which the seconds tier already updated. An MF user vector is the
user's row of the feedback matrix solved against the serving model's video factors (one
f x f solve), with the same confidences offline training gives it: the row comes from the
user's feedback hash (every event's weight from the event contract, ratings against the
user's mean), liked videos weighted up by recency rank as `recency_user_factors` does. A user
with no new events keeps the vector the model was trained with; the folded one is stored
with the model version, and serving ignores a vector from another version.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

from vidrec.events import FeedbackWeights
from vidrec.models.mf import MFConfig, fold_in, recency_factor
from vidrec.models.online import OnlineModel
from vidrec.store.features import FeatureStore

log = logging.getLogger(__name__)


def user_row(feedback: Mapping[str, tuple[float, float]], index: Mapping[str, int],
             mf_cfg: MFConfig, w: FeedbackWeights) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(video indices, confidences, preferences) of a user's MF row, as offline training
    builds it (FeedbackMatrix, recency ranks of data.feedback.first_liked and
    recency_user_factors): liked pairs ranked by their first event, latest first."""
    vids = [v for v in feedback if v in index]
    score = np.array([feedback[v][0] for v in vids], dtype=np.float64)
    first = np.array([feedback[v][1] for v in vids], dtype=np.float64)
    idx = np.array([index[v] for v in vids], dtype=np.int64)
    pref = (score > 0).astype(np.float64)
    rank = np.full(len(vids), np.inf)
    liked = np.flatnonzero(pref > 0)
    rank[liked[np.argsort(-first[liked], kind="stable")]] = np.arange(len(liked))
    # float32 as the offline matrix stores it, then conf_scale and the recency boost.
    conf = (1.0 + w.alpha * np.abs(score)).astype(np.float32).astype(np.float64)
    conf = 1.0 + mf_cfg.conf_scale * (conf - 1.0)
    boost = np.where(pref > 0, recency_factor(rank, mf_cfg), 1.0)
    return idx, 1.0 + (conf - 1.0) * boost, pref


def fold_in_dirty(store: FeatureStore, model: OnlineModel, version: str,
                  max_users: int = 5000) -> int:
    """Refresh the MF vectors of up to `max_users` users marked dirty; returns how many."""
    from vidrec.serving.metrics import FOLDIN_SECONDS

    with FOLDIN_SECONDS.time():
        return _fold_in(store, model, version, max_users)


def _fold_in(store: FeatureStore, model: OnlineModel, version: str, max_users: int) -> int:
    users = store.pop_dirty_users(max_users)
    if not users:
        return 0
    cfg = model.b.manifest["config"]
    mf_cfg = MFConfig(**cfg["mf"])
    w = FeedbackWeights(**cfg.get("weights", {}))
    n = 0
    for i, u in enumerate(users):
        try:
            idx, conf, pref = user_row(store.user_feedback(u, w), model.index, mf_cfg, w)
            if not len(idx):
                continue
            vec = fold_in(model.b.mf_video, idx, conf, pref, mf_cfg.regularization,
                          gram=model.mf_gram)
            store.put_user_vector(u, vec, version)
        except Exception:
            # Popped users are not lost: the next pass retries them.
            store.mark_dirty(users[i:])
            raise
        n += 1
    log.info("folded in %d users for model %s", n, version)
    return n
