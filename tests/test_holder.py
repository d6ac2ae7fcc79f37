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
