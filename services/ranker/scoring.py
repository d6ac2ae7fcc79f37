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
    """A chosen candidate: its position in the request, blended score, and the watched
    video it resembles ("" if none or the caller's anchor stands)."""

    position: int
    score: float
    anchor: str
    terms: dict[str, float] | None = None  # the score's terms, when asked to explain


def score_candidates(model: OnlineModel, store: FeatureStore | None, user_id: str,
                     profile: Mapping[str, Any], history: Sequence[str],
                     mf_vector: np.ndarray | None, video_ids: Sequence[str],
                     is_fresh: np.ndarray, top_m: int,
                     tt_vector: np.ndarray | None = None, explain: bool = False
                     ) -> list[Scored]:
    """The top_m of `video_ids` by blended score, then up to KEEP_FRESH new uploads.

    `is_fresh[i]`: candidate i came from the fresh-uploads source. `tt_vector`: the user's
    two-tower vector from the candidate stage (same model version), or None to compute it
    here. Candidates the model cannot embed (unknown even to Redis) are dropped."""
    known = np.fromiter((model.knows(v) for v in video_ids), dtype=bool, count=len(video_ids))
    if not known.all() and store is not None:
        for rec in store.videos([v for v, k in zip(video_ids, known, strict=True)
                                 if not k]).values():
            model.add_video(rec)
        known = np.fromiter((model.knows(v) for v in video_ids), dtype=bool,
                            count=len(video_ids))
    keep = np.flatnonzero(known)
    if not len(keep):
        return []
    ids = [video_ids[int(i)] for i in keep] if len(keep) < len(video_ids) else list(video_ids)
    uv = model.user_vectors(user_id, profile, history, mf_vector, two_tower=tt_vector)
    terms = model.score_terms(uv, ids) if explain else None
    s = model.score(uv, ids) if terms is None else sum(terms.values(),
                                                         start=np.zeros(len(ids)))
    ranked = np.argsort(-s, kind="stable")
    order = ranked[:top_m]
    # New uploads (fresh source, or unknown to the trained catalog) rarely out-score
    # videos with history; pass a few through so the reranker's new-video slot can show them.
    rest = ranked[top_m:]
    if len(rest):
        new = np.asarray(is_fresh, dtype=bool)[keep][rest]
        new |= np.fromiter((ids[i] not in model.index for i in rest), dtype=bool,
                           count=len(rest))
        order = np.concatenate([order, rest[new][:KEEP_FRESH]])
    anchors = _anchors(model, history, [ids[i] for i in order])
    return [Scored(int(keep[i]), float(s[i]), anchors[j],
                   None if terms is None else {k: float(t[i]) for k, t in terms.items()})
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


