"""A short fault-injection run (benchmarks/faults.py) against the real processes: a
supervised, durable one-machine stack under load while Redis, the broker and the trainer
are killed. What it asserts is data safety: every event a client was told is logged is
applied exactly once. Latency and recovery figures belong to `make bench`, not here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.mark.timeout(900)
def test_killed_stores_and_trainer_lose_nothing_and_double_nothing(tmp_path: Path) -> None:
    from benchmarks.faults import main

    rows = ["restart redis (AOF)", "restart broker", "kill trainer x3"]
    assert main(["--only", ",".join(rows), "--rate", "10", "--seconds", "8", "--trainer-kills", "3",
                 "--fault-at", "2", "--fault-for", "4", "--out", str(tmp_path)]) == 0
    got = {r["fault"]: r for r in json.loads((tmp_path / "faults.json").read_text())}
    assert set(got) == set(rows)
    for name, r in got.items():
        assert r["answered"] > 0, r
        assert r["acked_after_fault"] > 0, r  # events are taken again after the fault
        # Compared with the row's counter in Redis, which the apply script increments once
        # per applied event.
        assert (r["lost"], r["doubled"]) == (0, 0), (name, r)
