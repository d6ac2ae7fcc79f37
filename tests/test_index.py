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


def test_server_collections_take_their_layout_from_settings() -> None:
    """VIDREC_QDRANT_SHARDS / _REPLICAS / _WRITE_CONSISTENCY / _ON_DISK reach the
    create_collection call a publish makes on a Qdrant server; nonsense is refused."""
    from vidrec.config import TrainerSettings, load_settings
    from vidrec.store.index import CollectionLayout, collection_spec

    s = load_settings(TrainerSettings, {"VIDREC_QDRANT_SHARDS": "6", "VIDREC_QDRANT_REPLICAS": "2",
                                        "VIDREC_QDRANT_WRITE_CONSISTENCY": "2",
                                        "VIDREC_QDRANT_ON_DISK": "true"})
    spec = collection_spec({"tt": 64, "mf": 64, "content": 64}, CollectionLayout.from_settings(s))
    assert (spec["shard_number"], spec["replication_factor"],
            spec["write_consistency_factor"]) == (6, 2, 2)
    tt = spec["vectors_config"]["tt"]
    assert tt.on_disk is True and tt.quantization_config is not None  # int8 stays in RAM
    assert tt.hnsw_config.m == 32 and spec["vectors_config"]["mf"].quantization_config is None
    assert collection_spec({"tt": 8}, CollectionLayout())["shard_number"] == 1
    with pytest.raises(ValueError, match="write consistency"):
        CollectionLayout(replicas=2, write_consistency=3)
    with pytest.raises(ValueError, match="shards"):
        CollectionLayout(shards=0)


@pytest.mark.skipif(not os.environ.get("QDRANT_TEST_URL"),
                    reason="no Qdrant server: set QDRANT_TEST_URL=http://host:6333 to test the "
                    "server backend (no Docker engine on this machine)")
def test_server_collection_is_sharded_and_published_by_alias_swap() -> None:
    from vidrec.store.index import CollectionLayout

    index = ServerIndex(os.environ["QDRANT_TEST_URL"], layout=CollectionLayout(shards=2))
    try:
        for name in ("videos_v1", "videos_v2"):
            index.create_collection(name, {"tt": 4})
        assert index.client.get_collection("videos_v1").config.params.shard_number == 2
        index.set_alias("videos_v1")
        index.set_alias("videos_v2")  # one atomic change: delete + create
        assert index.resolve_alias() == "videos_v2"
    finally:
        for name in ("videos_v1", "videos_v2"):
            index.delete_collection(name)
        index.close()


def test_all_zero_vectors_are_left_out_of_their_graph(tmp_path: Path) -> None:
    """A video nobody interacted with has an all-zero MF vector: it is not in the MF
    graph (no query can rank it by a meaningful score) but stays searchable by the
    two-tower and content vectors."""
    index = EdgeIndex(tmp_path / "index")
    ids, vecs, payloads = data()
    vecs[MF][::2] = 0.0  # every even video: no MF vector
    index.create_collection("videos_v1", {n: D for n in vecs})
    index.upsert("videos_v1", ids, vecs, payloads)
    index.finalize("videos_v1")
    q = np.ones(D, dtype=np.float32)
    mf_hits = index.search("videos_v1", q, N, using=MF, exact=True)
    assert len(mf_hits) == N // 2
    assert all(int(v[1:]) % 2 == 1 for v, _ in mf_hits)
    tt_hits = index.search("videos_v1", q, N, using=TT, exact=True)
    assert len(tt_hits) == N
    index.close()
