"""Second-stage scoring; no gRPC here.

Candidates the model has never seen (uploaded after training) are embedded from their
features in Redis on first sight and cached in the model (OnlineModel.add_video).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vidrec.models.online import OnlineModel
from vidrec.store.features import FeatureStore

log = logging.getLogger(__name__)


KEEP_FRESH = 5


@dataclass
class Scored:
    video_id: str
    score: float
    source: str
    anchor: str


def score_candidates(model: OnlineModel, store: FeatureStore | None, user_id: str,
                     profile: Mapping[str, Any], history: Sequence[str],
                     mf_vector: np.ndarray | None,
                     cands: Sequence[tuple[str, str, str]], top_m: int) -> list[Scored]:
    """cands: (video_id, source, anchor). Returns the top_m by blended score."""
    unknown = [v for v, _, _ in cands if model.video_vector(v) is None]
    if unknown and store is not None:
        for rec in store.videos(unknown).values():
            model.add_video(rec)
    known = [c for c in cands if model.video_vector(c[0]) is not None]
    if not known:
        return []
    uv = model.user_vectors(user_id, profile, history, mf_vector)
    s = model.score(uv, [v for v, _, _ in known])
    order = list(np.argsort(-s, kind="stable")[:top_m])
    # New uploads (fresh source, or unknown to the trained catalog) rarely out-score
    # videos with history; pass a few through so the reranker's new-video slot can show them.
    chosen = set(order)
    fresh = [i for i in np.argsort(-s, kind="stable")
             if (known[i][1] == "fresh" or known[i][0] not in model.index)
             and i not in chosen][:KEEP_FRESH]
    order += fresh
    return [Scored(known[i][0], float(s[i]), known[i][1], known[i][2]) for i in order]
