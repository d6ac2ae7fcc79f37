"""`vidrec publish`: make a trained model directory live.

Order matters for zero downtime: 1) copy into the artifact store as v{N} (not LATEST yet);
2) load video vectors into a new collection videos_v{N} and build its index; 3) load
features into Redis; 4) switch the alias and LATEST atomically; 5) announce on
vidrec.models (for operators). Serving picks the new version up from LATEST, polled,
only after step 4, fully built.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vidrec import schema
from vidrec.infra.streams import RecordSink
from vidrec.models.bundle import ModelBundle
from vidrec.store.artifacts import ArtifactStore
from vidrec.store.features import FRESH_LEN, FeatureStore, UserSeed
from vidrec.store.index import VectorIndex

log = logging.getLogger(__name__)

def collection_name(version: str) -> str:
    return f"videos_{version}"


def video_payload(row: dict[str, Any]) -> dict[str, Any]:
    """Filterable fields; flags as 0/1 ints (see store/index.py)."""
    def flag(x: Any) -> int:
        return 1 if str(x).strip().lower() in ("1", "true", "yes") else 0

    up = row.get("upload_ts")
    try:
        up_f = float(up) if up not in (None, "") else 0.0
    except ValueError:
        up_f = 0.0
    return {"category": str(row.get("category") or ""), "language": str(row.get("language") or ""),
            "creator_id": str(row.get("creator_id") or ""), "upload_ts": up_f,
            "hidden": flag(row.get("hidden")), "age_restricted": flag(row.get("age_restricted"))}


def index_vectors(bundle: ModelBundle) -> dict[str, np.ndarray]:
    from vidrec.store.index import CONTENT, MF, TT

    return {TT: bundle.video_vectors, MF: bundle.mf_video, CONTENT: bundle.content_vectors}


def load_index(index: VectorIndex, bundle: ModelBundle, name: str) -> None:
    rows = bundle.video_rows()
    t0 = time.perf_counter()
    vectors = index_vectors(bundle)
    index.create_collection(name, {n: m.shape[1] for n, m in vectors.items()})
    payloads = [video_payload(r) for r in rows]
    keep = [i for i, p in enumerate(payloads) if not p["hidden"]]  # hidden: not indexed
    index.upsert(name, [bundle.video_ids[i] for i in keep],
                 {n: m[keep] for n, m in vectors.items()}, [payloads[i] for i in keep])
    index.finalize(name)
    release = getattr(index, "release", None)
    if release is not None:
        release(name)
    log.info("index %s: %d vectors in %.1fs", name, len(rows), time.perf_counter() - t0)


def newest_videos(bundle: ModelBundle, n: int = FRESH_LEN) -> list[str]:
    """The catalog's newest uploads, newest first (the fresh list); [] without upload times."""
    up = bundle.videos.get("upload_ts")
    if up is None:
        return []
    ts = np.array([float(x) if x not in ("", None) else -np.inf for x in up])
    return [bundle.video_ids[i] for i in np.argsort(-ts, kind="stable")[:n]]


def load_features(store: FeatureStore, bundle: ModelBundle, overwrite_history: bool) -> None:
    """Videos, training users and the fresh list into Redis. A user's history, negatives
    and feedback are seeded only where Redis has none (live events own them after the
    first publish); `overwrite_history` replaces them with the training ones."""
    t0 = time.perf_counter()
    store.put_videos(bundle.video_rows())
    users = bundle.users
    store.seed_users((UserSeed(uid, rec.profile, rec.history, rec.seen, rec.negatives,
                               {v: (f[0], f[1], f[2], f[3] if len(f) > 3 else 0.0)
                                for v, f in rec.feedback.items()},
                               rec.rating_sum, rec.rating_n)
                      for uid, rec in users.items()), overwrite=overwrite_history)
    # What is popular now: seeded from the model's popularity on the first publish, kept
    # by the trainer from live events afterwards (a republish keeps the live counts).
    store.seed_trending(bundle.video_ids, bundle.popularity.astype(np.float64))
    store.refresh_trending()
    fresh = newest_videos(bundle)
    if fresh:
        store.put_fresh(fresh)
    log.info("features: %d videos, %d users into Redis in %.1fs", len(bundle.video_ids),
             len(users), time.perf_counter() - t0)


def publish(model_dir: Path, artifacts: ArtifactStore, index: VectorIndex,
            store: FeatureStore, producer: RecordSink | None = None,
            overwrite_history: bool = False) -> str:
    """Publish and return the new version (e.g. "v3")."""
    from vidrec.serving.metrics import PUBLISH_SECONDS

    with PUBLISH_SECONDS.time():
        return _publish(model_dir, artifacts, index, store, producer, overwrite_history)


def _publish(model_dir: Path, artifacts: ArtifactStore, index: VectorIndex,
             store: FeatureStore, producer: RecordSink | None,
             overwrite_history: bool) -> str:
    version = artifacts.stage(Path(model_dir))
    bundle = ModelBundle.load(artifacts.path(version))
    name = collection_name(version)
    load_index(index, bundle, name)
    load_features(store, bundle, overwrite_history)
    artifacts.verify(version)  # every server would refuse it: fail before switching
    index.set_alias(name)
    artifacts.set_latest(version)
    store.set_serving_version(version)
    log.info("published %s (collection %s)", version, name)
    if producer is not None:
        announce(producer, bundle, version, artifacts, name)
    for old in artifacts.prune():
        try:
            index.delete_collection(collection_name(old))
        except Exception:  # the collection may already be gone
            log.warning("could not delete collection of pruned version %s", old)
    return version


def announce(producer: RecordSink, bundle: ModelBundle, version: str,
             artifacts: ArtifactStore, collection: str) -> None:
    """Tell vidrec.models a version went live (for operators and tools that follow the
    topic; serving processes pick a version up from LATEST, they do not consume it)."""
    from vidrec.v1 import events_pb2

    msg = events_pb2.ModelPublished(
        version=version, artifact_dir=str(artifacts.path(version)), collection=collection,
        created_at=time.time(),
        metrics={k: float(v) for k, v in bundle.manifest.get("metrics", {}).items()
                 if isinstance(v, int | float)})
    producer.send_records(schema.TOPIC_MODELS, [(version.encode(), msg.SerializeToString())])


class RollbackRefused(RuntimeError):
    """The rollback was not done; the message says why (safe to show an operator)."""


def rollback(store: ArtifactStore, open_index: Callable[[], Any], to: str = ""
             ) -> tuple[str | None, str]:
    """Serve the version that was LATEST before this one, or `to` (a version that was
    served before): switch the index alias, then LATEST (the services follow LATEST).
    Refused for a version that was never served (or is gone), and when its files fail
    their checksums, since every server would refuse to load it. Returns (from, to)."""
    from vidrec.store.artifacts import ROLLBACK, CorruptArtifact

    cur, prev = store.latest(), store.previous()
    if to:
        if to not in store.published():
            raise RollbackRefused(f"{to} was never served (or is gone); served versions: "
                                  f"{', '.join(store.published()) or '-'}")
        prev = to
    if prev is None:
        raise RollbackRefused(f"nothing to roll back to (serving {cur}, no earlier served "
                              "version kept)")
    try:
        store.verify(prev)
    except CorruptArtifact as exc:
        raise RollbackRefused(f"not rolling back to {prev}: {exc}") from None
    index = open_index()
    try:
        index.set_alias(collection_name(prev))
    finally:
        index.close()
    store.set_latest(prev, action=ROLLBACK)
    return cur, prev
