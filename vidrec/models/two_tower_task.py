"""Training task of the two-tower network: in-batch sampled softmax with log-Q correction.

Yi et al. (RecSys 2019): the other positives of a batch serve as negatives; a popular
video appears as a negative far more often than a rare one, so each logit is corrected by
subtracting log q(video), its sampling probability, or the model learns to push popular
videos down. Examples are sequential: the label is one positive interaction, the history
is the user's positives before it (most recent first), which is exactly what the model
sees at serving time.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from vidrec import schema
from vidrec.models.features import FeatureEncoder, VideoTensors
from vidrec.models.two_tower import TwoTower, TwoTowerConfig

log = logging.getLogger(__name__)


# From this catalog size up the two catalog-sized tables train with sparse updates.
SPARSE_MIN_VIDEOS = 20_000


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 8
    batch_size: int = 512
    lr: float = 3e-3
    weight_decay: float = 1e-6
    temperature: float = 0.05
    # Probability of hiding the history (teaches the profile-only cold-start path).
    history_dropout: float = 0.15
    # Probability of hiding a video's id (teaches the content-only cold-start path).
    id_dropout: float = 0.2
    # Each example's loss is weighted by score ** label_weight_power, score the pair's
    # feedback score: a 5-star rating or a full watch teaches more than a lukewarm 3 stars
    # (which still counts as a positive). 0: every positive alike.
    label_weight_power: float = 1.0
    # Torch threads; 0: half the cores, so a retrain beside the serving processes does not
    # starve them. Offline (`vidrec train`, `vidrec evaluate`) passes every core.
    threads: int = 0
    seed: int = 0
    # The catalog-sized tables (video id, history) get sparse gradients and a lazy Adam
    # (SparseAdam): a step updates the rows its batch touched, not all of them, so its
    # cost does not grow with the catalog (100k videos, one thread: 32 vs 74 ms a step).
    # None: from SPARSE_MIN_VIDEOS videos up. On MovieLens-100K (1,682 videos) the dense
    # step costs nothing extra, and with sparse tables the tuned hybrid scored NDCG@10
    # 0.2117 against 0.2171 in one run (the two-tower alone 0.1744 against 0.1699).
    sparse_embeddings: bool | None = None
    # Where the two-tower trains: "auto" takes a CUDA GPU when torch sees one, else the
    # CPU; "cpu" or "cuda" force it. The result is the same within float tolerance
    # (benchmarks/gpu_parity.py measures both on one machine).
    device: str = "auto"

    def to_dict(self) -> dict:
        return asdict(self)


DEVICES = ("auto", "cpu", "cuda")


def device(choice: str = "auto") -> torch.device:
    """The torch device for `choice` (TrainConfig.device)."""
    if choice not in DEVICES:
        raise ValueError(f"device {choice!r}: expected one of {', '.join(DEVICES)}")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for, but torch sees no CUDA GPU "
                         f"(torch {torch.__version__}); use 'auto' or 'cpu'")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


def set_cpu_threads(threads: int = 0) -> None:
    """`threads`, or half the cores (0) for torch's intra-op pool (1 on a 2-core machine).

    Measured here: with 2 OpenMP threads on 2 busy cores an Adam step took 130 ms, with 1
    thread 0.6 ms: spinning threads fight the other processes (services, Redis, Kafka).
    """
    torch.set_num_threads(threads or max(1, (os.cpu_count() or 2) // 2))


def _tensors(vt: VideoTensors, dev: torch.device) -> dict[str, torch.Tensor]:
    return {
        "ids": torch.from_numpy(vt.ids).to(dev),
        "cats": torch.from_numpy(vt.cats).to(dev),
        "tags": torch.from_numpy(vt.tags).to(dev),
        "title": torch.from_numpy(vt.title).to(dev),
        "nums": torch.from_numpy(vt.nums).to(dev),
    }


@dataclass
class Sequences:
    """Per-user positive sequences, flattened: seq[start[u]:start[u+1]] in time order."""

    user_rows: np.ndarray  # (n_users,) index into the user feature matrix
    start: np.ndarray  # (n_users + 1,)
    seq: np.ndarray  # video id indices (1-based, encoder.video_index + 1)
    weight: np.ndarray | None = None  # per-positive feedback score (None: all 1)


def build_sequences(positives: pd.DataFrame, encoder: FeatureEncoder,
                    user_row: dict[str, int]) -> Sequences:
    """`positives`: user_id, video_id, timestamp of positive interactions (deduplicated),
    and optionally `score`, the pair's feedback score, which weights its example."""
    df = positives[positives["video_id"].isin(encoder.video_index)]
    df = df[df["user_id"].isin(user_row)].sort_values(["user_id", "timestamp"], kind="stable")
    users = df["user_id"].to_numpy()
    vids = df["video_id"].map(encoder.video_index).to_numpy().astype(np.int64) + 1
    bounds = np.flatnonzero(np.r_[True, users[1:] != users[:-1], True])
    uniq = users[bounds[:-1]] if len(users) else np.array([], dtype=object)
    weight = df["score"].to_numpy(np.float32) if "score" in df else None
    return Sequences(np.array([user_row[u] for u in uniq], dtype=np.int64),
                     bounds.astype(np.int64), vids, weight)


