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
                     cands: Sequence[tuple[str, str, str]], top_m: int,
                     tt_vector: np.ndarray | None = None) -> list[Scored]:
    """cands: (video_id, source, anchor). Returns the top_m by blended score.

    `tt_vector`: the user's two-tower vector from the candidate stage (same model version),
    or None to compute it here."""
    unknown = [v for v, _, _ in cands if not model.knows(v)]
    if unknown and store is not None:
        for rec in store.videos(unknown).values():
            model.add_video(rec)
        known = [c for c in cands if model.knows(c[0])]
    else:
        gone = set(unknown)
        known = [c for c in cands if c[0] not in gone]
    if not known:
        return []
    uv = model.user_vectors(user_id, profile, history, mf_vector, two_tower=tt_vector)
    s = model.score(uv, [v for v, _, _ in known])
    order = list(np.argsort(-s, kind="stable")[:top_m])
    # New uploads (fresh source, or unknown to the trained catalog) rarely out-score
    # videos with history; pass a few through so the reranker's new-video slot can show them.
    chosen = set(order)
    fresh = [i for i in np.argsort(-s, kind="stable")
             if (known[i][1] == "fresh" or known[i][0] not in model.index)
             and i not in chosen][:KEEP_FRESH]
    order += fresh
    anchors = _anchors(model, history, [known[i][0] for i in order])
    return [Scored(known[i][0], float(s[i]), known[i][1], known[i][2] or anchors[j])
            for j, i in enumerate(order)]


# Content cosine at which "because you watched X" is honest: on the demo catalog 0.3 means
# sharing category and tags (random pairs are ~0.0-0.1).
ANCHOR_MIN_SIMILARITY = 0.3


def _anchors(model: OnlineModel, history: Sequence[str], video_ids: list[str]) -> list[str]:
    """For each video, the watched video it is most like by content (cosine of content
    vectors >= ANCHOR_MIN_SIMILARITY), so the reason can say "because you watched X";
    "" where nothing in the history is close."""
    hist = [(h, v) for h in history[:20] if (v := model.content_vector(h)) is not None]
    if not hist or not video_ids:
        return [""] * len(video_ids)
    hm = np.stack([v for _, v in hist])
    sim = model.content_matrix(video_ids) @ hm.T
    best = sim.argmax(axis=1)
    return [hist[b][0] if sim[i, b] >= ANCHOR_MIN_SIMILARITY else ""
            for i, b in enumerate(best)]


