"""Outside peers that vidrec's models are measured against, on the same offline protocol.

The peers are implicit's ALS (Hu, Koren & Volinsky weighted matrix factorisation), EASE
(Steck 2019), SASRec trained with full-catalog softmax cross-entropy (Klenitskiy & Vasilev
2023; Petrov & Macdonald 2023), LightFM with the WARP loss and side features (Kula 2015),
and most-popular. They are the yardstick
for the design's claims (DESIGN.md §3): a vidrec model that does not beat a tuned ALS or
LightFM on the same split has not earned its complexity.

Protocol (tune_and_run_peers), MovieLens-100K, top-10:

- relevant = rating >= 4 (vidrec.data.splits.is_relevant);
- warm: per-user temporal split, each user's last 20% by time are test (users with >= 5
  interactions); videos the user has in training are never recommended;
- cold: 10% of users held out entirely, known only by their profile features;
- each peer is tuned on a small grid against a validation split carved from training only
  (a temporal split inside train for warm, a user hold-out inside train for cold), then
  refit on all of train with the chosen parameters and scored once on test.

`python -m benchmarks.peers --data DIR` reads either a raw ml-100k directory (u.data,
u.user, u.item) or a vidrec data directory (DESIGN.md §7) and writes a report.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from vidrec.data.dataset import Dataset
from vidrec.data.splits import (
    NON_ENGAGEMENT_EVENTS,
    cold_start_split,
    is_relevant,
    item_counts,
    relevant_sets,
    seen_sets,
    temporal_split,
    validation_split,
)
from vidrec.evaluation.report import write_report
from vidrec.metrics import evaluate
from vidrec.schema import TAG_SEPARATOR, UNKNOWN, USER_ID, VIDEO_ID, age_bucket

log = logging.getLogger(__name__)

Recs = dict[str, list[str]]

ML_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip

# --- data ---------------------------------------------------------------------------------


def load_ml100k(src: Path) -> Dataset:
    """Read raw MovieLens-100K into the Dataset shapes (a stop-gap until the importer lands).

    Ratings become event "rating" with the 1-5 value; genres become tags, the first genre
    the category; the zip code is kept as an extra users column `zip_code`.
    """
    src = Path(src)
    ratings = pd.read_csv(
        src / "u.data", sep="\t", header=None, names=[USER_ID, VIDEO_ID, "value", "timestamp"],
        dtype={USER_ID: str, VIDEO_ID: str, "timestamp": np.int64, "value": np.float64},
    )
    ratings["event"] = "rating"
    interactions = ratings[[USER_ID, VIDEO_ID, "timestamp", "event", "value"]]
    interactions = interactions.sort_values("timestamp", kind="stable").reset_index(drop=True)

    users = pd.read_csv(
        src / "u.user", sep="|", header=None,
        names=[USER_ID, "age", "gender", "occupation", "zip_code"],
        dtype={USER_ID: str, "age": np.float64, "gender": str, "occupation": str,
               "zip_code": str},
        keep_default_na=False,
    )
    item_cols = [VIDEO_ID, "title", "release_date", "video_release_date", "imdb_url"]
    items = pd.read_csv(
        src / "u.item", sep="|", header=None, names=item_cols + list(ML_GENRES),
        encoding="latin-1", dtype=str, keep_default_na=False,
    )
    flags = items[list(ML_GENRES)].to_numpy() == "1"
    genres = [[g for g, on in zip(ML_GENRES, row, strict=True) if on] for row in flags]
    released = pd.to_datetime(items["release_date"], format="%d-%b-%Y", errors="coerce")
    upload_ts = (released - pd.Timestamp("1970-01-01")) // pd.Timedelta(seconds=1)
    videos = pd.DataFrame(
        {
            VIDEO_ID: items[VIDEO_ID],
            "title": items["title"],
            "category": [g[0] if g else "" for g in genres],
            "tags": [TAG_SEPARATOR.join(g) for g in genres],
            "upload_ts": upload_ts.astype("float64"),
        }
    )
    return Dataset(videos=videos, users=users, interactions=interactions, root=src)


def load_data_dir(root: Path) -> Dataset:
    """Minimal reader of a §7 data directory (no validation: the real loader does that)."""
    root = Path(root)
    ids = {USER_ID: str, VIDEO_ID: str}
    videos = pd.read_csv(root / "videos.csv", dtype=str, keep_default_na=False)
    users = pd.read_csv(root / "users.csv", dtype=str, keep_default_na=False)
    if "age" in users:
        users["age"] = pd.to_numeric(users["age"], errors="coerce")
    inter = pd.read_csv(root / "interactions.csv", dtype=ids)
    inter["timestamp"] = inter["timestamp"].astype(np.int64)
    inter["value"] = pd.to_numeric(inter["value"], errors="coerce").astype(np.float64)
    inter = inter.sort_values("timestamp", kind="stable").reset_index(drop=True)
    return Dataset(videos=videos, users=users, interactions=inter, root=root)


def load_any(path: Path) -> Dataset:
    """Raw ml-100k if u.data is there, else a vidrec data directory."""
    path = Path(path)
    return load_ml100k(path) if (path / "u.data").exists() else load_data_dir(path)


# --- side features ------------------------------------------------------------------------

_ZIP_COLUMNS = ("zip_code", "zip", "zipcode", "zip_prefix")


def user_feature_tokens(users: pd.DataFrame) -> dict[str, list[str]]:
    """Profile tokens per user: age bucket, gender, occupation, zip prefix, country, language.

    The zip prefix is the first digit (the US postal region): finer prefixes leave most
    tokens with a handful of users, too few to learn an embedding from.
    """
    cols: dict[str, Iterable[Any]] = {}
    if "age" in users:
        cols["age"] = (age_bucket(a) for a in pd.to_numeric(users["age"], errors="coerce"))
    for col in ("gender", "occupation", "country", "language"):
        if col in users:
            cols[col] = users[col].fillna("").astype(str)
    zip_col = next((c for c in _ZIP_COLUMNS if c in users), None)
    if zip_col is not None:
        cols["zip"] = (z[:1] if z else "" for z in users[zip_col].fillna("").astype(str))
    tokens: dict[str, list[str]] = {u: [] for u in users[USER_ID].astype(str)}
    order = users[USER_ID].astype(str).tolist()
    for name, values in cols.items():
        for u, v in zip(order, values, strict=True):
            if v and v != UNKNOWN:
                tokens[u].append(f"{name}:{v}")
    return tokens


def video_feature_tokens(videos: pd.DataFrame) -> dict[str, list[str]]:
    """Content tokens per video: tags (genres for MovieLens), category, creator, language."""
    tokens: dict[str, list[str]] = {v: [] for v in videos[VIDEO_ID].astype(str)}
    order = videos[VIDEO_ID].astype(str).tolist()
    if "tags" in videos:
        for v, tags in zip(order, videos["tags"].fillna("").astype(str), strict=True):
            tokens[v] += [f"tag:{t}" for t in tags.split(TAG_SEPARATOR) if t]
    for col in ("category", "creator_id", "language"):
        if col in videos:
            for v, val in zip(order, videos[col].fillna("").astype(str), strict=True):
                if val:
                    tokens[v].append(f"{col}:{val}")
    return tokens


def content_vectors(videos: pd.DataFrame) -> dict[str, np.ndarray]:
    """Multi-hot tag vectors: the content space in which intra-list diversity is measured."""
    tokens = {v: [t for t in toks if t.startswith("tag:")]
              for v, toks in video_feature_tokens(videos).items()}
    vocab = {t: i for i, t in enumerate(sorted({t for ts in tokens.values() for t in ts}))}
    out: dict[str, np.ndarray] = {}
    for v, ts in tokens.items():
        vec = np.zeros(max(len(vocab), 1), dtype=np.float32)
        vec[[vocab[t] for t in ts]] = 1.0
        out[v] = vec
    return out


# --- shared helpers -----------------------------------------------------------------------


def _strength(train: pd.DataFrame) -> pd.DataFrame:
    """One row per engaged (user, video): the strongest signal, on the 1-5 rating scale.

    Ratings keep their value; other positive events (like, share, long watch) count as a 5,
    other engagement as a 1; impressions, skips and dislikes carry no preference here.
    """
    engaged = ~train["event"].isin(NON_ENGAGEMENT_EVENTS + ("skip", "dislike"))
    df = train.loc[engaged, [USER_ID, VIDEO_ID, "event", "value"]]
    relevant = is_relevant(df)
    value = np.where(df["event"].to_numpy() == "rating", df["value"].to_numpy(dtype=float),
                     np.where(relevant, 5.0, 1.0))
    out = pd.DataFrame({USER_ID: df[USER_ID].to_numpy(), VIDEO_ID: df[VIDEO_ID].to_numpy(),
                        "strength": np.nan_to_num(value, nan=1.0), "relevant": relevant})
    return out.groupby([USER_ID, VIDEO_ID], as_index=False, sort=False).agg(
        strength=("strength", "max"), relevant=("relevant", "max")
    )


def _top_k(
    scores: np.ndarray, item_ids: Sequence[str], exclude: Sequence[Iterable[int]], k: int
) -> list[list[str]]:
    """Best k item ids per row of `scores`, never one of that row's excluded columns."""
    scores = np.array(scores, dtype=np.float64, copy=True)
    for row, cols in enumerate(exclude):
        idx = list(cols)
        if idx:
            scores[row, idx] = -np.inf
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(scores, part, axis=1).argsort(axis=1)[:, ::-1]
    best = np.take_along_axis(part, order, axis=1)
    out = []
    for row in range(scores.shape[0]):
        out.append([item_ids[j] for j in best[row] if np.isfinite(scores[row, j])])
    return out