def history_at(seqs: Sequences, u: int, pos: int) -> np.ndarray:
    """The user's positives before `pos`, most recent first, capped at HISTORY_LEN."""
    s = seqs.start[u]
    lo = max(s, s + pos - schema.HISTORY_LEN)
    return seqs.seq[lo: s + pos][::-1]


def histories(seqs: Sequences, ex_user: np.ndarray, chunk: int = 262_144) -> np.ndarray:
    """Every example's history_at, as one (examples, HISTORY_LEN) int64 matrix padded with
    0: example i is the i-th positive of the flattened sequences, whose history is the
    positives before it in its user's sequence, most recent first. Vectorised by chunks
    (a Python loop per example took ~3 s per million)."""
    n, h = len(seqs.seq), schema.HISTORY_LEN
    out = np.zeros((n, h), dtype=np.int64)
    back = np.arange(1, h + 1)
    for lo in range(0, n, chunk):
        g = np.arange(lo, min(n, lo + chunk))
        src = g[:, None] - back[None, :]  # positions of the previous positives
        ok = src >= seqs.start[ex_user[g]][:, None]
        out[lo: lo + len(g)] = np.where(ok, seqs.seq[np.maximum(src, 0)], 0)
    return out


def train_two_tower(
    encoder: FeatureEncoder,
    video_tensors: VideoTensors,
    user_cats: np.ndarray,
    seqs: Sequences,
    model_cfg: TwoTowerConfig | None = None,
    cfg: TrainConfig | None = None,
    progress: bool = True,
    init_state: dict[str, torch.Tensor] | None = None,
) -> tuple[TwoTower, float]:
    """Train; returns the model (eval mode, on CPU) and the training seconds.

    `init_state` (a previous version's state_dict) warm-starts every tensor whose shape
    still matches; a grown vocabulary keeps its fresh random rows.
    """
    model_cfg = model_cfg or TwoTowerConfig()
    cfg = cfg or TrainConfig()
    set_cpu_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    dev = device(cfg.device)
    model = TwoTower(encoder.sizes(), model_cfg)
    if init_state is not None:
        own = model.state_dict()
        reuse = {k: v for k, v in init_state.items() if k in own and own[k].shape == v.shape}
        model.load_state_dict(reuse, strict=False)
        log.info("two-tower warm start: %d of %d tensors reused", len(reuse), len(own))
    model = model.to(dev)
    vt = _tensors(video_tensors, dev)
    ucats = torch.from_numpy(user_cats).to(dev)

    # One example per positive, of user slot ex_user.
    lengths = np.diff(seqs.start)
    ex_user = np.repeat(np.arange(len(lengths)), lengths)
    labels_all = seqs.seq
    n = len(labels_all)
    if n == 0:
        raise ValueError("no positive interactions to train the two-tower model on")
    counts = np.bincount(labels_all, minlength=len(encoder.video_ids) + 1).astype(np.float64)
    log_q = torch.from_numpy(np.log(np.maximum(counts, 1.0) / n)).float().to(dev)
    raw_w = seqs.weight if seqs.weight is not None else np.ones(n, np.float32)
    ex_weight = torch.from_numpy(
        (np.maximum(raw_w, 1e-6) ** cfg.label_weight_power).astype(np.float32)).to(dev)
    hist_all = histories(seqs, ex_user)

    opts, scheds = _optimizers(model, cfg, cfg.epochs * ((n + cfg.batch_size - 1)
                                                    // cfg.batch_size))
    steps = cfg.epochs * ((n + cfg.batch_size - 1) // cfg.batch_size)
    # Every example's tensors live on the device from the start (on the CPU these share
    # numpy's memory): a step sends only its batch's indices and dropout masks, not its
    # histories (measured on an H200: per-step host copies left the GPU idle).
    hist_t = torch.from_numpy(hist_all).to(dev)
    labels_t = torch.from_numpy(labels_all).to(dev)
    urows_t = torch.from_numpy(seqs.user_rows[ex_user]).to(dev)
    t0 = time.perf_counter()
    model.train()
    bar = tqdm(total=steps, desc="two-tower", disable=not progress, leave=False, mininterval=0.5)
    step = 0
    for _ in range(cfg.epochs):
        order = rng.permutation(n)
        for b in range(0, n, cfg.batch_size):
            idx = order[b: b + cfg.batch_size]
            idx_t = torch.from_numpy(idx).to(dev)
            labels = labels_t[idx_t]
            drop_hist = torch.from_numpy(rng.random(len(idx)) < cfg.history_dropout).to(dev)
            hist = hist_t[idx_t].masked_fill(drop_hist[:, None], 0)
            users = model.user_embed(ucats[urows_t[idx_t]], hist)
            ids = labels.clone()
            ids[torch.from_numpy(rng.random(len(idx)) < cfg.id_dropout).to(dev)] = 0
            videos = model.video_embed(ids, vt["cats"][labels - 1], vt["tags"][labels - 1],
                                       vt["title"][labels - 1], vt["nums"][labels - 1])
            logits = users @ videos.T / cfg.temperature - log_q[labels][None, :]
            same = labels[:, None] == labels[None, :]
            eye = torch.eye(len(idx), dtype=torch.bool, device=dev)
            logits = logits.masked_fill(same & ~eye, float("-inf"))
            w = ex_weight[idx_t]
            w = w / w.sum()
            ce = F.cross_entropy(logits, torch.arange(len(idx), device=dev), reduction="none")
            loss = (w * ce).sum()
            for opt in opts:
                opt.zero_grad()
            loss.backward()
            for opt in opts:
                opt.step()
            for sched in scheds:
                sched.step()
            bar.update(1)
            step += 1
            if progress and step % 50 == 0:  # .item() waits for the device: not every step
                bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    seconds = time.perf_counter() - t0
    log.info("two-tower trained on %d examples, %d epochs in %.1fs (%s)", n, cfg.epochs,
             seconds, dev)
    model.eval()
    return model.cpu(), seconds


def _optimizers(model: TwoTower, cfg: TrainConfig, steps: int
                ) -> tuple[list[torch.optim.Optimizer], list[Any]]:
    """Adam for the dense parameters; with `sparse_embeddings`, SparseAdam for the two
    catalog-sized tables (no weight decay there: it would touch every row again). Both
    follow the same one-cycle learning-rate schedule."""
    sparse = cfg.sparse_embeddings
    if sparse is None:
        sparse = model.video_id.num_embeddings >= SPARSE_MIN_VIDEOS
    tables = [model.video_id, model.hist] if sparse else []
    for t in tables:
        t.sparse = True
    sparse_ids = {id(t.weight) for t in tables}
    dense = [p for p in model.parameters() if id(p) not in sparse_ids]
    opts: list[torch.optim.Optimizer] = [
        torch.optim.Adam(dense, lr=cfg.lr, weight_decay=cfg.weight_decay)]
    if tables:
        opts.append(torch.optim.SparseAdam([t.weight for t in tables], lr=cfg.lr))
    scheds = [torch.optim.lr_scheduler.OneCycleLR(o, max_lr=cfg.lr, total_steps=steps)
              for o in opts]
    return opts, scheds


@torch.no_grad()
def embed_videos(model: TwoTower, vt: VideoTensors, batch: int = 8192) -> np.ndarray:
    out = []
    t = _tensors(vt, torch.device("cpu"))
    for b in range(0, len(vt.ids), batch):
        sl = slice(b, b + batch)
        out.append(model.video_embed(t["ids"][sl], t["cats"][sl], t["tags"][sl],
                                     t["title"][sl], t["nums"][sl]).numpy())
    return np.concatenate(out) if out else np.zeros((0, model.cfg.dim), np.float32)


@torch.no_grad()
def embed_users(model: TwoTower, cats: np.ndarray, hist: np.ndarray) -> np.ndarray:
    return model.user_embed(torch.from_numpy(cats), torch.from_numpy(hist)).numpy()
