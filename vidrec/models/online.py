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
from vidrec.models.two_tower_task import embed_videos, set_cpu_threads

DEMO_CACHE = 100_000  # profiles whose demographic moments are kept (16 bytes each + key)


@dataclass
class UserVectors:
    two_tower: np.ndarray
    mf: np.ndarray | None  # None: no MF vector (new user)
    has_history: bool
    # Demographic prior: the encoded profile and the catalog mean and standard deviation
    # of its summed lifts (None: the model has no prior, or the caller skipped it).
    demo_cats: np.ndarray | None = None
    demo_mu: float = 0.0
    demo_sd: float = 1.0


class _Moments:
    def __init__(self, m: np.ndarray) -> None:
        m64 = m.astype(np.float64)
        self.mean = m64.mean(axis=0)
        self.cov = np.cov(m64, rowvar=False, bias=True) if len(m64) > 1 else np.zeros(
            (m.shape[1], m.shape[1]))

    def z(self, u: np.ndarray, scores: np.ndarray) -> np.ndarray:
        u64 = u.astype(np.float64)
        sd = float(np.sqrt(max(float(u64 @ self.cov @ u64), 1e-18)))
        return (scores - float(u64 @ self.mean)) / sd


class NumpyUserTower:
    """The two-tower's user tower for one user at a time, in numpy.

    Same arithmetic as TwoTower.user_embed (a parity test holds them together), without
    torch's per-call overhead, on the candidate stage's critical path: 28 us per user
    against 172 us through torch (100k-video model), most of that torch dispatch.
    """

    def __init__(self, model: Any) -> None:
        def arr(t: Any) -> np.ndarray:
            return t.detach().cpu().numpy().astype(np.float32)

        self.cats = [arr(e.weight) for e in model.user_cats]
        self.hist = arr(model.hist.weight)
        first, last = model.user_mlp[0], model.user_mlp[2]
        self.w1, self.b1 = arr(first.weight).T.copy(), arr(first.bias)
        self.w2, self.b2 = arr(last.weight).T.copy(), arr(last.bias)
        self.recent = int(model.cfg.recent)

    def __call__(self, cats: np.ndarray, hist: np.ndarray) -> np.ndarray:
        """cats (n_user_cats,) and hist (HISTORY_LEN,) as FeatureEncoder encodes one user."""
        parts = [t[c] for t, c in zip(self.cats, cats, strict=True)]
        ids = hist[hist > 0]
        h = self.hist[ids]
        pooled = h.sum(0) / max(len(ids), 1)
        recent_ids = hist[: self.recent]
        rh = self.hist[recent_ids[recent_ids > 0]]
        recent = rh.sum(0) / max(len(rh), 1)
        parts += [pooled, recent, np.array([np.log1p(len(ids)) / 5.0], dtype=np.float32)]
        x = np.concatenate(parts)
        y = np.maximum(x @ self.w1 + self.b1, 0.0) @ self.w2 + self.b2
        return (y / max(float(np.linalg.norm(y)), 1e-12)).astype(np.float32)


