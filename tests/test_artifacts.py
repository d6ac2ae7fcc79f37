"""The artifact store across crashes: publish history, rollback target, pruning,
checksums and an unreadable LATEST (issue 17, defect 4). Real files in tmp dirs."""

from __future__ import annotations

import itertools
import json
import logging
import types
from pathlib import Path

import pytest

from vidrec import cli_ops
from vidrec.serving.holder import ModelHolder, VersionUnavailable
from vidrec.store.artifacts import (
    CHECKSUMS,
    LATEST,
    ROLLBACK,
    ArtifactStore,
    CorruptArtifact,
)

LOGGER = "vidrec.store.artifacts"


def model_dir(tmp: Path, name: str) -> Path:
    """A model directory as training writes one: a manifest and weights, one nested."""
    d = tmp / "models" / name
    (d / "sub").mkdir(parents=True)
    (d / "manifest.json").write_text(json.dumps({"version": name}))
    (d / "arrays.bin").write_bytes(bytes(range(256)) * 4)
    (d / "sub" / "vocab.json").write_text(json.dumps({"name": name}))
    return d


def publish(store: ArtifactStore, tmp: Path, name: str) -> str:
    """What `vidrec publish` does with the artifact store (stage, switch, prune)."""
    v = store.stage(model_dir(tmp, name))
    store.verify(v)
    store.set_latest(v)
    store.prune()
    return v


def crashed_publish(store: ArtifactStore, tmp: Path, name: str) -> str:
    """A publish killed after staging: never reaches set_latest or prune."""
    return store.stage(model_dir(tmp, name))


class Loaded:
    def __init__(self, version: str) -> None:
        self.version = version


def errors(caplog: pytest.LogCaptureFixture, level: int = logging.ERROR) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level]


def test_a_killed_publish_is_neither_rollback_target_nor_kept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ArtifactStore(tmp_path / "art", keep=2)
    publish(store, tmp_path, "a")
    assert publish(store, tmp_path, "b") == "v2"
    assert crashed_publish(store, tmp_path, "c") == "v3"
    assert store.previous() == "v1"
    v4 = store.stage(model_dir(tmp_path, "d"))
    store.set_latest(v4)
    assert store.previous() == "v2"  # served before v4; v3 never served
    assert store.staged() == ["v3"]
    assert store.prune() == ["v1", "v3"]
    assert store.versions() == ["v2", "v4"] and store.staged() == []

    # `vidrec rollback` goes to v2 and says so in HISTORY
    aliases: list[str] = []

    class Index:
        def set_alias(self, name: str) -> None:
            aliases.append(name)

        def close(self) -> None:
            pass

    settings = types.SimpleNamespace(artifact_root=str(store.root), qdrant_url="",
                                     index_root=str(tmp_path / "index"))
    monkeypatch.setattr(cli_ops, "_ops_settings", lambda: settings)
    monkeypatch.setattr("vidrec.store.index.open_index", lambda *_a: Index())
    assert cli_ops.cmd_rollback(types.SimpleNamespace()) == 0
    assert store.latest() == "v2" and aliases == ["videos_v2"]
    assert store.history()[-1].version == "v2" and store.history()[-1].action == ROLLBACK
    assert store.previous() == "v4"  # a second rollback undoes the first


OPS = ("publish", "rollback", "crash")


@pytest.mark.parametrize("ops", list(itertools.product(OPS, repeat=3)),
                         ids=lambda ops: "-".join(ops))
