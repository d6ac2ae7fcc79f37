"""Candidate sources and their merge; no gRPC here.

Sources, in merge priority: two-tower ANN (Qdrant), MF nearest videos, content-similar to
the last watches, fresh uploads, popular. A video found by several sources keeps the
first; every candidate keeps the source that produced it (the reranker's reasons use it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vidrec.models.bundle import ModelBundle
from vidrec.models.mix import DEFAULT_MIX, Mix
from vidrec.models.online import OnlineModel, UserVectors
from vidrec.serving.convert import passes
from vidrec.serving.publish import collection_name
from vidrec.store.index import CONTENT, MF, TT, SearchFilter, VectorIndex

log = logging.getLogger(__name__)


@dataclass
class Cand:
    video_id: str
    source: str
    score: float
    anchor: str = ""


class CandidateModel:
    """One model version as the candidate stage needs it: model + its index collection."""

    def __init__(self, version: str, path: Path, index: VectorIndex, ann_ef: int = 0) -> None:
        self.version = version
        self.ann_ef = ann_ef  # two-tower search breadth (0: the index's default)
        self.online = OnlineModel(ModelBundle.load(path))
        self.online.version = version
        self.index = index
        self.collection = collection_name(version)
        self.index.remember_ids(self.online.b.video_ids)
        # Warm up: open the shard and touch the HNSW graph before taking traffic.
        self.index.search(self.collection, self.online.b.video_vectors[0], 10)

    def close(self) -> None:
        """Release this version's index collection (the holder evicted the version)."""
        release = getattr(self.index, "release", None)
        if release is not None:
            release(self.collection)

    def add_video(self, record: dict) -> None:
        from vidrec.serving.publish import video_payload

        vid = str(record["video_id"])
        if video_payload(record)["hidden"]:
            self.index.delete(self.collection, [vid])  # hidden videos leave the index
            self.online.videos[vid] = dict(record)
            return
        vec = self.online.add_video(record)
        content = self.online.content_vector(vid)
        assert content is not None  # add_video above registered the record
        mf = np.zeros(self.online.b.mf_video.shape[1], dtype=np.float32)  # no MF history yet
        self.index.upsert(self.collection, [vid],
                          {TT: vec[None, :], MF: mf[None, :], CONTENT: content[None, :]},
                          [video_payload(record)])


# ANN results fetched per query at most: seen videos are dropped after the search.
MAX_FETCH = 1000
# Side sources need a handful of good neighbours, not a near-exact top list.
SIDE_EF = 64


def generate(cm: CandidateModel, user_id: str, uv: UserVectors, history: list[str],
             seen: set[str], n: int, flt: SearchFilter, fresh_ids: list[str], arm: str,
             mix: Mix = DEFAULT_MIX, popular_ids: list[str] | None = None) -> list[Cand]:
    """Up to n candidates: each side source gets its quota (at most half of n together),
    the two-tower ANN fills the rest. Two-tower hits come first, so that with the ranker
    down the candidate order is still the best guess. `popular_ids`: what is trending now
    (None: the model's all-time popular videos)."""
    o = cm.online
    mf_only = arm == "mf_only" and uv.mf is not None
    side: list[Cand] = []
    taken = set(seen)

    def add(vid: str, source: str, score: float, anchor: str = "") -> None:
        if vid not in taken:
            taken.add(vid)
            side.append(Cand(vid, source, score, anchor))

    n_mf, n_content = mix.quota(mix.mf, n), mix.quota(mix.content_per_anchor, n)
    n_fresh, n_popular = mix.quota(mix.fresh, n), mix.quota(mix.popular, n)
    if uv.mf is not None:
        want = n if mf_only else n_mf
        limit = min(want + len(seen), MAX_FETCH)
        for vid, sc in cm.index.search(cm.collection, uv.mf, limit, flt, using=MF, ef=SIDE_EF):
            add(vid, "mf", sc)
    if mf_only:
        return side[:n]
    side = side[:n_mf]
    for anchor in history[: mix.content_anchors]:
        cv = o.content_vector(anchor)
        if cv is None:
            continue
        limit = min(n_content + len(seen) + 1, MAX_FETCH)
        hits = cm.index.search(cm.collection, cv, limit, flt, using=CONTENT, ef=SIDE_EF)
        got = 0
        for vid, sc in hits:
            if vid != anchor and vid not in taken and got < n_content:
                add(vid, "content_similar", sc, anchor)
                got += 1
    for vid in fresh_ids[:n_fresh]:
        if passes(flt, o.videos.get(vid)):
            add(vid, "fresh", 0.0)
    got = 0
    popular = o.popular if popular_ids is None else popular_ids
    for rank, vid in enumerate(popular):  # skipping what the user saw or MF/content took
        if got == n_popular:
            break
        if vid not in taken and passes(flt, o.videos.get(vid)):
            add(vid, "popular", float(-rank))
            got += 1
    side = side[: n // 2]
    taken = set(seen) | {c.video_id for c in side}
    ann: list[Cand] = []
    want = n - len(side)
    # Fetch for seen + a margin for side-source overlap, not for every taken id: the
    # search cost grows with the limit (hnsw_ef >= limit).
    hits = cm.index.search(cm.collection, uv.two_tower, min(want + len(seen) + 50, MAX_FETCH),
                           flt, ef=cm.ann_ef or None)
    for vid, sc in hits:
        if vid not in taken:
            taken.add(vid)
            ann.append(Cand(vid, "two_tower", sc))
            if len(ann) == want:
                break
    return ann + side


def user_mf_vector(cm: CandidateModel, user_id: str, vec: list[float], vec_version: str
                   ) -> np.ndarray | None:
    """The trainer's folded-in vector if it belongs to this model version."""
    if vec and vec_version == cm.version:
        return np.asarray(vec, dtype=np.float32)
    return None