def _seen_columns(
    train: pd.DataFrame, users: Sequence[str], item_index: Mapping[str, int]
) -> list[list[int]]:
    seen = seen_sets(train)
    return [[item_index[v] for v in seen.get(u, ()) if v in item_index] for u in users]


# --- popularity ---------------------------------------------------------------------------


def popularity(
    train: pd.DataFrame, users: Sequence[str], k: int, positives_only: bool = False
) -> Recs:
    """Most engaged-with videos in train (or most liked, if positives_only), minus seen ones."""
    pairs = _strength(train)
    if positives_only:
        pairs = pairs.loc[pairs["relevant"]]
    counts = pairs[VIDEO_ID].value_counts(sort=False)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))
    ranked_ids = [str(v) for v, _ in ranked]
    seen = seen_sets(train)
    out: Recs = {}
    for u in users:
        s = seen.get(u, set())
        lst: list[str] = []
        for v in ranked_ids:
            if v not in s:
                lst.append(v)
                if len(lst) == k:
                    break
        out[u] = lst
    return out


# --- implicit ALS -------------------------------------------------------------------------

ALS_DEFAULTS: dict[str, Any] = {
    "factors": 64, "regularization": 0.05, "alpha": 2.0, "iterations": 15,
    "weighting": "linear", "positives_only": False, "seed": 0,
}  # fmt: skip