def test_prune_never_removes_the_current_or_the_previously_served_version(
        tmp_path: Path, ops: tuple[str, ...]) -> None:
    store = ArtifactStore(tmp_path / "art", keep=2)
    served = [publish(store, tmp_path, "m0"), publish(store, tmp_path, "m1")]
    for i, op in enumerate(ops):
        if op == "publish":
            served.append(publish(store, tmp_path, f"p{i}"))
        elif op == "crash":
            crashed_publish(store, tmp_path, f"c{i}")
        elif (prev := store.previous()) is not None:
            store.set_latest(prev, action=ROLLBACK)
            store.prune()
            served.append(prev)
        cur = served[-1]
        before = next(v for v in reversed(served) if v != cur)
        assert store.latest() == cur and store.previous() == before, (ops[:i + 1], served)
        store.prune()
        assert {cur, before} <= set(store.versions()), (ops[:i + 1], served)
        assert store.previous() == before
        # what a crash left is gone once something newer was published
        newest = max(int(v[1:]) for v in served)
        assert all(int(v[1:]) > newest for v in store.staged())


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_model_file_is_refused_and_the_good_version_keeps_serving(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str) -> None:
    store = ArtifactStore(tmp_path / "art", keep=2)
    loads: list[str] = []

    def load(v: str, _p: Path) -> Loaded:
        loads.append(v)
        return Loaded(v)

    h: ModelHolder[Loaded] = ModelHolder(store, load, keep=2)
    publish(store, tmp_path, "a")
    assert h.refresh() and h.version == "v1"

    v2 = store.stage(model_dir(tmp_path, "b"))
    f = store.path(v2) / "arrays.bin"
    data = bytearray(f.read_bytes())
    if damage == "flip":
        data[100] ^= 0x01
    else:
        del data[-10:]
    f.write_bytes(bytes(data))
    with pytest.raises(CorruptArtifact, match="arrays.bin") as exc:
        store.verify(v2)
    assert exc.value.file == "arrays.bin" and exc.value.version == v2
    assert store.verify("v1") is True

    store.set_latest(v2)  # as if LATEST were switched to it anyway
    caplog.set_level(logging.INFO)
    caplog.clear()
    assert not h.refresh()
    assert not h.refresh()  # the next poll does not try it again
    assert h.current()[0] == "v1" and loads == ["v1"]
    bad = errors(caplog)
    assert len(bad) == 1 and "v2" in bad[0] and "arrays.bin" in bad[0], bad
    with pytest.raises(VersionUnavailable):
        h.get(v2)
    assert len(errors(caplog)) == 1