class OnlineModel:
    def __init__(self, bundle: ModelBundle) -> None:
        set_cpu_threads()
        self.b = bundle
        self.user_tower = NumpyUserTower(bundle.two_tower)
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
        # Catalog moments of the demographic lift per encoded profile. Profiles repeat
        # (a few feature values each), so a request scores only its candidates' lifts.
        self._demo_moments: dict[bytes, tuple[float, float]] = {}
        order = np.argsort(-bundle.popularity, kind="stable")
        self.popular = [bundle.video_ids[i] for i in order[:500]]

    # --- users ---------------------------------------------------------------------

    def user_vectors(self, user_id: str, profile: Mapping[str, Any], history: Sequence[str],
                     folded_mf: np.ndarray | None = None, demo: bool = True,
                     two_tower: np.ndarray | None = None) -> UserVectors:
        """`demo=False` skips the demographic prior (a pass over the catalog) for callers
        that only retrieve, like the candidate stage. `two_tower`: this user's two-tower
        vector already computed by this model version (the ranker gets it from the
        candidate stage), so the user tower does not run twice per request."""
        cats = self.b.encoder.encode_users([profile])
        if two_tower is not None:
            tt = two_tower
        else:
            tt = self.user_tower(cats[0], self.b.encoder.encode_history([list(history)])[0])
        mf = folded_mf
        if mf is None and (row := self.mf_row.get(user_id)) is not None:
            mf = self.b.mf_user[row]
        if self.demo is None or not demo:
            return UserVectors(tt, mf, bool(history))
        key = cats.tobytes()
        moments = self._demo_moments.get(key)
        if moments is None:
            d = self.demo.scores(cats)[0]
            moments = float(d.mean()), max(float(d.std()), 1e-9)
            if len(self._demo_moments) >= DEMO_CACHE:
                self._demo_moments.clear()
            self._demo_moments[key] = moments
        return UserVectors(tt, mf, bool(history), cats[0], *moments)

    # --- videos --------------------------------------------------------------------

    def add_video(self, record: Mapping[str, Any]) -> np.ndarray:
        """Embed a video that arrived after training (content features only)."""
        vt = self.b.encoder.encode_videos([record], known_ids=False)
        vec = embed_videos(self.b.two_tower, vt)[0]
        with self._lock:
            self._extra_vec[str(record["video_id"])] = vec
            self.videos[str(record["video_id"])] = dict(record)
        return vec

    def knows(self, video_id: str) -> bool:
        """A catalog video or one added after training (it has a two-tower vector)."""
        return video_id in self.index or video_id in self._extra_vec

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

    def content_matrix(self, video_ids: Sequence[str]) -> np.ndarray:
        """Content vectors of `video_ids` as rows (zeros for an unknown id)."""
        idx = np.array([self.index.get(v, -1) for v in video_ids], dtype=np.int64)
        out = self.b.content_vectors[np.maximum(idx, 0)]
        for j in np.flatnonzero(idx < 0):
            v = self.content_vector(video_ids[int(j)])
            out[j] = 0.0 if v is None else v
        return out

    # --- second stage ------------------------------------------------------------------

    def score(self, user: UserVectors, video_ids: Sequence[str]) -> np.ndarray:
        """The ranker's blended score of each candidate (same formula as offline).

        Catalog videos are scored with array indexing; videos added after training
        (no MF factors, no popularity or demographic counts) get those terms' zero value.
        """
        terms = self.score_terms(user, video_ids)
        return sum(terms.values(), start=np.zeros(len(video_ids)))

    def score_terms(self, user: UserVectors, video_ids: Sequence[str]
                    ) -> dict[str, np.ndarray]:
        """The blended score's terms (weight x standardised value), by name: what an
        explanation shows, and what `score` adds up."""
        w = self.b.ranker
        idx = np.array([self.index.get(v, -1) for v in video_ids], dtype=np.int64)
        known = idx >= 0
        safe = np.where(known, idx, 0)
        vecs = self.b.video_vectors[safe]
        for j in np.flatnonzero(~known):
            extra = self._extra_vec.get(video_ids[int(j)])
            vecs[j] = extra if extra is not None else 0.0
        terms = {"two_tower": w.tt * self._tt_m.z(user.two_tower, vecs @ user.two_tower)}
        if user.mf is not None:
            mf = np.where(known, self.b.mf_video[safe] @ user.mf, 0.0)
            terms["mf"] = w.mf * self._mf_m.z(user.mf, mf)
        new_pop = (0.0 - self._pop_mu) / self._pop_sd
        terms["popularity"] = (w.pop if user.has_history else w.cold_pop) * np.where(
            known, self.pop_z[safe], new_pop)
        wd = w.demo if user.has_history else w.cold_demo
        if self.demo is not None and user.demo_cats is not None and wd:
            # A video added after training has no demographic counts: lift 0.
            lift = np.where(known, self.demo.scores_at(user.demo_cats, safe), 0.0)
            terms["demographic"] = wd * (lift - user.demo_mu) / user.demo_sd
        return terms
