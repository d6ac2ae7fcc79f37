"""Content-only video vectors: "you watched A, B is like A".

TF-IDF over each video's content tokens (category, tags, creator, language, title words),
projected to a fixed dimension with a seeded Gaussian projection (cosines are preserved in
expectation, Johnson-Lindenstrauss) and L2-normalised, so similarity is a dot product and
the vectors fit the same ANN index machinery as the two-tower ones. They need no
interactions at all, so a video uploaded a second ago has one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from vidrec import schema
from vidrec.models.features import title_tokens

CONTENT_DIM = 64


def content_tokens(r: Mapping[str, Any]) -> list[str]:
    toks = [f"cat={r.get('category') or ''}", f"lang={r.get('language') or ''}"]
    if r.get("creator_id"):
        toks.append(f"creator={r['creator_id']}")
    raw = r.get("tags") or ""
    tags = raw if isinstance(raw, list) else str(raw).split(schema.TAG_SEPARATOR)
    toks += [f"tag={t}" for t in tags if t]
    toks += [f"w={t}" for t in title_tokens(r.get("title") or "")]
    return toks


class ContentModel:
    """Fitted IDF weights + projection; `vectors()` embeds any video record, new ones too."""

    def __init__(self, idf: dict[str, float], dim: int = CONTENT_DIM, seed: int = 0) -> None:
        self.idf = idf
        self.dim = dim
        self.seed = seed
        self._vocab = {t: i for i, t in enumerate(sorted(idf))}
        rng = np.random.default_rng(seed)
        self._proj = rng.normal(0, 1 / np.sqrt(dim), (len(self._vocab), dim)).astype(np.float32)

    @classmethod
    def fit(cls, rows: Sequence[Mapping[str, Any]], dim: int = CONTENT_DIM,
            seed: int = 0) -> ContentModel:
        df: dict[str, int] = {}
        for r in rows:
            for t in set(content_tokens(r)):
                df[t] = df.get(t, 0) + 1
        n = max(len(rows), 1)
        idf = {t: float(np.log((1 + n) / (1 + c)) + 1.0) for t, c in df.items()}
        return cls(idf, dim, seed)

    def vectors(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        data, ri, ci = [], [], []
        for i, r in enumerate(rows):
            for t in set(content_tokens(r)):
                j = self._vocab.get(t)
                if j is not None:
                    ri.append(i)
                    ci.append(j)
                    data.append(self.idf[t])
        m = sp.csr_matrix((data, (ri, ci)), shape=(len(rows), len(self._vocab)),
                          dtype=np.float32)
        norms = np.sqrt(np.asarray(m.multiply(m).sum(1))).ravel()
        m = sp.diags(1 / np.maximum(norms, 1e-9)) @ m
        v = np.asarray(m @ self._proj, dtype=np.float32)
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-9)

    def to_json(self) -> dict:
        return {"idf": self.idf, "dim": self.dim, "seed": self.seed}

    @classmethod
    def from_json(cls, d: dict) -> ContentModel:
        return cls(d["idf"], d["dim"], d["seed"])


def similar(vectors: np.ndarray, anchor: int, k: int, exclude: set[int] | None = None
            ) -> list[tuple[int, float]]:
    """Top-k videos most similar to video `anchor` by content (brute force, O(n·d))."""
    s = vectors @ vectors[anchor]
    s[anchor] = -np.inf
    for j in exclude or ():
        s[j] = -np.inf
    top = np.argpartition(-s, min(k, len(s) - 1))[:k]
    top = top[np.argsort(-s[top])]
    return [(int(j), float(s[j])) for j in top if np.isfinite(s[j])]
