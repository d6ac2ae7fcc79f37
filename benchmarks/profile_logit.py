"""A reference for cold start: multinomial logistic regression from profile to video.

What can any model do for a user known only by profile? This one is the discriminative
counterpart of vidrec's counted demographic prior: p(video | profile) ∝ exp(b_v + Σ_f
W[f = value, v]), one free weight per (profile value, video) and a per-video bias, fitted
by maximum likelihood on every training positive (weighted by its feedback score) with L2
on W chosen on a validation hold-out. It cannot memorise single users (a few dozen profile
values, each shared by many users), and no low-rank model over the same fields can fit the
training data better. `benchmarks.cold` reports it beside vidrec and the peers.

Fitting is full-batch over users (one row per training user, counts per video): one fit
on MovieLens-100K takes 2-3 s here. It is deterministic (zero weights, bias from counts).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from benchmarks.peers import user_feature_tokens
from vidrec.training.pipeline import PipelineConfig, positive_scores

L2_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
STEPS = 300


@dataclass
class ProfileLogit:
    vocab: dict[str, int]
    videos: np.ndarray  # video ids, column order of `weights` and `bias`
    weights: np.ndarray  # (len(vocab), n_videos)
    bias: np.ndarray  # (n_videos,)
    tokens: dict[str, list[str]]  # user -> profile tokens

    def recommend(self, users: Sequence[str], k: int) -> dict[str, list[str]]:
        """Top k per user by the fitted logits (cold users have seen nothing)."""
        x = _multi_hot([self.tokens.get(u, []) for u in users], self.vocab)
        z = self.bias[None, :] + x @ self.weights
        return {u: self.videos[np.argsort(-row, kind="stable")[:k]].tolist()
                for u, row in zip(users, z, strict=True)}


def _multi_hot(token_lists: Sequence[Sequence[str]], vocab: dict[str, int]) -> np.ndarray:
    x = np.zeros((len(token_lists), len(vocab)), np.float32)
    for i, toks in enumerate(token_lists):
        for t in toks:
            if t in vocab:
                x[i, vocab[t]] = 1.0
    return x


def fit(train: pd.DataFrame, users: pd.DataFrame, video_ids: Sequence[str], l2: float
        ) -> ProfileLogit:
    """Maximum likelihood (Adam, full batch) of the training positives given profiles."""
    tokens = user_feature_tokens(users)
    pos = positive_scores(train, PipelineConfig().weights)
    videos = np.array(sorted(set(map(str, video_ids))), dtype=object)
    col = {v: i for i, v in enumerate(videos)}
    pos = pos[pos["video_id"].astype(str).isin(col)]
    train_users = sorted(pos["user_id"].astype(str).unique())
    row = {u: i for i, u in enumerate(train_users)}
    counts = np.zeros((len(train_users), len(videos)), np.float32)
    np.add.at(counts, (pos["user_id"].astype(str).map(row).to_numpy(),
                       pos["video_id"].astype(str).map(col).to_numpy()),
              pos["score"].to_numpy(np.float32))
    vocab = {t: i for i, t in enumerate(sorted({t for ts in tokens.values() for t in ts}))}
    x = torch.from_numpy(_multi_hot([tokens.get(u, []) for u in train_users], vocab))
    c = torch.from_numpy(counts / counts.sum())
    pop = counts.sum(0)
    b = torch.tensor(np.log(pop + 1.0), dtype=torch.float32, requires_grad=True)
    w = torch.zeros(len(vocab), len(videos), requires_grad=True)
    opt = torch.optim.Adam([b, w], lr=0.05)
    for _ in range(STEPS):
        z = b[None, :] + x @ w
        loss = -(c * torch.log_softmax(z, dim=1)).sum() + l2 * (w * w).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return ProfileLogit(vocab, videos, w.detach().numpy(), b.detach().numpy(), tokens)
