"""Offline ranking metrics (DESIGN.md §4).

Accuracy metrics use binary relevance: a recommended video is a hit if it is in the user's
set of relevant held-out videos. Conventions, fixed here so that every model and peer is
scored the same way:

- P@k divides by k even when the list is shorter (a short list is a worse list).
- R@k divides by |relevant|.
- AP@k = sum_{i<=k} P@i * rel_i / min(k, |relevant|), so a perfect list scores 1.
- NDCG@k uses gains 1/log2(i+1) and an ideal list of min(k, |relevant|) hits.
- A video repeated in a list counts as a hit once, at its first position.

`evaluate` averages over users that have at least one relevant video; such a user with no
recommendations scores zero rather than being dropped, so a model cannot gain by staying
silent on hard users.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "average_precision_at_k",
    "evaluate",
    "hits_at_k",
    "ndcg_at_k",
    "ndcg_rows",
    "precision_at_k",
    "recall_at_k",
]


def hits_at_k(recs: Sequence[str], relevant: Collection[str], k: int) -> np.ndarray:
    """0/1 vector of length k: position i holds 1 if recs[i] is a first-time relevant hit.

    Padded with zeros when the list is shorter than k, so that every metric can treat a
    short list as a list with misses at the end.
    """
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    out = np.zeros(k, dtype=np.float64)
    seen: set[str] = set()
    for i, item in enumerate(recs[:k]):
        if item in relevant and item not in seen:
            out[i] = 1.0
        seen.add(item)
    return out


def precision_at_k(recs: Sequence[str], relevant: Collection[str], k: int) -> float:
    """Fraction of the first k slots that hold a relevant video."""
    return float(hits_at_k(recs, relevant, k).sum() / k)


def recall_at_k(recs: Sequence[str], relevant: Collection[str], k: int) -> float:
    """Fraction of the relevant videos found in the first k; 0 when nothing is relevant."""
    if not relevant:
        return 0.0
    return float(hits_at_k(recs, relevant, k).sum() / len(relevant))


def average_precision_at_k(recs: Sequence[str], relevant: Collection[str], k: int) -> float:
    """AP@k normalised by min(k, |relevant|) so that the best possible list scores 1."""
    if not relevant:
        return 0.0
    hits = hits_at_k(recs, relevant, k)
    return float(_ap(hits[None, :], np.array([len(relevant)]))[0])


def ndcg_at_k(recs: Sequence[str], relevant: Collection[str], k: int) -> float:
    """Binary-gain NDCG@k; the ideal list has min(k, |relevant|) hits at the top."""
    if not relevant:
        return 0.0
    hits = hits_at_k(recs, relevant, k)
    return float(ndcg_rows(hits[None, :], np.array([len(relevant)]))[0])


# --- vectorised kernels over a (users x k) hit matrix ---------------------------------


def _ap(hits: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    k = hits.shape[1]
    ranks = np.arange(1, k + 1, dtype=np.float64)
    precision_at_i = np.cumsum(hits, axis=1) / ranks
    denom = np.minimum(k, n_relevant).astype(np.float64)
    return np.asarray((precision_at_i * hits).sum(axis=1) / denom)


def ndcg_rows(hits: np.ndarray, n_relevant: np.ndarray) -> np.ndarray:
    """Binary-gain NDCG per row of a (users x k) hit matrix, ranks in column order."""
    k = hits.shape[1]
    discounts = 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))
    dcg = hits @ discounts
    ideal = np.concatenate([[0.0], np.cumsum(discounts)])[np.minimum(k, n_relevant)]
    return np.asarray(dcg / ideal)


# --- beyond-accuracy metrics ------------------------------------------------------------


def _coverage(lists: Iterable[Sequence[str]], catalog: Collection[str]) -> float:
    if not catalog:
        return 0.0
    catalog_set = set(catalog)
    shown = {item for lst in lists for item in lst if item in catalog_set}
    return len(shown) / len(catalog_set)


def _diversity(
    lists: Iterable[Sequence[str]], unit_vectors: Mapping[str, np.ndarray]
) -> float:
    """Mean over lists of the mean pairwise cosine distance; lists with < 2 known items skip."""
    per_list: list[float] = []
    for lst in lists:
        items = list(dict.fromkeys(i for i in lst if i in unit_vectors))
        n = len(items)
        if n < 2:
            continue
        mat = np.stack([unit_vectors[i] for i in items])
        sim = mat @ mat.T
        off_diag = (sim.sum() - np.trace(sim)) / (n * (n - 1))
        per_list.append(1.0 - float(off_diag))
    return float(np.mean(per_list)) if per_list else float("nan")


def _novelty(lists: Iterable[Sequence[str]], popularity: Mapping[str, int]) -> float:
    """Mean over lists of mean self-information -log2(count / total); unseen items count 1."""
    total = float(sum(popularity.values())) or 1.0
    per_list = [
        float(np.mean([-np.log2(max(popularity.get(i, 1), 1) / total) for i in lst]))
        for lst in lists
        if len(lst) > 0
    ]
    return float(np.mean(per_list)) if per_list else float("nan")


def _unit_vectors(item_vectors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """L2-normalise once; a zero vector stays zero, i.e. orthogonal to everything."""
    out: dict[str, np.ndarray] = {}
    for item, vec in item_vectors.items():
        v = np.asarray(vec, dtype=np.float64).ravel()
        norm = np.linalg.norm(v)
        out[item] = v / norm if norm > 0 else v
    return out


def evaluate(
    recs: Mapping[str, Sequence[str]],
    relevant: Mapping[str, Collection[str]],
    ks: Sequence[int],
    catalog: Collection[str],
    popularity: Mapping[str, int] | None = None,
    item_vectors: Mapping[str, np.ndarray] | None = None,
) -> dict[str, float]:
    """Every §4 offline metric at every k, averaged over users with >= 1 relevant video.

    Keys are "<metric>@<k>" for precision, recall, map, ndcg, coverage, and diversity /
    novelty when item_vectors / popularity are given; plus "users", the number of users
    averaged over. Beyond-accuracy metrics look at the same users' lists, cut at k.
    """
    if not ks:
        raise ValueError("ks must not be empty")
    if any(k <= 0 for k in ks):
        raise ValueError(f"every k must be positive, got {list(ks)}")
    users = [u for u, rel in relevant.items() if len(rel) > 0]
    max_k = max(ks)
    hits = np.zeros((len(users), max_k))
    for row, u in enumerate(users):
        hits[row] = hits_at_k(recs.get(u, []), relevant[u], max_k)
    n_rel = np.array([len(relevant[u]) for u in users], dtype=np.int64)
    lists = [list(recs.get(u, [])) for u in users]
    unit_vectors = _unit_vectors(item_vectors) if item_vectors is not None else None

    out: dict[str, float] = {"users": float(len(users))}
    for k in sorted(set(ks)):
        h = hits[:, :k]
        if users:
            n_hits = h.sum(axis=1)
            out[f"precision@{k}"] = float(np.mean(n_hits / k))
            out[f"recall@{k}"] = float(np.mean(n_hits / n_rel))
            out[f"map@{k}"] = float(np.mean(_ap(h, n_rel)))
            out[f"ndcg@{k}"] = float(np.mean(ndcg_rows(h, n_rel)))
        else:
            for name in ("precision", "recall", "map", "ndcg"):
                out[f"{name}@{k}"] = float("nan")
        cut = [lst[:k] for lst in lists]
        out[f"coverage@{k}"] = _coverage(cut, catalog)
        if unit_vectors is not None:
            out[f"diversity@{k}"] = _diversity(cut, unit_vectors)
        if popularity is not None:
            out[f"novelty@{k}"] = _novelty(cut, popularity)
    return out
