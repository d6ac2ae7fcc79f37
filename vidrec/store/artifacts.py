"""Published model versions on disk: `<root>/v{N}/`, a LATEST pointer and a HISTORY.

Gorse's pattern: the publisher writes a complete directory under an ever-increasing id,
then replaces LATEST atomically (write temp + os.replace); serving polls LATEST and never
sees a half-written version.

A directory with a manifest is only *staged*: a publish killed before `set_latest` leaves
one behind, and nothing about the directory tells it apart from a version that served.
So every switch of LATEST is also appended to HISTORY (JSON lines, fsynced); "published"
means "was LATEST once". Rollback, pruning and the fallback for an unreadable LATEST all
read HISTORY, never version numbers alone. `stage` also writes a sha256 per file
(CHECKSUMS.json) so a truncated or altered model is refused instead of served.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

LATEST = "LATEST"
HISTORY = "HISTORY"
MANIFEST = "manifest.json"
CHECKSUMS = "CHECKSUMS.json"
PUBLISH = "publish"
ROLLBACK = "rollback"
_ACTIONS = (PUBLISH, ROLLBACK)
_VERSION = re.compile(r"^v(\d+)\Z")
_STAGING = re.compile(r"^\.v(\d+)\.")  # stage()'s temp dirs: `.v{N}.<random>`
_CHUNK = 1 << 20


class CorruptArtifact(ValueError):
    """A version's file does not match the checksum written when it was staged."""

    def __init__(self, version: str, file: str, reason: str) -> None:
        super().__init__(f"model version {version}: {file}: {reason}")
        self.version = version
        self.file = file
        self.reason = reason


@dataclass(frozen=True)
class HistoryEntry:
    version: str
    at: float
    action: str


