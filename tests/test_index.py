"""The vector index behind its interface: the qdrant-edge backend for real, and the
Qdrant-server backend where a server is reachable (QDRANT_TEST_URL)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from vidrec.store.index import CONTENT, MF, TT, EdgeIndex, SearchFilter, ServerIndex, VectorIndex

N, D = 3000, 32


def data(seed: int = 0) -> tuple[list[str], dict[str, np.ndarray], list[dict]]:
    rng = np.random.default_rng(seed)
    vecs = {}
    for name in (TT, MF, CONTENT):
        m = rng.normal(size=(N, D)).astype(np.float32)
        vecs[name] = m / np.linalg.norm(m, axis=1, keepdims=True)
    ids = [f"v{i}" for i in range(N)]
    payloads = [{"language": "en" if i % 2 else "es", "category": f"c{i % 5}",
                 "hidden": int(i % 97 == 0), "age_restricted": int(i % 7 == 0)}
                for i in range(N)]
    return ids, vecs, payloads


def load(index: VectorIndex, name: str = "videos_v1") -> tuple[list[str], dict[str, np.ndarray]]:
    ids, vecs, payloads = data()
    index.create_collection(name, {n: D for n in vecs})
    index.upsert(name, ids, vecs, payloads)
    index.finalize(name)
    return ids, vecs


def check_backend(index: VectorIndex) -> None:
    ids, vecs = load(index)
    rng = np.random.default_rng(1)
    recalls = []
    for _ in range(50):
        q = rng.normal(size=D).astype(np.float32)
        got = {v for v, _ in index.search("videos_v1", q, 100)}
        exact = {ids[i] for i in np.argsort(-(vecs[TT] @ q))[:100]}
        recalls.append(len(got & exact) / 100)
    assert np.mean(recalls) >= 0.95
    # named vectors: searching "content" with a content vector finds that video first
    assert index.search("videos_v1", vecs[CONTENT][5], 1, using=CONTENT)[0][0] == "v5"
    assert index.search("videos_v1", vecs[MF][8], 1, using=MF)[0][0] == "v8"
    # filters: language, age restriction, categories; hidden videos are deleted
    index.delete("videos_v1", [f"v{i}" for i in range(0, N, 97)])
    q = vecs[TT][0]
    hits = index.search("videos_v1", q, 200, SearchFilter(
        languages=("es",), exclude_age_restricted=True, exclude_categories=("c1",)))
    assert hits
    for vid, _ in hits:
        i = int(vid[1:])
        assert i % 2 == 0 and i % 7 != 0 and i % 5 != 1 and i % 97 != 0
    assert "v0" not in {v for v, _ in index.search("videos_v1", q, 50)}
    # upsert of an existing id replaces it
    new = {n: -m[:1] for n, m in vecs.items()}
    index.upsert("videos_v1", ["v1"], new, [{"language": "en", "hidden": 0}])
    assert "v1" not in {v for v, _ in index.search("videos_v1", vecs[TT][1], 5)}
    index.set_alias("videos_v1")
    assert index.resolve_alias() == "videos_v1"


def test_edge_backend(tmp_path: Path) -> None:
    index = EdgeIndex(tmp_path)
    check_backend(index)
    index.close()
    # a second process (here: a second handle) can open the finished shard
    # It was never told the ids: hits are named from the payloads; once told
    # (remember_ids), from its own map, with the same answer.
    again = EdgeIndex(tmp_path)
    q = np.ones(D, np.float32)
    from_payload = again.search("videos_v1", q, 20)
    ids, vecs = data()[:2]
    live = [i for i in np.argsort(-(vecs[TT] @ q)) if i % 97 and i != 1]  # not deleted/replaced
    assert len({v for v, _ in from_payload} & {ids[i] for i in live[:20]}) >= 18
    again.remember_ids(ids)
    assert again.search("videos_v1", q, 20) == from_payload
    assert again.resolve_alias() == "videos_v1"
    again.delete_collection("videos_v1")
    assert not (tmp_path / "videos_v1").exists()
    again.close()


@pytest.mark.skipif(not os.environ.get("QDRANT_TEST_URL"),
                    reason="no Qdrant server: set QDRANT_TEST_URL=http://host:6333 to test the "
                    "server backend (no Docker engine on this machine)")
def test_server_backend() -> None:
    index = ServerIndex(os.environ["QDRANT_TEST_URL"])
    try:
        check_backend(index)
    finally:
        index.delete_collection("videos_v1")
        index.close()
