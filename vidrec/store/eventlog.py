"""The durable event log the periodic retrain learns from: CSV in the data contract's
interactions format plus event_id, appended and fsync'd before effects are applied and
offsets committed. A redelivered batch may be appended twice; readers de-duplicate by
event_id.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from vidrec.events import NAME_OF, VALUED
from vidrec.v1 import events_pb2

COLUMNS = ("user_id", "video_id", "timestamp", "event", "value", "event_id")


class EventLog:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.path = self.root / "events.csv"

    def append(self, events: Sequence[events_pb2.Event]) -> None:
        if not events:
            return
        new = not self.path.exists()
        with self.path.open("a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(COLUMNS)
            for e in events:
                name = NAME_OF[e.type]
                value = e.value if name in VALUED else ""
                w.writerow((e.user_id, e.video_id, int(e.timestamp), name, value, e.event_id))
            f.flush()
            os.fsync(f.fileno())

    def read(self) -> pd.DataFrame:
        """All logged events, de-duplicated by event_id, in the interactions schema."""
        if not self.path.exists():
            return pd.DataFrame(columns=list(COLUMNS[:-1]))
        df = pd.read_csv(self.path, dtype={"user_id": str, "video_id": str, "event": str,
                                           "event_id": str})
        df = df.drop_duplicates("event_id", keep="first")
        df["timestamp"] = df["timestamp"].astype("int64")
        df["value"] = pd.to_numeric(df["value"], errors="coerce")
        return df[list(COLUMNS[:-1])].reset_index(drop=True)

    def count(self) -> int:
        if not self.path.exists():
            return 0
        with self.path.open() as f:
            return max(0, sum(1 for _ in f) - 1)
