"""The model holder: publish order, hot swap, eviction, exact-version lookups."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vidrec.serving.holder import ModelHolder, VersionUnavailable
from vidrec.store.artifacts import ArtifactStore


class Loaded:
    def __init__(self, version: str) -> None:
        self.version = version
        self.closed = False

    def close(self) -> None:
        self.closed = True


def publish(store: ArtifactStore, tmp: Path, name: str) -> str:
    d = tmp / name
    d.mkdir()
    (d / "manifest.json").write_text(json.dumps({"version": name}))
    v = store.stage(d)
    store.set_latest(v)
    return v


def test_swap_keep_evict_and_exact_version(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "art", keep=2)
    loads: list[str] = []

    def load(v: str, _p: Path) -> Loaded:
        loads.append(v)
        return Loaded(v)

    h: ModelHolder[Loaded] = ModelHolder(store, load, keep=2)
    with pytest.raises(VersionUnavailable):
        h.current()
    assert publish(store, tmp_path, "a") == "v1"
    assert h.refresh() and h.current()[0] == "v1"
    assert not h.refresh()  # nothing new
    v1 = h.get("v1")
    publish(store, tmp_path, "b")
    assert h.refresh() and h.version == "v2"
    assert h.get("v1") is v1  # the previous version stays loaded for in-flight requests
    publish(store, tmp_path, "c")
    assert h.refresh() and h.version == "v3"
    assert v1.closed  # evicted and released
    assert loads == ["v1", "v2", "v3"]
    with pytest.raises(VersionUnavailable):
        h.get("v9")
    # A request's model_version never becomes a path: absolute, relative, odd names.
    (tmp_path / "evil").mkdir()
    (tmp_path / "evil" / "manifest.json").write_text("{}")
    for name in (str(tmp_path / "evil"), "../evil", "v1/../../evil", "v1\n", "", "V1"):
        with pytest.raises(VersionUnavailable):
            h.get(name)
    assert loads == ["v1", "v2", "v3"]
    # rollback: LATEST back to v2 is picked up like any other switch
    store.set_latest("v2")
    assert h.refresh() and h.current()[0] == "v2"


def test_store_keeps_latest_and_previous(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "art", keep=2)
    for name in "abc":
        publish(store, tmp_path, name)
    assert store.prune() == ["v1"]
    assert store.versions() == ["v2", "v3"] and store.previous() == "v2"
    assert json.loads((store.path("v3") / "manifest.json").read_text())["trained_as"] == "c"


def test_a_loaded_model_is_outside_the_gc_walks_and_an_evicted_one_is_freed(
        tmp_path: Path) -> None:
    """A full GC walk over a big model stalls every request (110 ms at 100k videos), so
    loads freeze the heap; a version evicted later is still collected (even in a cycle)."""
    import gc
    import weakref

    class Cyclic(Loaded):
        def __init__(self, version: str) -> None:
            super().__init__(version)
            self.payload = {"self": self}  # only the cyclic GC can free this

    store = ArtifactStore(tmp_path / "art", keep=1)
    h: ModelHolder[Cyclic] = ModelHolder(store, lambda v, _p: Cyclic(v), keep=1)
    try:
        publish(store, tmp_path, "a")
        assert h.refresh()
        first = h.current()[1]
        tracked = {id(o) for o in gc.get_objects()}
        assert id(first.payload) not in tracked  # frozen: no collection walks it
        gone = weakref.ref(first)
        del first
        publish(store, tmp_path, "b")
        assert h.refresh() and h.version == "v2"
        assert gone() is None  # evicted at the second load, and collected despite the cycle
    finally:
        gc.unfreeze()
