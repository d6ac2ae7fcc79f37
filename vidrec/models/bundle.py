"""A trained model set on disk, and the batch recommender built on it.

Layout of a model directory (loadable by serving without any training code path):

    manifest.json   version, created_at, schema hash, dimensions, metrics, data cut-off,
                    configs, ranker weights
    vocab.json      FeatureEncoder (vocabularies, catalog order)
    content.json    ContentModel (IDF weights; the projection is re-derived from its seed)
    two_tower.pt    TwoTower state_dict + config + table sizes
    arrays.npz      video/content vectors, MF factors, popularity (catalog order)
    users.jsonl     per training user: profile, recent positives (history), seen videos
    videos.csv      the catalog the model was trained with
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from vidrec import schema
from vidrec.models.content import ContentModel
from vidrec.models.demographic import DemographicConfig, DemographicPrior, zrows
from vidrec.models.features import FeatureEncoder
from vidrec.models.mix import DEFAULT_MIX, N_CANDIDATES, Mix
from vidrec.models.two_tower import TwoTower, TwoTowerConfig

MANIFEST = "manifest.json"
# Users x catalog cells scored at once by the batch recommender (see chunk_size).
CHUNK_CELLS = 1 << 24


@dataclass
class RankerWeights:
    """Second-stage score = tt * z(two-tower) + mf * z(MF) + pop * z(log popularity)
    + demo * z(demographic lift).

    z is per user over the catalog. A user with no history (cold start) gets `cold_pop`
    and `cold_demo` instead of `pop` and `demo`: the log-Q corrected two-tower deliberately
    leaves the popularity prior out of its scores, and with nothing but a profile to go on
    that prior matters most. The demographic lift (`DemographicPrior`, models/demographic.py)
    is how much more popular a video is among users sharing the profile's feature values
    than overall. All weights are tuned on a validation split carved from training data.
    """

    # Defaults: what tune_ranker picked on MovieLens-100K validation (a sane untuned start).
    tt: float = 1.0
    mf: float = 0.25
    pop: float = 0.15
    cold_pop: float = 8.0
    demo: float = 0.3
    cold_demo: float = 8.0

    def to_dict(self) -> dict[str, float]:
        return {"tt": self.tt, "mf": self.mf, "pop": self.pop, "cold_pop": self.cold_pop,
                "demo": self.demo, "cold_demo": self.cold_demo}


@dataclass
class UserRecord:
    profile: dict[str, Any]
    history: list[str]  # positives, most recent first
    seen: list[str]  # every video interacted with in training
    negatives: list[str] = field(default_factory=list)  # "not this", most recent first
    # The user's MF row as the trainer's feedback hash holds it (events.pair_score):
    # video -> [summed non-rating weights, rating sum, rating count, first event time];
    # the user's rating sum and count.
    feedback: dict[str, list[float]] = field(default_factory=dict)
    rating_sum: float = 0.0
    rating_n: float = 0.0


@dataclass
class ModelBundle:
    manifest: dict[str, Any]
    encoder: FeatureEncoder
    content: ContentModel
    two_tower: TwoTower
    video_vectors: np.ndarray  # two-tower, (n_videos, d), L2-normalised
    content_vectors: np.ndarray  # (n_videos, CONTENT_DIM)
    mf_video: np.ndarray  # (n_videos, f); zero rows for videos without interactions
    mf_user: np.ndarray  # (n_mf_users, f)
    mf_user_ids: np.ndarray
    popularity: np.ndarray  # per video: summed positive feedback in training (pipeline)
    users: dict[str, UserRecord]
    videos: pd.DataFrame
    ranker: RankerWeights = field(default_factory=RankerWeights)
    # Positives per (user feature value, video): rows grouped by schema.USER_CAT_FEATURES,
    # each group encoder.sizes()["user.<name>"] rows long. None: no demographic prior.
    demo_counts: np.ndarray | None = None

    def demographic_prior(self) -> DemographicPrior | None:
        if self.demo_counts is None:
            return None
        sizes = [self.encoder.sizes()["user." + n] for n in schema.USER_CAT_FEATURES]
        cfg = self.demographic_config()
        return DemographicPrior(self.demo_counts, sizes, cfg.smoothing,
                                cfg.weights_for(schema.USER_CAT_FEATURES))

    def demographic_config(self) -> DemographicConfig:
        """The prior's smoothing and field weights (a manifest from before they were tuned:
        the defaults, every field at weight 1)."""
        d = self.manifest.get("config", {}).get("demographic", {})
        return DemographicConfig(float(d.get("smoothing", DemographicConfig.smoothing)),
                                 {str(k): float(v) for k, v in
                                  d.get("field_weights", {}).items()})

    @property
    def version(self) -> str:
        return str(self.manifest.get("version", "unversioned"))

    @property
    def video_ids(self) -> list[str]:
        return self.encoder.video_ids

    def save(self, out: Path) -> None:
        """Write atomically: a temp dir next to `out`, renamed into place at the end."""
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        self.encoder.save(tmp / "vocab.json")
        (tmp / "content.json").write_text(json.dumps(self.content.to_json()))
        torch.save({"state_dict": self.two_tower.state_dict(),
                    "config": self.two_tower.cfg.to_dict(),
                    "sizes": self.two_tower.sizes}, tmp / "two_tower.pt")
        arrays: dict[str, np.ndarray] = {
            "video_vectors": self.video_vectors, "content_vectors": self.content_vectors,
            "mf_video": self.mf_video, "mf_user": self.mf_user,
            "mf_user_ids": self.mf_user_ids.astype(str), "popularity": self.popularity}
        if self.demo_counts is not None:
            arrays["demo_counts"] = self.demo_counts
        np.savez(tmp / "arrays.npz", **arrays)  # type: ignore[arg-type]
        with (tmp / "users.jsonl").open("w") as f:
            for uid, rec in self.users.items():
                f.write(json.dumps({"user_id": uid, "profile": rec.profile,
                                    "history": rec.history, "seen": rec.seen,
                                    "negatives": rec.negatives, "feedback": rec.feedback,
                                    "rating_sum": rec.rating_sum,
                                    "rating_n": rec.rating_n}) + "\n")
        self.videos.to_csv(tmp / "videos.csv", index=False)
        manifest = dict(self.manifest)
        manifest["ranker"] = self.ranker.to_dict()
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
        if out.exists():
            old = out.with_name(f".{out.name}.old.{time.time_ns()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)

    @classmethod
    def load(cls, path: Path) -> ModelBundle:
        path = Path(path)
        if not (path / MANIFEST).exists():
            raise FileNotFoundError(f"{path}: not a model directory (no {MANIFEST})")
        manifest = json.loads((path / MANIFEST).read_text())
        if manifest.get("schema_hash") != schema.schema_hash():
            raise ValueError(f"{path}: trained with feature schema {manifest.get('schema_hash')},"
                             f" this code has {schema.schema_hash()}; retrain")
        encoder = FeatureEncoder.load(path / "vocab.json")
        content = ContentModel.from_json(json.loads((path / "content.json").read_text()))
        blob = torch.load(path / "two_tower.pt", map_location="cpu", weights_only=True)
        tt = TwoTower(blob["sizes"], TwoTowerConfig(**blob["config"]))
        tt.load_state_dict(blob["state_dict"])
        tt.eval()
        arr = np.load(path / "arrays.npz", allow_pickle=False)
        users = {}
        with (path / "users.jsonl").open() as f:
            for line in f:
                d = json.loads(line)
                users[d["user_id"]] = UserRecord(
                    d["profile"], d["history"], d["seen"], d.get("negatives", []),
                    d.get("feedback", {}), d.get("rating_sum", 0.0), d.get("rating_n", 0.0))
        videos = pd.read_csv(path / "videos.csv", dtype=str, keep_default_na=False)
        return cls(manifest, encoder, content, tt, arr["video_vectors"],
                   arr["content_vectors"], arr["mf_video"], arr["mf_user"],
                   arr["mf_user_ids"].astype(object), arr["popularity"], users, videos,
                   RankerWeights(**manifest.get("ranker", {})),
                   arr["demo_counts"] if "demo_counts" in arr.files else None)

    def video_rows(self) -> list[dict[str, Any]]:
        return self.videos.to_dict("records")


@dataclass
class Components:
    """Per-user score terms over the catalog (rows: users, columns: videos)."""

    tt: np.ndarray  # two-tower dot products
    tt_z: np.ndarray  # ... z-normalised per row
    mf: np.ndarray  # MF predictions (0 rows for users MF never saw)
    mf_z: np.ndarray
    has_mf: np.ndarray  # (n,)
    no_hist: np.ndarray  # (n, 1): cold-start users (their own blend weights)
    demo_z: np.ndarray | None  # demographic lift, z-normalised (None: no prior)
    cand: np.ndarray  # bool: in the CF candidate set (hybrid)
    seen: np.ndarray  # bool: interacted with in training (never returned)
    # Each user's candidates as video indices (ascending, -1 padded): the hybrid blends
    # only these, 200 per user instead of the whole catalog.
    cand_idx: np.ndarray
    _at_cand: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def at_cand(self, name: str, m: np.ndarray) -> np.ndarray:
        """Matrix `m` (users x catalog) at each user's candidates, gathered once."""
        if name not in self._at_cand:
            self._at_cand[name] = np.take_along_axis(m, np.maximum(self.cand_idx, 0), 1)
        return self._at_cand[name]