def _num(version: str) -> int:
    m = _VERSION.match(version)
    return int(m.group(1)) if m else -1


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    """Make a rename or a new file in `path` survive a power cut, not only a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durable(path: Path, text: str) -> None:
    with path.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


class ArtifactStore:
    def __init__(self, root: str | Path, keep: int = 2) -> None:
        self.root = Path(root)
        self.keep = max(keep, 1)
        self._lock = threading.Lock()
        self._pointer_reported: str | None = None  # the bad LATEST already logged
        self._refused: set[str] = set()  # corrupt versions already logged
        self._unchecked: set[str] = set()  # versions without checksums already logged

    # -- what is on disk ------------------------------------------------------------

    def versions(self) -> list[str]:
        """Complete versions (with a manifest), published or only staged, oldest first."""
        if not self.root.exists():
            return []
        found = []
        for p in self.root.iterdir():
            m = _VERSION.match(p.name)
            if m and (p / MANIFEST).exists():
                found.append((int(m.group(1)), p.name))
        return [name for _, name in sorted(found)]

    def path(self, version: str) -> Path:
        """The directory of `version`; a name that is not v<N> (an absolute path, '../x',
        a request's model_version) never reaches the filesystem."""
        if not _VERSION.match(version):
            raise ValueError(f"not a version name: {version[:40]!r}")
        return self.root / version

    def _on_disk(self, version: str) -> bool:
        return bool(_VERSION.match(version)) and (self.root / version / MANIFEST).exists()

    def published(self) -> list[str]:
        """Versions on disk that were LATEST at some time, oldest first."""
        served = {e.version for e in self.history()}
        if (cur := self.latest()) is not None:
            served.add(cur)
        return [v for v in self.versions() if v in served]

    def staged(self) -> list[str]:
        """Versions on disk that never became LATEST: a publish in progress, or one that
        was killed before `set_latest`."""
        published = set(self.published())
        return [v for v in self.versions() if v not in published]

    # -- LATEST and HISTORY -----------------------------------------------------------

    def _pointer(self) -> tuple[str | None, str | None]:
        """(version LATEST names if it is on disk, else None; what is wrong otherwise)."""
        f = self.root / LATEST
        try:
            raw = f.read_text(errors="replace").strip()
        except FileNotFoundError:  # never published, unless HISTORY says otherwise
            return None, ("LATEST is missing" if (self.root / HISTORY).exists() else None)
        except OSError as exc:
            return None, f"LATEST is unreadable ({exc})"
        if self._on_disk(raw):
            return raw, None
        shown = raw if len(raw) <= 40 else raw[:40] + "..."
        return None, f"LATEST names {shown!r}, which is not a version on disk"

    def history(self) -> list[HistoryEntry]:
        """Every switch of LATEST, oldest first.

        A line that does not parse (the torn tail of an append a crash cut short) is
        skipped. A store written before HISTORY existed reads as if every version up to
        LATEST was published in order, which is what rollback assumed then.
        """
        f = self.root / HISTORY
        try:
            lines = f.read_bytes().decode(errors="replace").splitlines()
        except FileNotFoundError:
            return self._legacy_history()
        entries = []
        for line in lines:
            try:
                d = json.loads(line)
                entry = HistoryEntry(str(d["version"]), float(d["at"]), str(d["action"]))
            except (ValueError, KeyError, TypeError):
                continue
            if _VERSION.match(entry.version):
                entries.append(entry)
        return entries

    def _legacy_history(self) -> list[HistoryEntry]:
        cur, _ = self._pointer()
        if cur is None:
            return []
        return [HistoryEntry(v, (self.root / v).stat().st_mtime, PUBLISH)
                for v in self.versions() if _num(v) <= _num(cur)]

    def latest(self) -> str | None:
        """The version to serve: what LATEST names, or, when LATEST is garbage or names a
        version that is gone, the newest one in HISTORY still on disk (said once, as an
        ERROR: serving keeps running but LATEST needs an operator)."""
        cur, problem = self._pointer()
        if problem is None:
            self._pointer_reported = None
            return cur
        fallback = next((e.version for e in reversed(self.history())
                         if self._on_disk(e.version)), None)
        if self._pointer_reported != problem:
            self._pointer_reported = problem
            log.error("%s: %s; using %s, the newest published version on disk",
                      self.root, problem, fallback or "nothing (no published version left)")
        return fallback

    def _append_history(self, version: str, action: str, at: float | None = None) -> None:
        """One fsynced line; a torn previous line is closed first so it cannot glue
        itself onto this one (the reader then skips just the fragment)."""
        f = self.root / HISTORY
        with f.open("ab") as out:
            if out.tell() > 0:
                with f.open("rb") as inp:
                    inp.seek(-1, os.SEEK_END)
                    if inp.read(1) != b"\n":
                        out.write(b"\n")
            line = {"version": version, "at": time.time() if at is None else at, "action": action}
            out.write((json.dumps(line) + "\n").encode())
            out.flush()
            os.fsync(out.fileno())

    def set_latest(self, version: str, action: str = PUBLISH) -> None:
        """Point LATEST at `version` and record it in HISTORY.

        LATEST is replaced before HISTORY is appended: a crash in between leaves HISTORY
        one switch behind, which the next `set_latest` repairs (the LATEST it replaces is
        recorded first) and which `previous()` and `prune()` already allow for, since they
        count LATEST itself as served. The other order could record a version as served
        that never was.
        """
        if action not in _ACTIONS:
            raise ValueError(f"action must be one of {_ACTIONS}, not {action!r}")
        if not self._on_disk(version):
            raise FileNotFoundError(f"{self.root / version}: no such published version")
        cur, _ = self._pointer()
        if not (self.root / HISTORY).exists():
            for e in self._legacy_history():  # adopt a store from before HISTORY
                self._append_history(e.version, e.action, e.at)
        elif cur is not None and ((h := self.history()) == [] or h[-1].version != cur):
            self._append_history(cur, PUBLISH)
        tmp = self.root / f".{LATEST}.tmp"
        _write_durable(tmp, version)
        os.replace(tmp, self.root / LATEST)
        _fsync_dir(self.root)
        self._append_history(version, action)

    def _served_recency(self) -> list[str]:
        """Distinct published versions still on disk, the current one first, then in the
        order they last stopped being LATEST."""
        order: list[str] = []
        cur = self.latest()
        if cur is not None:
            order.append(cur)
        for e in reversed(self.history()):
            if e.version not in order and self._on_disk(e.version):
                order.append(e.version)
        return order

    def previous(self) -> str | None:
        """The version that was LATEST before the current one (what rollback goes back
        to), skipping versions no longer on disk; never one that was only staged.

        After a rollback this is the version rolled back from, so a second rollback
        undoes the first rather than going further back.
        """
        order = self._served_recency()
        return order[1] if len(order) > 1 else None

    # -- staging, checksums, pruning ---------------------------------------------------

    def next_version(self) -> str:
        """Above every number on disk or in HISTORY, so a number is never reused for a
        different model (its vector collection and loaded copies are named by it)."""
        nums = [e for v in self.history() if (e := _num(v.version)) >= 0]
        if self.root.exists():
            nums += [int(m.group(1)) for p in self.root.iterdir()
                     if (m := _VERSION.match(p.name))]
        return f"v{max(nums, default=0) + 1}"

    def stage(self, model_dir: Path) -> str:
        """Copy a model directory in as the next version (not yet LATEST); return it.

        The copy, its manifest and its checksums are complete before the directory gets
        its final name, so a reader never sees a version without them.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        version = self.next_version()
        tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=self.root))
        shutil.copytree(model_dir, tmp, dirs_exist_ok=True)
        (tmp / CHECKSUMS).unlink(missing_ok=True)  # the source's own, if any, is not ours
        manifest = json.loads((tmp / MANIFEST).read_text())
        manifest["trained_as"] = manifest.get("version")
        manifest["version"] = version
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
        sums = {}
        for p in sorted(tmp.rglob("*")):
            if p.is_file():
                with p.open("rb") as f:
                    os.fsync(f.fileno())
                sums[p.relative_to(tmp).as_posix()] = _sha256(p)
        _write_durable(tmp / CHECKSUMS, json.dumps({"sha256": sums}, indent=2))
        os.replace(tmp, self.root / version)
        _fsync_dir(self.root)
        return version

    def verify(self, version: str) -> bool:
        """Check every file of `version` against the sha256 written when it was staged.

        True when all match; False when the version predates checksums (nothing to check
        against). Raises CorruptArtifact naming the first file that is missing, altered
        or truncated.
        """
        d = self.root / version
        if not (d / MANIFEST).exists():
            raise CorruptArtifact(version, MANIFEST, "missing")
        try:
            raw = (d / CHECKSUMS).read_text()
        except FileNotFoundError:
            return False
        try:
            sums = json.loads(raw)["sha256"]
            if not isinstance(sums, dict):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise CorruptArtifact(version, CHECKSUMS, "unreadable") from None
        if MANIFEST not in sums:
            raise CorruptArtifact(version, CHECKSUMS, f"lists no {MANIFEST}")
        for rel, want in sums.items():
            p = d / rel
            if Path(rel).is_absolute() or ".." in Path(rel).parts:
                raise CorruptArtifact(version, CHECKSUMS, f"names a path outside: {rel!r}")
            if not p.is_file():
                raise CorruptArtifact(version, rel, "missing")
            if _sha256(p) != want:
                raise CorruptArtifact(version, rel, "sha256 does not match the staged file")
        return True

    def loadable(self, version: str) -> bool:
        """Whether to load `version` for serving: `verify`, with what it finds said once.

        A corrupt version is refused from then on without hashing it again (a version
        directory never changes after staging), so a poller asking every few seconds
        neither spins the disk nor floods the log. One from before checksums is accepted
        with a WARNING.
        """
        with self._lock:
            if version in self._refused:
                return False
        try:
            checked = self.verify(version)
        except CorruptArtifact as exc:
            with self._lock:
                first = version not in self._refused
                self._refused.add(version)
            if first:
                log.error("refusing model version %s: %s: %s (staged checksum, %s); "
                          "keeping the version already served", version, exc.file,
                          exc.reason, self.root / version / CHECKSUMS)
            return False
        if not checked:
            with self._lock:
                first = version not in self._unchecked
                self._unchecked.add(version)
            if first:
                log.warning("model version %s has no %s (staged before checksums); "
                            "loading it unverified", version, CHECKSUMS)
        return True

    def prune(self, protect: set[str] | None = None) -> list[str]:
        """Delete versions nobody will serve again; return the ones deleted.

        Kept: the current version, the last `keep` distinct versions served (current,
        previous, ...: the rollback target, and what other processes still serve until
        their next LATEST poll, see ModelHolder's `keep`), `protect`, and staged versions
        newer than every published one (a publish in progress). Deleted: older served
        versions, and staged versions older than the newest published one, which are the
        debris of a publish killed before `set_latest` and must not crowd the served
        versions out of `keep` (nor become a rollback target). Publishes are not meant
        to run concurrently: a slower one whose version got overtaken is deleted here and
        fails loudly at its `set_latest`.
        """
        keep = set(self._served_recency()[:self.keep]) | (protect or set())
        served = {e.version for e in self.history()}
        if (cur := self.latest()) is not None:
            keep.add(cur)
            served.add(cur)
        newest_served = max((_num(v) for v in served), default=-1)
        removed = []
        for v in self.versions():
            if v in keep or (v not in served and _num(v) > newest_served):
                continue
            shutil.rmtree(self.root / v, ignore_errors=True)
            removed.append(v)
            log.info("pruned %s version %s", "published" if v in served else
                     "never-published", v)
        if self.root.exists():
            for p in self.root.iterdir():
                m = _STAGING.match(p.name)
                if m and p.is_dir() and int(m.group(1)) <= newest_served:
                    shutil.rmtree(p, ignore_errors=True)  # a stage() cut short mid-copy
        return removed
