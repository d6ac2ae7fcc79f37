"""The trainer's durable event log: one bad row must not stop every later retrain."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from vidrec.store.eventlog import EventLog
from vidrec.v1 import events_pb2

E = events_pb2


def test_rows_no_clock_can_have_are_skipped_with_their_line(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture
                                                             ) -> None:
    log = EventLog(tmp_path)
    log.append([E.Event(event_id="a", user_id="u", video_id="v", type=E.EVENT_TYPE_WATCH,
                        value=0.5, timestamp=1_700_000_000)])
    with log.path.open("a") as f:  # written by an older trainer that accepted anything
        f.write("u,v,1.7e308,click,,b\n")
        f.write("u,v,10000000000000000000,click,,c\n")
        f.write("u,v,1700000001,teleport,,d\n")
        f.write("u,v,17000")  # a torn last line (killed mid-write)
    with caplog.at_level(logging.WARNING):
        df = log.read()
    assert df.to_dict("records") == [{"user_id": "u", "video_id": "v",
                                      "timestamp": 1_700_000_000, "event": "watch",
                                      "value": 0.5}]
    assert "lines 3, 4, 5, 6" in caplog.text
    # Appending after a torn line still gives readable rows.
    log.append([E.Event(event_id="e", user_id="u2", video_id="v", type=E.EVENT_TYPE_LIKE,
                        timestamp=1_700_000_002)])
    assert "u2" in set(log.read()["user_id"])


def test_a_redelivered_batch_is_read_once(tmp_path: Path) -> None:
    log = EventLog(tmp_path)
    ev = [E.Event(event_id="a", user_id="u", video_id="v", type=E.EVENT_TYPE_LIKE,
                  timestamp=1_700_000_000)]
    log.append(ev)
    log.append(ev)
    assert len(log.read()) == 1
