"""The current-model holder: which versions are loaded, and hot swap without downtime.

A version is loaded fully (model + index) in a background thread and only then becomes
current, so a request never meets a half-loaded model. The previous version stays loaded
(`keep`), so a request that started on version N is finished on version N by every stage:
the gateway passes the candidate's version to the ranker, which asks `get(version)`.
A version whose files fail their staged checksums is never loaded: the holder keeps the
version it serves (or stays NOT_SERVING) and does not try the bad one again.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from vidrec.store.artifacts import ArtifactStore

log = logging.getLogger(__name__)

T = TypeVar("T")


def freeze_heap() -> None:
    """Take what is loaded now out of the cyclic garbage collector's walks.

    A full collection walks every tracked object while holding the GIL: with a 100k-video
    model loaded that took 110 ms, a stall for every request in flight whenever it came.
    Frozen objects are never walked. Unfreezing first lets the garbage of the previous
    freeze (an evicted model version) be collected here: one such pause per model load,
    instead of one at random under traffic.
    """
    t = time.perf_counter()
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    log.info("heap frozen: %d objects outside the GC's walks (%.0f ms)",
             gc.get_freeze_count(), 1000 * (time.perf_counter() - t))


class VersionUnavailable(LookupError):
    """The requested model version is neither loaded nor loadable."""


class CorruptVersion(VersionUnavailable):
    """The version's files do not match their checksums (the store has said which)."""


class ModelHolder(Generic[T]):
    def __init__(self, store: ArtifactStore, load: Callable[[str, Path], T],
                 keep: int = 2, on_swap: Callable[[str], None] | None = None) -> None:
        self.store = store
        self._load = load
        self.keep = max(keep, 1)
        self._models: OrderedDict[str, T] = OrderedDict()
        self._current: str | None = None
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._stop = threading.Event()
        self._on_swap = on_swap

    @property
    def version(self) -> str | None:
        return self._current

    def current(self) -> tuple[str, T]:
        with self._lock:
            if self._current is None:
                raise VersionUnavailable("no model loaded yet")
            return self._current, self._models[self._current]

    def get(self, version: str) -> T:
        """That exact version: loaded already, or loaded now from the artifact store."""
        with self._lock:
            m = self._models.get(version)
        if m is not None:
            return m
        try:
            published = (self.store.path(version) / "manifest.json").exists()
        except ValueError:  # not a version name: '../x', an absolute path
            published = False
        if not published:
            raise VersionUnavailable(f"model version {version[:40]!r} is not published")
        return self._ensure(version, make_current=False)

    def _ensure(self, version: str, make_current: bool) -> T:
        with self._load_lock:
            with self._lock:
                m = self._models.get(version)
            loaded = m is None
            if m is None:
                if not self.store.loadable(version):
                    raise CorruptVersion(f"model version {version!r} failed verification")
                log.info("loading model %s", version)
                m = self._load(version, self.store.path(version))
                log.info("model %s loaded", version)
            with self._lock:
                self._models[version] = m
                self._models.move_to_end(version)
                if make_current:
                    self._current = version
                while len(self._models) > self.keep:
                    old = next(iter(self._models))
                    if old == self._current:
                        self._models.move_to_end(old)
                        continue
                    evicted = self._models.pop(old)
                    close = getattr(evicted, "close", None)
                    if close is not None:
                        close()  # e.g. release the version's index shard
                    del evicted, close  # no reference left for the collection below
                    log.info("model %s unloaded", old)
            if loaded:
                freeze_heap()
        if make_current and self._on_swap:
            self._on_swap(version)
        return m

    def refresh(self) -> bool:
        """Load LATEST if it changed; True when the current version switched."""
        latest = self.store.latest()
        if latest is None or latest == self._current:
            return False
        try:
            self._ensure(latest, make_current=True)
        except CorruptVersion:
            return False  # logged once by the store; keep serving what we have
        log.info("now serving model %s", latest)
        return True

    def watch(self, interval_s: float) -> threading.Thread:
        """Poll LATEST in the background: the hot swap to a newly published version."""

        def loop() -> None:
            while not self._stop.is_set():
                try:
                    self.refresh()
                except Exception:  # a broken new version must not kill the watcher
                    log.exception("could not load the latest model; still serving %s",
                                  self._current)
                self._stop.wait(interval_s)

        t = threading.Thread(target=loop, name="model-watch", daemon=True)
        t.start()
        return t

    def stop(self) -> None:
        self._stop.set()

    def serve_when_loaded(self, set_serving: Callable[[bool], None], interval_s: float,
                          name: str) -> threading.Thread:
        """Load LATEST (retrying until one is published), then report SERVING and watch
        for newer versions; in the background, so the server answers health checks
        (NOT_SERVING) meanwhile."""

        def run() -> None:
            while self._current is None and not self._stop.is_set():
                try:
                    self.refresh()
                except Exception:
                    log.exception("%s: model load failed; retrying", name)
                if self._current is None:
                    self._stop.wait(1.0)
            if self._current is not None:
                set_serving(True)
                log.info("%s SERVING model %s", name, self._current)
                self.watch(interval_s)

        t = threading.Thread(target=run, name="model-load", daemon=True)
        t.start()
        return t