@dataclass
class AlsModel:
    user_index: dict[str, int]
    item_ids: list[str]
    user_factors: np.ndarray
    item_factors: np.ndarray
    train: pd.DataFrame


def fit_implicit_als(train: pd.DataFrame, params: Mapping[str, Any] | None = None) -> AlsModel:
    """Weighted ALS on confidences c = alpha * w(r): w = 1 (binary), r (linear) or log1p(r)."""
    from implicit.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    p = {**ALS_DEFAULTS, **(params or {})}
    pairs = _strength(train)
    if p["positives_only"]:
        pairs = pairs.loc[pairs["relevant"]]
    user_codes, user_ids = pd.factorize(pairs[USER_ID])
    item_codes, item_ids = pd.factorize(pairs[VIDEO_ID])
    weight = {
        "binary": np.ones(len(pairs)),
        "linear": pairs["strength"].to_numpy(dtype=float),
        "log": np.log1p(pairs["strength"].to_numpy(dtype=float)),
    }[p["weighting"]]
    matrix = sp.csr_matrix(
        (weight.astype(np.float32), (user_codes, item_codes)),
        shape=(len(user_ids), len(item_ids)),
    )
    with threadpool_limits(1, "blas"):  # implicit parallelises itself; BLAS threads fight it
        model = AlternatingLeastSquares(
            factors=int(p["factors"]), regularization=float(p["regularization"]),
            alpha=float(p["alpha"]), iterations=int(p["iterations"]),
            random_state=int(p["seed"]), use_gpu=False,
        )
        model.fit(matrix, show_progress=False)
    return AlsModel(
        user_index={str(u): i for i, u in enumerate(user_ids)},
        item_ids=[str(v) for v in item_ids],
        user_factors=np.asarray(model.user_factors),
        item_factors=np.asarray(model.item_factors),
        train=train,
    )


def recommend_als(model: AlsModel, users: Sequence[str], k: int) -> Recs:
    """Top-k by dot product; users unknown to the model get an empty list (ALS has no
    cold-start path, which is the point of comparing against LightFM with features)."""
    known = [u for u in users if u in model.user_index]
    out: Recs = {u: [] for u in users}
    if not known:
        return out
    scores = model.user_factors[[model.user_index[u] for u in known]] @ model.item_factors.T
    item_index = {v: i for i, v in enumerate(model.item_ids)}
    lists = _top_k(scores, model.item_ids, _seen_columns(model.train, known, item_index), k)
    out.update(zip(known, lists, strict=True))
    return out


def implicit_als(
    train: pd.DataFrame, users_to_score: Sequence[str], k: int,
    params: Mapping[str, Any] | None = None,
) -> Recs:
    """Fit ALS on train and return top-k unseen videos for each user."""
    return recommend_als(fit_implicit_als(train, params), users_to_score, k)


# --- EASE (Steck 2019) --------------------------------------------------------------------

EASE_GRID: dict[str, Sequence[Any]] = {"l2": [10.0, 50.0, 100.0, 250.0, 500.0, 1000.0],
                                       "signal": ["engaged", "relevant"]}


@dataclass
class EaseModel:
    """Item-item weights B from the closed form: P = (X^T X + l2 I)^-1, B = I - P /
    diag(P) with a zero diagonal; a user's scores are their row of X times B."""

    b: np.ndarray
    item_ids: list[str]
    user_rows: dict[str, np.ndarray]
    train: pd.DataFrame


def fit_ease(train: pd.DataFrame, params: Mapping[str, Any] | None = None) -> EaseModel:
    p = {"l2": 250.0, "signal": "engaged", **(params or {})}
    pairs = _strength(train)
    if p["signal"] == "relevant":
        pairs = pairs[pairs["relevant"]]
    items = sorted(pairs[VIDEO_ID].astype(str).unique())
    users = sorted(pairs[USER_ID].astype(str).unique())
    ii = {v: i for i, v in enumerate(items)}
    ui = {u: i for i, u in enumerate(users)}
    x = sp.csr_matrix((np.ones(len(pairs), dtype=np.float64),
                       (pairs[USER_ID].astype(str).map(ui).to_numpy(),
                        pairs[VIDEO_ID].astype(str).map(ii).to_numpy())),
                      shape=(len(users), len(items)))
    g = (x.T @ x).toarray()
    g[np.diag_indices_from(g)] += float(p["l2"])
    inv = np.linalg.inv(g)
    b = -inv / np.diag(inv)
    b[np.diag_indices_from(b)] = 0.0
    rows = {u: x.getrow(i).toarray().ravel() for u, i in ui.items()}
    return EaseModel(b, items, rows, train)


def recommend_ease(model: EaseModel, users: Sequence[str], k: int) -> Recs:
    """Top-k unseen videos per user; users with no training row get an empty list."""
    known = [u for u in users if u in model.user_rows]
    out: Recs = {u: [] for u in users}
    if not known:
        return out
    scores = np.vstack([model.user_rows[u] for u in known]) @ model.b
    item_index = {v: i for i, v in enumerate(model.item_ids)}
    lists = _top_k(scores, model.item_ids, _seen_columns(model.train, known, item_index), k)
    out.update(zip(known, lists, strict=True))
    return out