def candidate_index(cand: np.ndarray) -> np.ndarray:
    """Boolean users x catalog -> (users, max candidates) video indices, -1 padded."""
    rows, cols = np.nonzero(cand)
    counts = cand.sum(axis=1)
    out = np.full((cand.shape[0], int(counts.max(initial=0))), -1, dtype=np.int64)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    out[rows, np.arange(len(rows)) - starts[rows]] = cols
    return out


class BatchRecommender:
    """Vectorised offline mirror of the serving funnel (CF candidates -> scoring).

    modes: "hybrid" (the candidate stage's mix of MF, content, popular and two-tower
    candidates, then the blended second-stage score), "mf", "two_tower", "popularity".
    """

    def __init__(self, bundle: ModelBundle, n_candidates: int = N_CANDIDATES,
                 mix: Mix = DEFAULT_MIX, arm: str = "hybrid") -> None:
        self.b = bundle
        self.n_candidates = n_candidates
        self.mix = mix
        # "mf_only": the experiment arm whose candidates are MF's nearest only (for users
        # MF knows; services/candidate/sources.generate), so offline can predict the A/B.
        self.arm = arm
        self.mf_row = {u: i for i, u in enumerate(bundle.mf_user_ids)}
        self.vid = {v: i for i, v in enumerate(bundle.video_ids)}
        self.video_array = np.array(bundle.video_ids, dtype=object)
        pop = np.log1p(bundle.popularity.astype(np.float64))
        self.pop_z = (pop - pop.mean()) / max(pop.std(), 1e-9)
        self.demo = bundle.demographic_prior()

    def user_tower(self, profiles: Sequence[Mapping[str, Any]],
                   histories: Sequence[Sequence[str]]) -> np.ndarray:
        from vidrec.models.two_tower_task import embed_users

        return embed_users(self.b.two_tower, self.b.encoder.encode_users(profiles),
                           self.b.encoder.encode_history(histories))

    def chunk_size(self) -> int:
        """Users scored together: every score term is a users x catalog matrix, so a chunk
        is sized to the catalog (~128 MB per float64 term). A fixed 1024 users took 6 GB
        of memory on a 100k-video catalog."""
        return max(1, min(1024, CHUNK_CELLS // max(1, len(self.b.video_ids))))

    def recommend(self, user_ids: Sequence[str], k: int, mode: str = "hybrid",
                  profiles: Sequence[Mapping[str, Any]] | None = None,
                  weights: RankerWeights | None = None, chunk: int | None = None
                  ) -> list[list[str]]:
        """Top-k per user, never a video the user interacted with in training.

        Users not in the training data are cold-start users: `profiles[i]` describes them.
        """
        chunk = chunk or self.chunk_size()
        out: list[list[str]] = []
        for s in range(0, len(user_ids), chunk):
            ids = list(user_ids[s: s + chunk])
            profs = list(profiles[s: s + chunk]) if profiles is not None else [{}] * len(ids)
            out += self.top_k(self.components(ids, profs), k, mode, weights or self.b.ranker)
        return out

    def components(self, ids: list[str], profs: list[Mapping[str, Any]]) -> Components:
        """Every score term for these users over the whole catalog, computed once: tuning
        blends the same terms with many weight settings (`top_k`)."""
        recs = [self.b.users.get(u) for u in ids]
        n, nv = len(ids), len(self.b.video_ids)
        profiles = [r.profile if r else p for r, p in zip(recs, profs, strict=True)]
        hist = [r.history if r else [] for r in recs]
        tt = self.user_tower(profiles, hist) @ self.b.video_vectors.T
        mf = np.zeros((n, nv), dtype=np.float32)
        has_mf = np.zeros(n, dtype=bool)
        for i, u in enumerate(ids):
            r = self.mf_row.get(u)
            if r is not None:
                mf[i] = self.b.mf_user[r] @ self.b.mf_video.T
                has_mf[i] = True
        demo = None
        if self.demo is not None:
            demo = zrows(self.demo.scores(self.b.encoder.encode_users(profiles)))
        seen = np.zeros((n, nv), dtype=bool)
        for i, rec in enumerate(recs):
            if rec:
                seen[i, [self.vid[v] for v in rec.seen if v in self.vid]] = True
        cand = self._candidates(tt, mf, has_mf, hist, seen)
        return Components(
            tt=tt, tt_z=zrows(tt), mf=mf, mf_z=np.where(has_mf[:, None], zrows(mf), 0.0),
            has_mf=has_mf, no_hist=np.array([not h for h in hist])[:, None], demo_z=demo,
            cand=cand, seen=seen, cand_idx=candidate_index(cand))

    def top_k(self, c: Components, k: int, mode: str, w: RankerWeights) -> list[list[str]]:
        if mode == "hybrid":
            return self._top_k_hybrid(c, k, w)
        n, nv = c.tt.shape
        pop = np.broadcast_to(self.pop_z, (n, nv))
        if mode == "popularity":
            score = pop.copy()
        elif mode == "mf":
            score = np.where(c.has_mf[:, None], c.mf, pop)
        elif mode == "two_tower":
            score = c.tt.astype(np.float64)
        else:
            raise ValueError(f"unknown mode {mode!r}")
        score = np.where(c.seen, -np.inf, np.array(score, dtype=np.float64))
        return self._best(score, np.broadcast_to(np.arange(nv), (n, nv)), k)

    def _hybrid_score(self, c: Components, w: RankerWeights) -> tuple[np.ndarray, np.ndarray]:
        """The blended second-stage score at each user's candidates (never seen ones: the
        candidate stage skips them), -inf at padding; and the candidates' video indices."""
        idx = c.cand_idx
        score = (w.tt * c.at_cand("tt_z", c.tt_z) + w.mf * c.at_cand("mf_z", c.mf_z)
                 + np.where(c.no_hist, w.cold_pop, w.pop) * self.pop_z[np.maximum(idx, 0)])
        wd = np.where(c.no_hist, w.cold_demo, w.demo)
        if c.demo_z is not None and np.any(wd != 0):
            score = score + wd * c.at_cand("demo_z", c.demo_z)
        return np.where(idx >= 0, score, -np.inf), np.maximum(idx, 0)

    def _top_k_hybrid(self, c: Components, k: int, w: RankerWeights) -> list[list[str]]:
        score, idx = self._hybrid_score(c, w)
        return self._best(score, idx, k)

    def score_videos(self, user_ids: Sequence[str], videos: Sequence[Sequence[str]],
                     profiles: Sequence[Mapping[str, Any]] | None = None,
                     weights: RankerWeights | None = None) -> list[np.ndarray]:
        """The ranker's blended score of given videos per user, whether or not they are
        among the user's CF candidates (-inf for a video outside the catalog): how this
        model would order videos another policy showed (vidrec.evaluation.offpolicy)."""
        w = weights or self.b.ranker
        out: list[np.ndarray] = []
        chunk = self.chunk_size()
        for s in range(0, len(user_ids), chunk):
            ids = list(user_ids[s: s + chunk])
            profs = list(profiles[s: s + chunk]) if profiles is not None else [{}] * len(ids)
            c = self.components(ids, profs)
            for i, vids in enumerate(videos[s: s + chunk]):
                j = np.array([self.vid.get(v, -1) for v in vids], dtype=np.int64)
                jj = np.maximum(j, 0)
                cold = bool(c.no_hist[i, 0])
                sc = (w.tt * c.tt_z[i, jj] + w.mf * c.mf_z[i, jj]
                      + (w.cold_pop if cold else w.pop) * self.pop_z[jj])
                wd = w.cold_demo if cold else w.demo
                if c.demo_z is not None and wd != 0:
                    sc = sc + wd * c.demo_z[i, jj]
                out.append(np.where(j >= 0, sc, -np.inf))
        return out

    def ranked(self, user_ids: Sequence[str], m: int,
               profiles: Sequence[Mapping[str, Any]] | None = None,
               weights: RankerWeights | None = None) -> list[list[tuple[str, float]]]:
        """The ranker stage's answer per user: its top m (video_id, blended score), best
        first; what the reranker's rules receive (vidrec.evaluation.funnel)."""
        out: list[list[tuple[str, float]]] = []
        chunk = self.chunk_size()
        for s in range(0, len(user_ids), chunk):
            ids = list(user_ids[s: s + chunk])
            profs = list(profiles[s: s + chunk]) if profiles is not None else [{}] * len(ids)
            score, idx = self._hybrid_score(self.components(ids, profs), weights or self.b.ranker)
            top, vals = self._top(score, idx, m)
            out += [list(zip(t, v, strict=True)) for t, v in zip(top, vals, strict=True)]
        return out

    def _top(self, score: np.ndarray, video_idx: np.ndarray, k: int
             ) -> tuple[list[list[str]], list[list[float]]]:
        """Per row, the ids and scores of the k best finite scores, best first (score[i, j]
        belongs to video video_idx[i, j])."""
        kk = min(k, score.shape[1])
        if kk == 0:
            return [[] for _ in range(len(score))], [[] for _ in range(len(score))]
        top = np.argpartition(-score, kk - 1, axis=1)[:, :kk]
        order = np.take_along_axis(score, top, 1).argsort(axis=1)[:, ::-1]
        top = np.take_along_axis(top, order, 1)
        vals = np.take_along_axis(score, top, 1)
        finite = np.isfinite(vals)
        ids = self.video_array[np.take_along_axis(video_idx, top, 1)]
        return ([row[keep].tolist() for row, keep in zip(ids, finite, strict=True)],
                [row[keep].tolist() for row, keep in zip(vals, finite, strict=True)])

    def _best(self, score: np.ndarray, video_idx: np.ndarray, k: int) -> list[list[str]]:
        return self._top(score, video_idx, k)[0]

    def _candidates(self, tt: np.ndarray, mf: np.ndarray, has_mf: np.ndarray,
                    hist: Sequence[Sequence[str]], seen: np.ndarray) -> np.ndarray:
        """The serving candidate stage (services/candidate), vectorised over users: MF's
        nearest videos, content neighbours of the latest watches and the most popular
        videos take their Mix shares of n_candidates, and the two-tower's nearest fill the
        rest. Exact top lists stand in for the ANN; there are no fresh uploads offline."""
        n, nv = tt.shape
        total = min(self.n_candidates, nv)
        mix = self.mix
        taken = seen.copy()
        cand = np.zeros((n, nv), dtype=bool)

        def take(score: np.ndarray, k: np.ndarray) -> None:
            """Each user i gets the k[i] best videos by score not taken yet."""
            kk = int(min(k.max(initial=0), nv))
            if kk <= 0:
                return
            s = np.where(taken, -np.inf, score)
            top = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
            top = np.take_along_axis(top, np.argsort(-np.take_along_axis(s, top, 1), axis=1), 1)
            keep = (np.arange(kk)[None, :] < k[:, None]) & np.isfinite(
                np.take_along_axis(s, top, 1))
            rows = np.broadcast_to(np.arange(n)[:, None], top.shape)
            cand[rows[keep], top[keep]] = True
            taken[rows[keep], top[keep]] = True

        # mf_only: users MF knows get MF's nearest only; the others the hybrid's mix.
        mixed = ~has_mf if self.arm == "mf_only" else np.ones(n, dtype=bool)
        take(mf, np.where(has_mf, np.where(mixed, mix.quota(mix.mf, total), total), 0))
        cv = self.b.content_vectors
        for a in range(mix.content_anchors):
            anchor = np.array([self.vid.get(h[a], -1) if len(h) > a else -1 for h in hist])
            has = (anchor >= 0) & mixed
            if has.any():
                sims = np.zeros((n, nv), dtype=np.float32)
                sims[has] = cv[anchor[has]] @ cv.T
                take(sims, np.where(has, mix.quota(mix.content_per_anchor, total), 0))
        pop = np.broadcast_to(self.b.popularity.astype(np.float64), (n, nv))
        take(pop, np.where(mixed, mix.quota(mix.popular, total), 0))
        take(tt, total - cand.sum(axis=1))
        return cand
