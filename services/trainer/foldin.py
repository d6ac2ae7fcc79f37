"""The minutes tier: users with new events get a fresh MF vector (fold-in).

The two-tower user vector needs no such step: the user tower runs at request time over
the Redis history, which the seconds tier already updated. MF user vectors are solved
against the serving model's video factors (one f x f solve each) and stored with that
model version; serving ignores a vector from another version. Recent positives count
more, by the model's MF recency boost (vidrec.models.mf.recency_factor), as the offline
user vectors were solved.
"""

from __future__ import annotations

import logging

import numpy as np

from services.trainer.apply import dirty_key
from vidrec.models.mf import MFConfig, fold_in, recency_factor
from vidrec.models.online import OnlineModel
from vidrec.store.features import FeatureStore

log = logging.getLogger(__name__)


def fold_in_dirty(store: FeatureStore, model: OnlineModel, version: str, max_users: int = 5000,
                  alpha: float = 2.0) -> int:
    """Refresh the MF vectors of up to `max_users` users marked dirty; returns how many."""
    raw: list[bytes | str] = store.r.spop(dirty_key(store), max_users) or []  # type: ignore[assignment]
    users = [u.decode() if isinstance(u, bytes) else str(u) for u in raw]
    if not users:
        return 0
    mf_cfg = MFConfig(**model.b.manifest["config"]["mf"])
    reg = mf_cfg.regularization
    n = 0
    for u in users:
        st = store.user(u)
        pos = [model.index[v] for v in st.history if v in model.index]
        neg = [model.index[v] for v in st.negatives if v in model.index and v not in st.history]
        if not pos and not neg:
            continue
        idx = np.array(pos + neg, dtype=np.int64)
        pref = np.array([1.0] * len(pos) + [0.0] * len(neg))
        # The history is most recent first: position = recency rank, as in training.
        boost = np.r_[recency_factor(np.arange(len(pos)), mf_cfg), np.ones(len(neg))]
        conf = 1.0 + alpha * boost
        vec = fold_in(model.b.mf_video, idx, conf, pref, reg, gram=model.mf_gram)
        store.put_user_vector(u, vec, version)
        n += 1
    log.info("folded in %d users for model %s", n, version)
    return n