# --- SASRec, full softmax cross-entropy ---------------------------------------------------
#
# Kang & McAuley 2018 (self-attentive sequential recommendation), trained as Klenitskiy &
# Vasilev (RecSys 2023) and Petrov & Macdonald (gSASRec, RecSys 2023) show it must be: the
# next item predicted with cross-entropy over the whole catalog, not one sampled negative
# under binary cross-entropy (which leaves SASRec overconfident and well below its best).
# MovieLens-100K has 1,682 items, so the full softmax is cheap.

SASREC_DEFAULTS: dict[str, Any] = {
    "dim": 64, "blocks": 2, "heads": 1, "dropout": 0.2, "max_len": 100, "lr": 1e-3,
    "batch": 64, "epochs": 60, "signal": "engaged", "seed": 0, "weight_decay": 0.0,
}  # fmt: skip
SASREC_GRID: dict[str, list[Any]] = {"dropout": [0.2, 0.5], "signal": ["engaged", "relevant"]}
# Epoch counts read off one fit per grid point, like LightFM's.
SASREC_EPOCHS = [5, 10, 15, 20, 30, 40, 60]


@dataclass
class SasRecModel:
    net: Any
    item_ids: list[str]
    sequences: dict[str, list[int]]  # item indices + 1 (0 pads), oldest first
    train: pd.DataFrame
    max_len: int
    epochs_done: int = 0


def _sasrec_net(n_items: int, p: Mapping[str, Any]) -> Any:
    import torch
    from torch import nn

    class SASRec(nn.Module):
        """Causal self-attention over the user's item sequence; the output at each position
        scores every item by a dot product with the (shared) item embeddings."""

        def __init__(self) -> None:
            super().__init__()
            d = int(p["dim"])
            self.items = nn.Embedding(n_items + 1, d, padding_idx=0)
            self.pos = nn.Embedding(int(p["max_len"]), d)
            self.drop = nn.Dropout(float(p["dropout"]))
            layer = nn.TransformerEncoderLayer(d, int(p["heads"]), d, float(p["dropout"]),
                                               batch_first=True, norm_first=True)
            self.blocks = nn.TransformerEncoder(layer, int(p["blocks"]),
                                                enable_nested_tensor=False)
            self.norm = nn.LayerNorm(d)
            self.heads = int(p["heads"])
            nn.init.xavier_normal_(self.items.weight[1:])
            nn.init.xavier_normal_(self.pos.weight)

        def forward(self, seq: torch.Tensor) -> torch.Tensor:
            n = seq.shape[1]
            x = self.items(seq) * (self.items.embedding_dim ** 0.5)
            x = self.drop(x + self.pos(torch.arange(n, device=seq.device))[None])
            # Blocked: the future, and padding other than the position itself (a padded
            # position attending to nothing would give NaN).
            ar = torch.arange(n, device=seq.device)
            future = ar[None, :] > ar[:, None]
            pad = (seq == 0)[:, None, :] & (ar[None, :] != ar[:, None])[None]
            mask = (future[None] | pad).repeat_interleave(self.heads, 0)
            return self.norm(self.blocks(x, mask=mask))

        def logits(self, h: torch.Tensor) -> torch.Tensor:
            return h @ self.items.weight[1:].T  # column j = item j (index 0 is padding)

    return SASRec()


def _sequences(train: pd.DataFrame, signal: str) -> tuple[list[str], dict[str, list[int]]]:
    """Per user, the engaged (or only the relevant) videos in time order, first touch."""
    engaged = ~train["event"].isin(NON_ENGAGEMENT_EVENTS + ("skip", "dislike"))
    df = train.loc[engaged, [USER_ID, VIDEO_ID, "timestamp", "event", "value"]]
    if signal == "relevant":
        df = df[is_relevant(df)]
    df = df.sort_values("timestamp", kind="stable").drop_duplicates([USER_ID, VIDEO_ID])
    items = sorted(df[VIDEO_ID].astype(str).unique())
    ii = {v: i + 1 for i, v in enumerate(items)}
    seqs = {str(u): [ii[str(v)] for v in g[VIDEO_ID]] for u, g in df.groupby(USER_ID, sort=False)}
    return items, seqs


def _pad_left(seqs: Sequence[list[int]], n: int) -> np.ndarray:
    out = np.zeros((len(seqs), n), dtype=np.int64)
    for r, s in enumerate(seqs):
        s = s[-n:]
        if s:
            out[r, n - len(s):] = s
    return out


