"""The periodic tier: retrain on base data + the event log, gate, publish.

Gate (Gorse's rule): the candidate is trained on everything before the newest window of
logged events and published only if it is not worse than the serving model on that
window. The published model is then retrained on everything, warm-started from the
serving model's two-tower weights. Both figures are logged and kept in the manifest.

"Not worse" is judged off-policy when the window holds enough explored impressions (the
exploration slot's, logged with their propensity and pool): each model's SNIPS estimate
of the slot's click rate had it chosen (vidrec.evaluation.offpolicy). Scoring both models'
top 10 against the window's positives (NDCG@10) favours the serving model, which chose
what was shown; it remains the fallback for logs without propensities.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from vidrec.config import TrainerSettings
from vidrec.data.dataset import Dataset, load_dataset
from vidrec.data.splits import relevant_sets
from vidrec.evaluation.offpolicy import Difference, bundle_scorer, compare, explored_slots, greedy
from vidrec.infra.streams import RecordSink
from vidrec.metrics import evaluate
from vidrec.models.bundle import BatchRecommender, ModelBundle
from vidrec.security.stores import read_secret
from vidrec.store.artifacts import ArtifactStore
from vidrec.store.eventlog import COLUMNS, EventLog
from vidrec.store.features import FeatureStore
from vidrec.training.pipeline import PipelineConfig, train_bundle

log = logging.getLogger(__name__)

MIN_WINDOW_USERS = 20
# Explored impressions the off-policy gate needs in the window; fewer -> the NDCG@10 gate.
MIN_EXPLORED_SLOTS = 200


@dataclass
class RetrainResult:
    published: str | None
    serving_ndcg: float | None
    candidate_ndcg: float | None
    reason: str
    seconds: float
    # The off-policy comparison the gate decided on, when the window allowed one.
    offpolicy: Difference | None = None


def combined_dataset(base: Path, events: pd.DataFrame, videos_log: pd.DataFrame | None
                     ) -> Dataset:
    ds = load_dataset(base)
    videos = ds.videos
    if videos_log is not None and len(videos_log):
        extra = videos_log[~videos_log["video_id"].isin(videos["video_id"])]
        videos = pd.concat([videos, extra], ignore_index=True)
    ev = events[events["video_id"].isin(set(videos["video_id"]))]
    new_users = sorted(set(ev["user_id"]) - set(ds.users["user_id"]))
    users = pd.concat([ds.users, pd.DataFrame({"user_id": new_users})], ignore_index=True)
    inter = pd.concat([ds.interactions, ev], ignore_index=True)
    inter = inter.sort_values("timestamp", kind="stable").reset_index(drop=True)
    return Dataset(videos, users, inter, ds.root)


def read_videos_log(path: Path) -> pd.DataFrame | None:
    """The videos the trainer saw upserted (vidrec.videos), as catalog rows; None if none."""
    from vidrec import schema

    if not path.exists():
        return None
    vids = pd.read_json(path, lines=True, dtype=False)
    if "tags" in vids:
        vids["tags"] = vids["tags"].apply(
            lambda t: schema.TAG_SEPARATOR.join(t) if isinstance(t, list) else t)
    return vids


def _ndcg(bundle: ModelBundle, window: pd.DataFrame, seen_before: pd.DataFrame) -> float:
    rel = relevant_sets(window)
    users = sorted(rel)
    rec = BatchRecommender(bundle)
    lists = rec.recommend(users, 10 + 200)
    seen: dict[str, set[str]] = seen_before.groupby("user_id")["video_id"].apply(set).to_dict()
    recs = {u: [v for v in lst if v not in seen.get(u, set())][:10]
            for u, lst in zip(users, lists, strict=True)}
    return evaluate(recs, rel, [10], bundle.video_ids)["ndcg@10"]


def carried_config(serving: ModelBundle | None, cfg: PipelineConfig) -> PipelineConfig:
    """What `vidrec train` tuned on validation carries over to a retrain: the ranker weights,
    the MF recency boost and the demographic prior's field weights (the weights were
    picked together with them)."""
    if serving is None:
        return cfg
    mf = serving.manifest.get("config", {}).get("mf", {})
    return replace(cfg, ranker=replace(serving.ranker),
                   demographic=serving.demographic_config(), mf=replace(
        cfg.mf, recency_boost=float(mf.get("recency_boost", 0.0)),
        recency_half_life=float(mf.get("recency_half_life", cfg.mf.recency_half_life))))


def offpolicy_gate(logged: pd.DataFrame, serving: ModelBundle, candidate: ModelBundle,
                   min_slots: int = MIN_EXPLORED_SLOTS) -> Difference | None:
    """Candidate minus serving, SNIPS on the explored impressions of `logged` (the window);
    None when there are fewer than `min_slots` of them."""
    slots = explored_slots(logged)
    if len(slots) < min_slots:
        return None
    return compare(slots, greedy(bundle_scorer(serving))(slots),
                   greedy(bundle_scorer(candidate))(slots))


def retrain(base: Path, events: pd.DataFrame, videos_log: pd.DataFrame | None,
            artifacts: ArtifactStore, publish_fn: Callable[[Path], str], window_frac: float = 0.2,
            cfg: PipelineConfig | None = None, force: bool = False,
            logged: pd.DataFrame | None = None) -> RetrainResult:
    """`logged`: the event log with its off-policy columns (EventLog.read_logged); without
    it, or with too few explored impressions in the window, the gate is NDCG@10."""
    t0 = time.perf_counter()
    latest = artifacts.latest()
    # A damaged serving version is no baseline to gate against (nor to warm-start from).
    serving = (ModelBundle.load(artifacts.path(latest))
               if latest and artifacts.loadable(latest) else None)
    cfg = carried_config(serving, cfg or PipelineConfig())
    ds = combined_dataset(base, events, videos_log)
    if len(events) == 0 and not force:
        return RetrainResult(None, None, None, "no new events", time.perf_counter() - t0)
    ts = events["timestamp"].to_numpy()
    cut = float(np.quantile(ts, 1 - window_frac)) if len(ts) else float("inf")
    inter = ds.interactions
    past, window = inter[inter["timestamp"] < cut], inter[inter["timestamp"] >= cut]
    s_ndcg = c_ndcg = None
    diff: Difference | None = None
    win_logged = (logged[pd.to_numeric(logged["timestamp"]) >= cut]
                  if logged is not None and len(logged) else None)
    enough_offpolicy = (win_logged is not None
                        and len(explored_slots(win_logged)) >= MIN_EXPLORED_SLOTS)
    if serving is not None and (enough_offpolicy
                                or len(relevant_sets(window)) >= MIN_WINDOW_USERS):
        cand = train_bundle(Dataset(ds.videos, ds.users, past.reset_index(drop=True)), cfg,
                            progress=False, version="gate",
                            init_from=serving)
        s_ndcg = _ndcg(serving, window, past) if len(relevant_sets(window)) else None
        c_ndcg = _ndcg(cand, window, past) if len(relevant_sets(window)) else None
        if enough_offpolicy:
            assert win_logged is not None
            diff = offpolicy_gate(win_logged, serving, cand)
        if diff is not None:
            log.info("retrain gate (off-policy) on %d explored impressions of %d users: "
                     "serving %s SNIPS %.4f, candidate %.4f, difference %+.4f [%+.4f, %+.4f] "
                     "(NDCG@10 on the window, biased toward serving: %s vs %s)",
                     diff.baseline.slots, diff.baseline.users, latest,
                     diff.baseline.snips.value, diff.candidate.snips.value, diff.snips.value,
                     diff.snips.lo, diff.snips.hi, s_ndcg, c_ndcg)
            if diff.snips.value < 0 and not force:
                return RetrainResult(None, s_ndcg, c_ndcg, "candidate worse than serving "
                                     "off-policy (SNIPS on explored impressions)",
                                     time.perf_counter() - t0, diff)
        else:
            assert s_ndcg is not None and c_ndcg is not None
            log.info("retrain gate on the newest %d events: serving %s NDCG@10 %.4f, "
                     "candidate %.4f (too few explored impressions for the off-policy "
                     "gate)", len(window), latest, s_ndcg, c_ndcg)
            if c_ndcg < s_ndcg and not force:
                return RetrainResult(None, s_ndcg, c_ndcg, "candidate worse than serving",
                                     time.perf_counter() - t0)
    elif not force and serving is not None:
        return RetrainResult(None, None, None,
                             f"fewer than {MIN_WINDOW_USERS} users with relevant events in "
                             "the newest window; not enough evidence to publish",
                             time.perf_counter() - t0)
    final = train_bundle(ds, cfg, progress=False, init_from=serving)
    final.manifest["metrics"].update({"gate_serving_ndcg@10": s_ndcg or 0.0,
                                      "gate_candidate_ndcg@10": c_ndcg or 0.0})
    if diff is not None:
        final.manifest["metrics"].update(diff.as_dict())
    with tempfile.TemporaryDirectory(prefix="vidrec-retrain-") as tmp:
        out = Path(tmp) / "model"
        final.save(out)
        version = publish_fn(out)
    log.info("retrain published %s in %.1fs", version, time.perf_counter() - t0)
    return RetrainResult(version, s_ndcg, c_ndcg, "published", time.perf_counter() - t0, diff)


def run_retrain(s: TrainerSettings, events: EventLog, videos_log: Path,
                artifacts: ArtifactStore, store: FeatureStore, producer: RecordSink | None,
                force: bool = False, fence: Callable[[], None] | None = None
                ) -> RetrainResult:
    """Retrain from the trainer's settings: base data dir + event log + upserted videos.
    `fence` runs right before the publish and raises to refuse it (store/lease.py: a
    replica whose retrain lease passed to another must not publish)."""
    from vidrec.serving.publish import publish
    from vidrec.store.index import CollectionLayout, open_index

    vids = read_videos_log(videos_log)

    def publish_fn(out: Path) -> str:
        if fence is not None:
            fence()
        index = open_index(s.qdrant_url, s.index_root,
                           read_secret(getattr(s, "qdrant_api_key_file", "")),
                           CollectionLayout.from_settings(s))
        try:
            return publish(out, artifacts, index, store, producer)
        finally:
            index.close()

    logged = events.read_logged()
    res = retrain(Path(s.data_dir), logged[list(COLUMNS[:-1])], vids, artifacts, publish_fn,
                  window_frac=s.retrain_window, force=force, logged=logged)
    log.info("retrain: %s (serving %s, candidate %s, %.1fs)", res.reason, res.serving_ndcg,
             res.candidate_ndcg, res.seconds)
    return res
