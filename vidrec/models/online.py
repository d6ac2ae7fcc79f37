"""Per-request model functions for the serving services, over one loaded ModelBundle.

The batch recommender scores whole user x catalog matrices; serving scores one user
against a few hundred candidates. Both use the same z-normalised blend (RankerWeights):
the catalog mean and standard deviation of u·v are exact from the catalog's mean vector
and covariance (mean = u·μ, var = uᵀΣu), so a candidate's serving score equals its
offline score without scoring the whole catalog. The demographic prior is a sum of a few
table rows per profile, so its catalog z-scores are computed once per user in full.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vidrec.models.bundle import ModelBundle
from vidrec.models.two_tower_task import embed_users, embed_videos, set_cpu_threads


@dataclass
class UserVectors:
    two_tower: np.ndarray
    mf: np.ndarray | None  # None: no MF vector (new user)
    has_history: bool
    # Demographic lift over the whole catalog, z-normalised (None: the model has no prior).
    demo_z: np.ndarray | None = None
    demo_new: float = 0.0  # z of a zero lift: a video added after training


class _Moments:
    def __init__(self, m: np.ndarray) -> None:
        m64 = m.astype(np.float64)
        self.mean = m64.mean(axis=0)
        self.cov = np.cov(m64, rowvar=False) if len(m64) > 1 else np.zeros(
            (m.shape[1], m.shape[1]))

    def z(self, u: np.ndarray, scores: np.ndarray) -> np.ndarray:
        u64 = u.astype(np.float64)
        sd = float(np.sqrt(max(float(u64 @ self.cov @ u64), 1e-18)))
        return (scores - float(u64 @ self.mean)) / sd


class OnlineModel:
    def __init__(self, bundle: ModelBundle) -> None:
        set_cpu_threads()
        self.b = bundle
        self.version = bundle.version
        self.index = {v: i for i, v in enumerate(bundle.video_ids)}
        self.mf_row = {u: i for i, u in enumerate(bundle.mf_user_ids)}
        self._tt_m = _Moments(bundle.video_vectors)
        self._mf_m = _Moments(bundle.mf_video)
        pop = np.log1p(bundle.popularity.astype(np.float64))
        self._pop_mu, self._pop_sd = float(pop.mean()), max(float(pop.std()), 1e-9)
        self.pop_z = (pop - self._pop_mu) / self._pop_sd
        self.videos = {str(r["video_id"]): r for r in bundle.video_rows()}
        reg = float(bundle.manifest["config"]["mf"]["regularization"])
        y = bundle.mf_video.astype(np.float64)
        self.mf_gram = y.T @ y + reg * np.eye(y.shape[1])
        # Videos added after training (VideoUpserted): embedded on arrival.
        self._extra_vec: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()
        self.demo = bundle.demographic_prior()
        order = np.argsort(-bundle.popularity, kind="stable")
        self.popular = [bundle.video_ids[i] for i in order[:500]]

    # --- users ---------------------------------------------------------------------

    def user_vectors(self, user_id: str, profile: Mapping[str, Any], history: Sequence[str],
                     folded_mf: np.ndarray | None = None, demo: bool = True) -> UserVectors:
        """`demo=False` skips the demographic prior (a pass over the catalog) for callers
        that only retrieve, like the candidate stage."""
        cats = self.b.encoder.encode_users([profile])
        tt = embed_users(self.b.two_tower, cats,
                         self.b.encoder.encode_history([list(history)]))[0]
        mf = folded_mf
        if mf is None and (row := self.mf_row.get(user_id)) is not None:
            mf = self.b.mf_user[row]
        demo_z, demo_new = None, 0.0
        if self.demo is not None and demo:
            d = self.demo.scores(cats)[0]
            mu, sd = float(d.mean()), max(float(d.std()), 1e-9)
            demo_z, demo_new = (d - mu) / sd, -mu / sd
        return UserVectors(tt, mf, bool(history), demo_z, demo_new)

    # --- videos --------------------------------------------------------------------

    def add_video(self, record: Mapping[str, Any]) -> np.ndarray:
        """Embed a video that arrived after training (content features only)."""
        vt = self.b.encoder.encode_videos([record], known_ids=False)
        vec = embed_videos(self.b.two_tower, vt)[0]
        with self._lock:
            self._extra_vec[str(record["video_id"])] = vec
            self.videos[str(record["video_id"])] = dict(record)
        return vec

    def video_vector(self, video_id: str) -> np.ndarray | None:
        i = self.index.get(video_id)
        if i is not None:
            return self.b.video_vectors[i]
        return self._extra_vec.get(video_id)

    def content_vector(self, video_id: str) -> np.ndarray | None:
        i = self.index.get(video_id)
        if i is not None:
            return self.b.content_vectors[i]
        rec = self.videos.get(video_id)
        return None if rec is None else self.b.content.vectors([rec])[0]

    # --- second stage ------------------------------------------------------------------

    def score(self, user: UserVectors, video_ids: Sequence[str]) -> np.ndarray:
        """The ranker's blended score of each candidate (same formula as offline).

        Catalog videos are scored with array indexing; videos added after training
        (no MF factors, no popularity or demographic counts) get those terms' zero value.
        """
        w = self.b.ranker
        idx = np.array([self.index.get(v, -1) for v in video_ids], dtype=np.int64)
        known = idx >= 0
        safe = np.where(known, idx, 0)
        vecs = self.b.video_vectors[safe]
        for j in np.flatnonzero(~known):
            extra = self._extra_vec.get(video_ids[int(j)])
            vecs[j] = extra if extra is not None else 0.0
        score = w.tt * self._tt_m.z(user.two_tower, vecs @ user.two_tower)
        if user.mf is not None:
            mf = np.where(known, self.b.mf_video[safe] @ user.mf, 0.0)
            score += w.mf * self._mf_m.z(user.mf, mf)
        new_pop = (0.0 - self._pop_mu) / self._pop_sd
        score += (w.pop if user.has_history else w.cold_pop) * np.where(
            known, self.pop_z[safe], new_pop)
        wd = w.demo if user.has_history else w.cold_demo
        if user.demo_z is not None and wd:
            # A video added after training has no demographic counts: lift 0.
            score += wd * np.where(known, user.demo_z[safe], user.demo_new)
        return score