def fit_sasrec(train: pd.DataFrame, params: Mapping[str, Any] | None = None,
               on_epoch: Callable[[SasRecModel], None] | None = None) -> SasRecModel:
    """Every position of each user's last max_len + 1 items predicts the next item, with
    cross-entropy over the full catalog."""
    import torch

    p = {**SASREC_DEFAULTS, **(params or {})}
    torch.manual_seed(int(p["seed"]))
    rng = np.random.default_rng(int(p["seed"]))
    items, seqs = _sequences(train, str(p["signal"]))
    n = int(p["max_len"])
    net = _sasrec_net(len(items), p)
    model = SasRecModel(net, items, seqs, train, n)
    users = [u for u, s in seqs.items() if len(s) >= 2]
    full = _pad_left([seqs[u] for u in users], n + 1)
    inp, tgt = torch.from_numpy(full[:, :-1]), torch.from_numpy(full[:, 1:])
    opt = torch.optim.Adam(net.parameters(), lr=float(p["lr"]), betas=(0.9, 0.98),
                           weight_decay=float(p["weight_decay"]))
    bs = int(p["batch"])
    for _ in range(int(p["epochs"])):
        net.train()
        for b in np.array_split(rng.permutation(len(users)), max(1, len(users) // bs)):
            x, y = inp[b], tgt[b]
            keep = y > 0
            h = net(x)[keep]
            loss = torch.nn.functional.cross_entropy(net.logits(h), y[keep] - 1)
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.epochs_done += 1
        if on_epoch is not None:
            on_epoch(model)
    return model


def recommend_sasrec(model: SasRecModel, users: Sequence[str], k: int) -> Recs:
    """Top-k unseen videos per user from the state after their whole training sequence;
    users with no sequence get an empty list."""
    import torch

    known = [u for u in users if model.sequences.get(u)]
    out: Recs = {u: [] for u in users}
    if not known:
        return out
    model.net.eval()
    with torch.no_grad():
        x = torch.from_numpy(_pad_left([model.sequences[u] for u in known], model.max_len))
        scores = model.net.logits(model.net(x)[:, -1]).numpy()
    item_index = {v: i for i, v in enumerate(model.item_ids)}
    lists = _top_k(scores, model.item_ids, _seen_columns(model.train, known, item_index), k)
    out.update(zip(known, lists, strict=True))
    return out


# --- LightFM WARP -------------------------------------------------------------------------

LIGHTFM_DEFAULTS: dict[str, Any] = {
    "no_components": 64, "learning_rate": 0.05, "epochs": 30, "item_alpha": 0.0,
    "user_alpha": 0.0, "max_sampled": 10, "train_on": "positive", "seed": 0, "threads": 2,
}  # fmt: skip


@dataclass
class LightFMModel:
    model: Any
    user_index: dict[str, int]
    item_ids: list[str]
    item_features: sp.csr_matrix | None
    user_tokens: dict[str, list[str]]
    feature_index: dict[str, int]
    n_user_features: int
    use_features: bool
    train: pd.DataFrame
    epochs_done: int = 0


def _row_normalised(rows: list[list[int]], n_cols: int) -> sp.csr_matrix:
    """One row per entity, equal weights summing to 1 (LightFM's recommended scaling)."""
    indptr = np.cumsum([0] + [len(r) for r in rows])
    indices = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int32)
    data = np.concatenate([np.full(len(r), 1.0 / len(r), dtype=np.float32) for r in rows if r]
                          or [np.zeros(0, dtype=np.float32)])
    return sp.csr_matrix((data, indices, indptr), shape=(len(rows), n_cols))


def _user_feature_rows(m: LightFMModel, users: Sequence[str]) -> sp.csr_matrix:
    """Feature rows for any users: identity (if trained) plus profile tokens (if known)."""
    rows = []
    for u in users:
        row = []
        if u in m.user_index:
            row.append(m.user_index[u])
        if m.use_features:
            row += [m.feature_index[t] for t in m.user_tokens.get(u, ()) if t in m.feature_index]
        rows.append(row)
    return _row_normalised(rows, m.n_user_features)


def fit_lightfm(
    train: pd.DataFrame, users_df: pd.DataFrame, videos_df: pd.DataFrame,
    params: Mapping[str, Any] | None = None, use_features: bool = True,
    on_epoch: Callable[[LightFMModel], None] | None = None,
) -> LightFMModel:
    """LightFM with WARP; with features, users = id + profile tokens, videos = id + content.

    train_on "positive" fits only relevant pairs, "all" every engaged pair (WARP has no
    notion of a bad rating, so "all" treats a 1-star rating as a positive). on_epoch is
    called after every epoch so tuning can read several epoch counts from one fit.
    """
    from lightfm import LightFM

    p = {**LIGHTFM_DEFAULTS, **(params or {})}
    pairs = _strength(train)
    if p["train_on"] == "positive":
        pairs = pairs.loc[pairs["relevant"]]
    elif p["train_on"] != "all":
        raise ValueError(f"train_on must be 'positive' or 'all', got {p['train_on']!r}")

    train_users = sorted(set(train[USER_ID].astype(str)))
    user_index = {u: i for i, u in enumerate(train_users)}
    user_tokens = user_feature_tokens(users_df)
    vocab = sorted({t for toks in user_tokens.values() for t in toks}) if use_features else []
    feature_index = {t: len(train_users) + i for i, t in enumerate(vocab)}

    item_ids = sorted(set(videos_df[VIDEO_ID].astype(str)) | set(train[VIDEO_ID].astype(str)))
    item_index = {v: i for i, v in enumerate(item_ids)}
    item_features = None
    if use_features:
        vtokens = video_feature_tokens(videos_df)
        ivocab = sorted({t for toks in vtokens.values() for t in toks})
        ifeat = {t: len(item_ids) + i for i, t in enumerate(ivocab)}
        item_rows = [[i] + [ifeat[t] for t in vtokens.get(v, ())] for i, v in enumerate(item_ids)]
        item_features = _row_normalised(item_rows, len(item_ids) + len(ivocab))

    m = LightFMModel(
        model=LightFM(
            loss="warp", no_components=int(p["no_components"]),
            learning_rate=float(p["learning_rate"]), item_alpha=float(p["item_alpha"]),
            user_alpha=float(p["user_alpha"]), max_sampled=int(p["max_sampled"]),
            random_state=np.random.RandomState(int(p["seed"])),
        ),
        user_index=user_index, item_ids=item_ids, item_features=item_features,
        user_tokens=user_tokens, feature_index=feature_index,
        n_user_features=len(train_users) + len(vocab), use_features=use_features, train=train,
    )
    rows = pairs[USER_ID].map(user_index).to_numpy()
    cols = pairs[VIDEO_ID].map(item_index).to_numpy()
    matrix = sp.coo_matrix(
        (np.ones(len(pairs), dtype=np.float32), (rows, cols)),
        shape=(len(train_users), len(item_ids)),
    )
    user_features = _user_feature_rows(m, train_users) if use_features else None
    for _ in range(int(p["epochs"])):
        m.model.fit_partial(matrix, user_features=user_features, item_features=item_features,
                            epochs=1, num_threads=int(p["threads"]))
        m.epochs_done += 1
        if on_epoch is not None:
            on_epoch(m)
    return m


def recommend_lightfm(m: LightFMModel, users: Sequence[str], k: int) -> Recs:
    """Top-k unseen videos; a user absent from train is scored from profile features alone
    (an empty list without features: pure collaborative LightFM cannot place them)."""
    out: Recs = {u: [] for u in users}
    scorable = [u for u in users
                if u in m.user_index or (m.use_features and m.user_tokens.get(u))]
    if not scorable:
        return out
    if m.use_features:
        u_bias, u_emb = m.model.get_user_representations(_user_feature_rows(m, scorable))
    else:
        idx = [m.user_index[u] for u in scorable]
        u_bias, u_emb = m.model.user_biases[idx], m.model.user_embeddings[idx]
    i_bias, i_emb = m.model.get_item_representations(m.item_features)
    scores = u_emb @ i_emb.T + u_bias[:, None] + i_bias[None, :]
    item_index = {v: i for i, v in enumerate(m.item_ids)}
    lists = _top_k(scores, m.item_ids, _seen_columns(m.train, scorable, item_index), k)
    out.update(zip(scorable, lists, strict=True))
    return out


def lightfm_warp(
    train: pd.DataFrame, users_df: pd.DataFrame, videos_df: pd.DataFrame,
    users_to_score: Sequence[str], k: int, params: Mapping[str, Any] | None = None,
    use_features: bool = True,
) -> Recs:
    """Fit LightFM-WARP on train and return top-k unseen videos per user, cold users included."""
    m = fit_lightfm(train, users_df, videos_df, params, use_features=use_features)
    return recommend_lightfm(m, users_to_score, k)


# --- the protocol ---------------------------------------------------------------------------

ALS_GRID: dict[str, list[Any]] = {
    "factors": [8, 16, 32, 64],
    "regularization": [0.01, 0.1, 1.0],
    "alpha": [0.1, 0.5, 1.0, 5.0],
    "weighting": ["binary", "linear"],
    "positives_only": [False, True],
}
LIGHTFM_GRID: dict[str, list[Any]] = {
    "no_components": [64, 128],
    "learning_rate": [0.05, 0.1],
    "item_alpha": [0.0],
    "train_on": ["positive", "all"],
}
# Epoch counts read off one fit per grid point (fit_partial), so more of them cost nothing.
LIGHTFM_EPOCHS = [5, 10, 20, 30, 50, 75, 100]
POPULARITY_GRID: dict[str, list[Any]] = {"positives_only": [False, True]}
TUNE_METRIC = "ndcg@10"


@dataclass
class PeerRun:
    """Everything one protocol run measured, for the report."""

    results: dict[str, dict[str, float]] = field(default_factory=dict)
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    tuning: list[dict[str, Any]] = field(default_factory=list)


def _grid(space: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    keys = list(space)
    return [dict(zip(keys, vals, strict=True)) for vals in itertools.product(*space.values())]


@dataclass
class _Split:
    train: pd.DataFrame
    relevant: dict[str, set[str]]
    users: list[str]


def _make_split(train: pd.DataFrame, test: pd.DataFrame) -> _Split:
    relevant = relevant_sets(test)
    return _Split(train=train, relevant=relevant, users=sorted(relevant))


class _Scorer:
    """Scores recommendation lists on one split with the report's full metric set."""

    def __init__(self, split: _Split, ks: Sequence[int], catalog: list[str],
                 vectors: dict[str, np.ndarray]) -> None:
        self.split, self.ks, self.catalog, self.vectors = split, list(ks), catalog, vectors
        self.popularity = item_counts(split.train)

    def __call__(self, recs: Recs) -> dict[str, float]:
        return evaluate(recs, self.split.relevant, self.ks, self.catalog,
                        popularity=self.popularity, item_vectors=self.vectors)


def _tune_grid(peer: str, grid: Mapping[str, Sequence[Any]], fixed: Mapping[str, Any],
               recs: Callable[[dict[str, Any]], Recs], val: _Split, k: int,
               run: PeerRun) -> dict[str, Any]:
    """The grid point with the best validation score (every point logged in run.tuning)."""
    best: tuple[float, dict[str, Any]] = (-1.0, {})
    for params in _grid(grid):
        params = {**params, **fixed}
        t0 = time.perf_counter()
        score = evaluate(recs(params), val.relevant, [k], [])[TUNE_METRIC]
        run.tuning.append({"peer": peer, "split": "warm-val", **params,
                           TUNE_METRIC: round(score, 4),
                           "s": round(time.perf_counter() - t0, 2)})
        if score > best[0]:
            best = (score, params)
    return best[1]


def _tune_als(val: _Split, k: int, seed: int, run: PeerRun) -> dict[str, Any]:
    return _tune_grid("implicit_als", ALS_GRID, {"seed": seed},
                      lambda p: implicit_als(val.train, val.users, k, p), val, k, run)


def _tune_lightfm(val: _Split, videos: pd.DataFrame, users_df: pd.DataFrame, k: int,
                  seed: int, run: PeerRun, split_name: str) -> dict[str, Any]:
    best: tuple[float, dict[str, Any]] = (-1.0, {})
    for params in _grid(LIGHTFM_GRID):
        params = {**params, "seed": seed, "epochs": max(LIGHTFM_EPOCHS)}
        t0 = time.perf_counter()
        scores: dict[int, float] = {}

        def on_epoch(m: LightFMModel, scores: dict[int, float] = scores) -> None:
            if m.epochs_done in LIGHTFM_EPOCHS:
                recs = recommend_lightfm(m, val.users, k)
                scores[m.epochs_done] = evaluate(recs, val.relevant, [k], [])[TUNE_METRIC]

        fit_lightfm(val.train, users_df, videos, params, use_features=True, on_epoch=on_epoch)
        for epochs, score in scores.items():
            chosen = {**params, "epochs": epochs}
            run.tuning.append({"peer": "lightfm_warp", "split": split_name, **chosen,
                               TUNE_METRIC: round(score, 4)})
            if score > best[0]:
                best = (score, chosen)
        log.info("lightfm %s %s: %s (%.1fs)", split_name, params, scores,
                 time.perf_counter() - t0)
    return best[1]


def _tune_ease(val: _Split, k: int, run: PeerRun) -> dict[str, Any]:
    return _tune_grid("ease", EASE_GRID, {},
                      lambda p: recommend_ease(fit_ease(val.train, p), val.users, k), val, k,
                      run)


def _tune_sasrec(val: _Split, k: int, seed: int, run: PeerRun) -> dict[str, Any]:
    """The grid, each point fit once with its epoch counts read off on the way (like
    LightFM's); the best (params, epochs) on validation."""
    best: tuple[float, dict[str, Any]] = (-1.0, {})
    epochs = [e for e in SASREC_EPOCHS if e <= int(SASREC_DEFAULTS["epochs"])]
    for params in _grid(SASREC_GRID):
        params = {**params, "seed": seed, "epochs": max(epochs)}
        t0 = time.perf_counter()
        scores: dict[int, float] = {}

        def on_epoch(m: SasRecModel, scores: dict[int, float] = scores) -> None:
            if m.epochs_done in epochs:
                recs = recommend_sasrec(m, val.users, k)
                scores[m.epochs_done] = evaluate(recs, val.relevant, [k], [])[TUNE_METRIC]

        fit_sasrec(val.train, params, on_epoch=on_epoch)
        for e, score in scores.items():
            chosen = {**params, "epochs": e}
            run.tuning.append({"peer": "sasrec_ce", "split": "warm-val", **chosen,
                               TUNE_METRIC: round(score, 4)})
            if score > best[0]:
                best = (score, chosen)
        log.info("sasrec %s: %s (%.1fs)", params, scores, time.perf_counter() - t0)
    return best[1]


def _tune_popularity(val: _Split, k: int) -> dict[str, Any]:
    scored = [(evaluate(popularity(val.train, val.users, k, **p), val.relevant, [k], [])
               [TUNE_METRIC], i, p) for i, p in enumerate(_grid(POPULARITY_GRID))]
    return max(scored, key=lambda t: (t[0], -t[1]))[2]


def run_peers(dataset: Dataset, ks: Sequence[int], seed: int = 0, sasrec: bool = True
              ) -> PeerRun:
    """Tune each peer on validation carved from train, refit on train, score on test.
    `sasrec`: include SASRec (needs torch; the slowest peer to tune)."""
    run = PeerRun()
    k_tune, k_max = 10, max(ks)
    catalog = sorted(set(dataset.videos[VIDEO_ID].astype(str)))
    vectors = content_vectors(dataset.videos)
    inter = dataset.interactions

    # warm: per-user temporal split; tuning on a temporal split inside train
    train, test = temporal_split(inter, test_frac=0.2, min_interactions=5)
    warm = _make_split(train, test)
    fit, val_rows = validation_split(train, test_frac=0.2, min_interactions=5)
    val = _make_split(fit, val_rows)
    score_warm = _Scorer(warm, ks, catalog, vectors)
    log.info("warm: %d train rows, %d test users; validation: %d users",
             len(train), len(warm.users), len(val.users))

    def timed(name: str, fit_fn: Callable[[], Any], rec_fn: Callable[[Any], Recs],
              scorer: _Scorer, params: dict[str, Any], tune_s: float = 0.0) -> None:
        """Fit and score one peer; `tune_s`: what choosing `params` cost (kept beside
        fit_s: `vidrec train` includes its own tuning)."""
        t0 = time.perf_counter()
        model = fit_fn()
        fit_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        recs = rec_fn(model)
        rec_s = time.perf_counter() - t1
        run.results[name] = {**scorer(recs), "fit_s": fit_s, "recommend_s": rec_s,
                             "tune_s": tune_s}
        run.params[name] = params
        log.info("%s: ndcg@10 %.4f map@10 %.4f (fit %.1fs)", name,
                 run.results[name].get("ndcg@10", float("nan")),
                 run.results[name].get("map@10", float("nan")), fit_s)

    t0 = time.perf_counter()
    als_params = _tune_als(val, k_tune, seed, run)
    tune_s = time.perf_counter() - t0
    log.info("implicit_als tuned in %.0fs: %s", tune_s, als_params)
    timed("implicit_als (warm)", lambda: fit_implicit_als(train, als_params),
          lambda m: recommend_als(m, warm.users, k_max), score_warm, als_params, tune_s)

    t0 = time.perf_counter()
    ease_params = _tune_ease(val, k_tune, run)
    tune_s = time.perf_counter() - t0
    log.info("ease tuned in %.0fs: %s", tune_s, ease_params)
    timed("ease (warm)", lambda: fit_ease(train, ease_params),
          lambda m: recommend_ease(m, warm.users, k_max), score_warm, ease_params, tune_s)

    if sasrec:
        t0 = time.perf_counter()
        sas_params = _tune_sasrec(val, k_tune, seed, run)
        tune_s = time.perf_counter() - t0
        log.info("sasrec_ce tuned in %.0fs: %s", tune_s, sas_params)
        timed("sasrec_ce (warm)", lambda: fit_sasrec(train, sas_params),
              lambda m: recommend_sasrec(m, warm.users, k_max), score_warm, sas_params,
              tune_s)

    t0 = time.perf_counter()
    lfm_params = _tune_lightfm(val, dataset.videos, dataset.users, k_tune, seed, run, "warm-val")
    tune_s = time.perf_counter() - t0
    log.info("lightfm_warp tuned in %.0fs: %s", tune_s, lfm_params)
    timed("lightfm_warp (warm)",
          lambda: fit_lightfm(train, dataset.users, dataset.videos, lfm_params),
          lambda m: recommend_lightfm(m, warm.users, k_max), score_warm, lfm_params, tune_s)

    pop_params = _tune_popularity(val, k_tune)
    timed("popularity (warm)", lambda: None,
          lambda _: popularity(train, warm.users, k_max, **pop_params), score_warm, pop_params)

    # cold: users held out entirely; tuning holds out other users inside train
    cold_train, cold_test, _ = cold_start_split(inter, users_frac=0.1, seed=seed)
    cold = _make_split(cold_train, cold_test)
    vfit, vtest, _ = cold_start_split(cold_train, users_frac=0.1, seed=seed + 1)
    cold_val = _make_split(vfit, vtest)
    score_cold = _Scorer(cold, ks, catalog, vectors)
    log.info("cold: %d train rows, %d cold users", len(cold_train), len(cold.users))

    t0 = time.perf_counter()
    lfm_cold = _tune_lightfm(cold_val, dataset.videos, dataset.users, k_tune, seed, run,
                             "cold-val")
    tune_s = time.perf_counter() - t0
    log.info("lightfm_warp (cold) tuned in %.0fs: %s", tune_s, lfm_cold)
    timed("lightfm_warp (cold)",
          lambda: fit_lightfm(cold_train, dataset.users, dataset.videos, lfm_cold),
          lambda m: recommend_lightfm(m, cold.users, k_max), score_cold, lfm_cold, tune_s)
    pop_cold = _tune_popularity(cold_val, k_tune)
    timed("popularity (cold)", lambda: None,
          lambda _: popularity(cold_train, cold.users, k_max, **pop_cold), score_cold, pop_cold)
    return run


def tune_and_run_peers(dataset: Dataset, ks: Sequence[int], seed: int = 0
                       ) -> dict[str, dict[str, float]]:
    """Peer metrics per "peer (warm|cold)", each with fit_s and recommend_s in seconds."""
    return run_peers(dataset, ks, seed).results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("/work/shared/data/ml-100k"),
                        help="raw ml-100k dir (u.data, u.user, u.item) or a vidrec data dir")
    parser.add_argument("--out", type=Path, default=Path("var/benchmarks/peers"))
    parser.add_argument("--ks", default="1,5,10,20", help="comma-separated cut-offs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import torch

    torch.set_num_threads(1)  # shared 2-core machines; SASRec's figures do not depend on it

    ks = sorted({int(k) for k in args.ks.split(",")})
    t0 = time.perf_counter()
    dataset = load_any(args.data)
    run = run_peers(dataset, ks, seed=args.seed)
    total = time.perf_counter() - t0
    timing_rows = [{"model": n, "tune_s": round(r["tune_s"], 3), "fit_s": round(r["fit_s"], 3),
                    "recommend_s": round(r["recommend_s"], 3)} for n, r in run.results.items()]
    param_rows = [{"model": n, **p} for n, p in run.params.items()]
    notes = [
        f"data: {args.data}; seed {args.seed}; total wall time {total:.0f}s",
        "relevant = rating >= 4; warm = per-user temporal split (last 20% by time, users "
        "with >= 5 interactions), videos seen in training never recommended",
        "cold = 10% of users held out entirely, scored from profile features only",
        f"tuned on {TUNE_METRIC} over a validation split carved from train only, then refit "
        "on all of train",
    ]
    paths = write_report(args.out, run.results, "Peers on the vidrec offline protocol",
                         tables={"Times (s)": timing_rows, "Chosen parameters": param_rows,
                                 "Tuning": run.tuning}, notes=notes)
    cols = ["precision@10", "recall@10", "map@10", "ndcg@10", "coverage@10", "fit_s"]
    print(f"{'model':24s}" + "".join(f"{c:>14s}" for c in cols))
    for name, res in run.results.items():
        print(f"{name:24s}" + "".join(f"{res.get(c, float('nan')):14.4f}" for c in cols))
    print(f"report: {paths['markdown']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
