"""Two-tower training speed against the idealised step, on the same machine in one run.

The idealised step is the model's forward, in-batch softmax with log-Q correction
(history 50), backward and Adam on tensors already in memory: no data preparation, no
dropout masks, nothing but the arithmetic a step cannot avoid. `train_two_tower` is the
real loop (examples, histories, dropout, weights, schedule) on a synthetic catalog.

    python -m benchmarks.two_tower_step [--videos 100000] [--users 5000] [--epochs 1]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from vidrec import schema
from vidrec.data.dataset import load_dataset, user_profiles
from vidrec.data.synth import generate
from vidrec.models.features import FeatureEncoder
from vidrec.models.two_tower import TwoTower, TwoTowerConfig
from vidrec.models.two_tower_task import TrainConfig, build_sequences, train_two_tower
from vidrec.training.pipeline import PipelineConfig, positive_scores, positives


def idealised(sizes: dict[str, int], n_videos: int, batch: int, steps: int, threads: int,
              sparse: bool) -> float:
    """Samples/s of the bare step (random ids in memory)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    m = TwoTower(sizes, TwoTowerConfig())
    if sparse:
        m.video_id.sparse = m.hist.sparse = True
        tables = {id(m.video_id.weight), id(m.hist.weight)}
        opts: list[torch.optim.Optimizer] = [
            torch.optim.Adam([p for p in m.parameters() if id(p) not in tables], lr=3e-3),
            torch.optim.SparseAdam([m.video_id.weight, m.hist.weight], lr=3e-3)]
    else:
        opts = [torch.optim.Adam(m.parameters(), lr=3e-3)]
    log_q = torch.log(torch.rand(n_videos + 1) + 1e-3)
    g = torch.Generator().manual_seed(1)
    def field(prefix: str, names: tuple[str, ...]) -> torch.Tensor:
        """One column per feature, each drawn within its own table."""
        return torch.stack([torch.randint(0, sizes[prefix + n], (batch,), generator=g)
                            for n in names], dim=1)

    data = [(field("user.", schema.USER_CAT_FEATURES),
             torch.randint(0, n_videos + 1, (batch, schema.HISTORY_LEN), generator=g),
             torch.randint(1, n_videos + 1, (batch,), generator=g),
             field("video.", schema.VIDEO_CAT_FEATURES),
             torch.randint(0, sizes["video.tags"], (batch, 4), generator=g),
             torch.randint(0, sizes["video.title_tokens"], (batch, 8), generator=g),
             torch.rand(batch, len(schema.VIDEO_NUM_FEATURES), generator=g))
            for _ in range(8)]

    def step(i: int) -> None:
        uc, hist, labels, vc, tags, title, nums = data[i % len(data)]
        u = m.user_embed(uc, hist)
        v = m.video_embed(labels, vc, tags, title, nums)
        logits = u @ v.T / 0.05 - log_q[labels][None, :]
        loss = F.cross_entropy(logits, torch.arange(batch))
        for o in opts:
            o.zero_grad()
        loss.backward()
        for o in opts:
            o.step()

    for i in range(3):
        step(i)
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    return batch * steps / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, default=100_000)
    ap.add_argument("--users", type=int, default=5_000)
    ap.add_argument("--interactions-per-user", type=float, default=40.0)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--steps", type=int, default=40, help="idealised steps timed")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", default="var/bench/two_tower_step")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(tempfile.mkdtemp(prefix="vidrec-tt-")) / "data"
    generate(data, users=a.users, videos=a.videos, seed=2,
             interactions_per_user=a.interactions_per_user)
    ds = load_dataset(data)
    cfg = PipelineConfig()
    videos = ds.videos.reset_index(drop=True)
    encoder = FeatureEncoder.fit(videos, ds.users, ref_ts=float(ds.interactions["timestamp"]
                                                                 .max()))
    profiles = user_profiles(ds.users)
    users = list(profiles)
    row = {u: i for i, u in enumerate(users)}
    pos = positives(ds.interactions, cfg.weights)
    pscore = positive_scores(ds.interactions, cfg.weights)
    seqs = build_sequences(pos.merge(pscore, on=["user_id", "video_id"], how="inner"),
                           encoder, row)
    vt = encoder.encode_videos(videos.to_dict("records"))
    ucats = encoder.encode_users([profiles[u] for u in users])
    n = len(seqs.seq)
    res: dict = {"videos": a.videos, "examples": n, "threads": a.threads,
                 "batch": TrainConfig().batch_size}
    for sparse in (False, True):
        tcfg = TrainConfig(epochs=a.epochs, threads=a.threads, sparse_embeddings=sparse)
        _, secs = train_two_tower(encoder, vt, ucats, seqs, cfg.two_tower, tcfg,
                                  progress=False)
        key = "sparse" if sparse else "dense"
        res[f"train_{key}_samples_s"] = n * a.epochs / secs
        res[f"ideal_{key}_samples_s"] = idealised(encoder.sizes(), len(encoder.video_ids),
                                                  tcfg.batch_size, a.steps, a.threads, sparse)
        print(f"{key:6s}: train_two_tower {res[f'train_{key}_samples_s']:8.0f} samples/s, "
              f"idealised step {res[f'ideal_{key}_samples_s']:8.0f} samples/s", flush=True)
    res["train_sparse_vs_ideal_adam"] = res["train_sparse_samples_s"] / res[
        "ideal_dense_samples_s"]
    print(f"train_two_tower (sparse tables) / idealised step (Adam): "
          f"{res['train_sparse_vs_ideal_adam']:.2f}x", flush=True)
    (out / "two_tower_step.json").write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
