"""The two-tower network: a user encoder and a video encoder into one embedding space.

The module only returns L2-normalised embeddings; the loss lives in the training task
(two_tower_task.py), so serving loads this file without any training code. The user
tower needs no id: profile features plus pooled history, so a brand-new user known only
by profile gets a vector (cold start). The video tower's id embedding is dropped out in
training, so a video with no interactions is placed by its content features alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vidrec import schema


@dataclass(frozen=True)
class TwoTowerConfig:
    dim: int = 64
    hidden: int = 256
    feat_dim: int = 16
    id_dim: int = 48
    recent: int = 5  # the last `recent` watches get their own pooled slot

    def to_dict(self) -> dict:
        return asdict(self)


def _mlp(inp: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inp, hidden), nn.ReLU(), nn.Linear(hidden, out))


class TwoTower(nn.Module):
    def __init__(self, sizes: dict[str, int], cfg: TwoTowerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.sizes = dict(sizes)
        fd, idd = cfg.feat_dim, cfg.id_dim
        self.user_cats = nn.ModuleList(
            nn.Embedding(sizes["user." + n], fd) for n in schema.USER_CAT_FEATURES
        )
        self.hist = nn.Embedding(sizes["video.id"], idd, padding_idx=0)
        u_in = fd * len(schema.USER_CAT_FEATURES) + 2 * idd + 1
        self.user_mlp = _mlp(u_in, cfg.hidden, cfg.dim)

        self.video_id = nn.Embedding(sizes["video.id"], idd)
        self.video_cats = nn.ModuleList(
            nn.Embedding(sizes["video." + n], fd) for n in schema.VIDEO_CAT_FEATURES
        )
        self.tags = nn.EmbeddingBag(sizes["video.tags"], fd, mode="mean", padding_idx=0)
        self.title = nn.EmbeddingBag(sizes["video.title_tokens"], fd, mode="mean",
                                     padding_idx=0)
        v_in = idd + fd * len(schema.VIDEO_CAT_FEATURES) + 2 * fd + len(
            schema.VIDEO_NUM_FEATURES)
        self.video_mlp = _mlp(v_in, cfg.hidden, cfg.dim)

    def user_embed(self, cats: torch.Tensor, hist: torch.Tensor) -> torch.Tensor:
        """cats (B, n_user_cats) int64; hist (B, HISTORY_LEN) video id indices, 0-padded."""
        parts = [emb(cats[:, j]) for j, emb in enumerate(self.user_cats)]
        mask = (hist > 0).float()
        h = self.hist(hist)
        n_all = mask.sum(1, keepdim=True)
        pooled = (h * mask[..., None]).sum(1) / n_all.clamp(min=1.0)
        r = self.cfg.recent
        n_recent = mask[:, :r].sum(1, keepdim=True)
        recent = (h[:, :r] * mask[:, :r, None]).sum(1) / n_recent.clamp(min=1.0)
        parts += [pooled, recent, torch.log1p(n_all) / 5.0]
        return F.normalize(self.user_mlp(torch.cat(parts, dim=1)), dim=-1)

    def video_embed(self, ids: torch.Tensor, cats: torch.Tensor, tags: torch.Tensor,
                    title: torch.Tensor, nums: torch.Tensor) -> torch.Tensor:
        parts = [self.video_id(ids)]
        parts += [emb(cats[:, j]) for j, emb in enumerate(self.video_cats)]
        parts += [self.tags(tags), self.title(title), nums]
        return F.normalize(self.video_mlp(torch.cat(parts, dim=1)), dim=-1)
