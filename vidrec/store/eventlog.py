"""The durable event log the periodic retrain learns from: CSV in the data contract's
interactions format plus event_id, appended and fsync'd before effects are applied and
offsets committed. A redelivered batch may be appended twice; readers de-duplicate by
event_id.

Each row also keeps what off-policy evaluation needs (vidrec.evaluation.offpolicy): the
request and position it belongs to, the impression's propensity and exploration pool, the
model version and arm. A log written before those columns existed gains them (empty) on
the next append.
"""

from __future__ import annotations

import csv
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from vidrec.events import MAX_CLOCK_AHEAD_S, NAME_OF, TYPE_OF, VALUED
from vidrec.v1 import events_pb2

log = logging.getLogger(__name__)

COLUMNS = ("user_id", "video_id", "timestamp", "event", "value", "event_id")
LOGGED = ("request_id", "position", "propensity", "model_version", "experiment_arm",
          "exploration_pool")
FILE_COLUMNS = COLUMNS + LOGGED
POOL_SEPARATOR = "|"


class EventLog:
    """`replica`: a trainer replica's own file, events-<replica>.csv, in a directory the
    group shares; reads take every events*.csv there (each replica logs the partitions
    it owns, a retrain learns from all of them)."""

    def __init__(self, root: Path, replica: str = "") -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.path = self.root / (f"events-{replica}.csv" if replica else "events.csv")

    def _files(self) -> list[Path]:
        """This log's file first, then the other replicas' (the first copy of an id wins)."""
        others = sorted(p for p in self.root.glob("events*.csv") if p != self.path)
        return [p for p in (self.path, *others) if p.exists()]

    def append(self, events: Sequence[events_pb2.Event]) -> None:
        if not events:
            return
        new = not self.path.exists()
        if not new:
            self._upgrade()
        with self.path.open("a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(FILE_COLUMNS)
            elif self._torn():
                f.write("\r\n")  # a crash mid-write left a partial row: end it there
            for e in events:
                name = NAME_OF[e.type]
                value = e.value if name in VALUED else ""
                w.writerow((e.user_id, e.video_id, int(e.timestamp), name, value, e.event_id,
                            e.request_id, e.position, e.propensity if e.propensity else "",
                            e.model_version, e.experiment_arm,
                            POOL_SEPARATOR.join(e.exploration_pool)))
            f.flush()
            os.fsync(f.fileno())

    def _upgrade(self) -> None:
        """Rewrite a log with the older header under the current one (new columns empty):
        rows longer than their header would be unreadable. Atomic: a temp file replaces it."""
        with self.path.open(newline="") as f:
            header = next(csv.reader(f), None)
        if header is None or tuple(header) == FILE_COLUMNS:
            return
        df = pd.read_csv(self.path, dtype=str, keep_default_na=False, on_bad_lines="skip",
                         engine="python")
        for c in FILE_COLUMNS:
            if c not in df:
                df[c] = ""
        tmp = self.path.with_suffix(".upgrade.tmp")
        with tmp.open("w", newline="") as f:
            df[list(FILE_COLUMNS)].to_csv(f, index=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        log.info("%s: upgraded to the columns %s", self.path, ",".join(FILE_COLUMNS))

    def _torn(self) -> bool:
        with self.path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                return False
            f.seek(-1, os.SEEK_END)
            return f.read(1) != b"\n"

    def read(self) -> pd.DataFrame:
        """All logged events, de-duplicated by event_id, in the interactions schema.

        A row the event contract would not accept (a torn last line after a crash, a
        timestamp no clock can have, an unknown event name) is skipped with one warning
        naming its line, so no single row can stop every later retrain."""
        return self._frame()[list(COLUMNS[:-1])].reset_index(drop=True)

    def read_logged(self) -> pd.DataFrame:
        """`read()` plus the columns of LOGGED: position as int, propensity as float (NaN
        where not logged), exploration_pool as a tuple of video ids."""
        df = self._frame()
        out = df[list(COLUMNS[:-1]) + list(LOGGED)].reset_index(drop=True)
        out["position"] = pd.to_numeric(out["position"], errors="coerce").fillna(-1).astype(
            "int64")
        out["propensity"] = pd.to_numeric(out["propensity"], errors="coerce")
        out["exploration_pool"] = [tuple(p.split(POOL_SEPARATOR)) if p else ()
                                   for p in out["exploration_pool"]]
        return out

    def _frame(self) -> pd.DataFrame:
        files = self._files()
        if not files:
            return pd.DataFrame(columns=list(FILE_COLUMNS))
        df = pd.concat([pd.read_csv(p, dtype=str, keep_default_na=False, on_bad_lines="skip",
                                    engine="python") for p in files], ignore_index=True)
        for c in FILE_COLUMNS:
            if c not in df:
                df[c] = ""
        ts = pd.to_numeric(df["timestamp"], errors="coerce")
        value = pd.to_numeric(df["value"], errors="coerce")
        limit = time.time() + MAX_CLOCK_AHEAD_S
        ok = (ts.between(0, limit) & df["event"].isin(list(TYPE_OF))
              & (df["user_id"] != "") & (df["video_id"] != "") & (df["event_id"] != ""))
        if not ok.all():
            lines = (np.flatnonzero(~ok.to_numpy()) + 2).tolist()  # header is line 1
            log.warning("%s: skipped %d unreadable event row(s), lines %s", self.path,
                        len(lines), ", ".join(map(str, lines[:10])))
        df = df[ok].assign(timestamp=ts[ok].astype("int64"), value=value[ok])
        return df.drop_duplicates("event_id", keep="first")

    def event_ids(self) -> list[str]:
        """Every logged event id, in log order (a redelivered batch's ids appear twice)."""
        return [e for e, _ in self.event_users()]

    def event_users(self) -> list[tuple[str, str]]:
        """(event id, user id) of every logged event, in log order."""
        out: list[tuple[str, str]] = []
        for p in self._files():
            df = pd.read_csv(p, dtype=str, keep_default_na=False, on_bad_lines="skip",
                             engine="python", usecols=["event_id", "user_id"])
            out += [(e, u) for e, u in zip(df["event_id"], df["user_id"], strict=True) if e]
        return out

    def count(self) -> int:
        if not self.path.exists():
            return 0
        with self.path.open() as f:
            return max(0, sum(1 for _ in f) - 1)