def test_a_holder_with_only_a_corrupt_version_stays_not_serving(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = ArtifactStore(tmp_path / "art")
    v1 = store.stage(model_dir(tmp_path, "a"))
    (store.path(v1) / "sub" / "vocab.json").write_text("{}")
    store.set_latest(v1)
    h: ModelHolder[Loaded] = ModelHolder(store, lambda v, _p: Loaded(v))
    assert not h.refresh() and not h.refresh()
    with pytest.raises(VersionUnavailable):
        h.current()
    bad = errors(caplog)
    assert len(bad) == 1 and "sub/vocab.json" in bad[0]


def test_a_version_staged_before_checksums_loads_with_one_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = ArtifactStore(tmp_path / "art")
    v1 = store.stage(model_dir(tmp_path, "a"))
    (store.path(v1) / CHECKSUMS).unlink()
    store.set_latest(v1)
    assert store.verify(v1) is False
    h: ModelHolder[Loaded] = ModelHolder(store, lambda v, _p: Loaded(v))
    assert h.refresh() and h.version == v1
    warned = errors(caplog, logging.WARNING)
    assert len(warned) == 1 and CHECKSUMS in warned[0] and not errors(caplog)


@pytest.mark.parametrize("pointer", [b"\x00\xffnot a version\n", b"v9", b"../v1", None],
                         ids=["garbage", "missing-version", "path", "no-file"])
def test_an_unreadable_latest_falls_back_to_the_last_served_version(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, pointer: bytes | None) -> None:
    store = ArtifactStore(tmp_path / "art")
    publish(store, tmp_path, "a")
    publish(store, tmp_path, "b")
    crashed_publish(store, tmp_path, "c")  # v3 on disk, never served: not a fallback
    if pointer is None:
        (store.root / LATEST).unlink()
    else:
        (store.root / LATEST).write_bytes(pointer)
    assert store.latest() == "v2"
    assert store.latest() == "v2"  # polled again: said once
    bad = errors(caplog)
    assert len(bad) == 1 and "LATEST" in bad[0] and "v2" in bad[0], bad
    assert store.previous() == "v1"
    h: ModelHolder[Loaded] = ModelHolder(store, lambda v, _p: Loaded(v))
    assert h.refresh() and h.version == "v2"
    assert len(errors(caplog)) == 1

    store.set_latest("v3")  # repaired by the next switch; a new fault is said again
    assert store.latest() == "v3" and store.previous() == "v2"
    (store.root / LATEST).write_text("junk")
    assert store.latest() == "v3" and len(errors(caplog)) == 2


def test_no_history_and_no_latest_is_still_nothing(tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    store = ArtifactStore(tmp_path / "art")
    assert store.latest() is None and store.previous() is None
    crashed_publish(store, tmp_path, "a")
    assert store.latest() is None and store.prune() == [] and not caplog.records


def test_a_torn_history_line_is_skipped_and_does_not_swallow_the_next(
        tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "art")
    publish(store, tmp_path, "a")
    publish(store, tmp_path, "b")
    with (store.root / "HISTORY").open("a") as f:
        f.write('{"version": "v2", "at": 1')  # killed mid-append
    assert [e.version for e in store.history()] == ["v1", "v2"]
    publish(store, tmp_path, "c")
    assert [e.version for e in store.history()] == ["v1", "v2", "v3"]
    assert store.previous() == "v2"


def test_a_crash_between_latest_and_history_is_repaired(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "art")
    publish(store, tmp_path, "a")
    publish(store, tmp_path, "b")
    v3 = crashed_publish(store, tmp_path, "c")
    (store.root / LATEST).write_text(v3)  # LATEST replaced, HISTORY not yet appended
    assert store.latest() == v3 and store.previous() == "v2"
    assert store.prune() == ["v1"]
    v4 = store.stage(model_dir(tmp_path, "d"))
    store.set_latest(v4)
    assert [e.version for e in store.history()] == ["v1", "v2", "v3", "v4"]
    assert store.previous() == "v3"


def test_a_store_from_before_history_keeps_its_rollback_target(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "art")
    for name in "abc":
        store.stage(model_dir(tmp_path, name))
    (store.root / LATEST).write_text("v2")  # written by the old code: no HISTORY
    assert store.previous() == "v1" and store.staged() == ["v3"]
    assert store.prune() == []  # v3 may be a publish in progress
    v4 = store.stage(model_dir(tmp_path, "d"))
    store.set_latest(v4)
    assert [e.version for e in store.history()] == ["v1", "v2", "v4"]
    assert store.previous() == "v2" and store.prune() == ["v1", "v3"]


def test_version_numbers_are_never_reused(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "art", keep=1)
    publish(store, tmp_path, "a")
    v2 = publish(store, tmp_path, "b")
    assert store.versions() == [v2]
    import shutil
    shutil.rmtree(store.path(v2))  # even if an operator deletes the newest by hand
    assert store.next_version() == "v3"


def test_stage_writes_a_checksum_for_every_file_and_leaves_no_temp_dir(
        tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "art")
    v1 = store.stage(model_dir(tmp_path, "a"))
    sums = json.loads((store.path(v1) / CHECKSUMS).read_text())["sha256"]
    assert sorted(sums) == ["arrays.bin", "manifest.json", "sub/vocab.json"]
    assert sorted(p.name for p in store.root.iterdir()) == ["v1"]
    assert store.verify(v1) is True
    (store.path(v1) / "sub" / "vocab.json").unlink()
    with pytest.raises(CorruptArtifact, match="sub/vocab.json: missing"):
        store.verify(v1)
