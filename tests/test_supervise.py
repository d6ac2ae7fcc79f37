"""The one-machine stack restarts what crashes, and gives up on a crash loop."""

from __future__ import annotations

import os
from pathlib import Path

from vidrec.stack import MAX_RESTARTS, ServiceProcess, Stack


def test_a_crash_loop_is_restarted_a_bounded_number_of_times(tmp_path: Path) -> None:
    stack = Stack(tmp_path)
    # `python -m services.no_such_service` exits at once with an error: a crash loop.
    sp = ServiceProcess("no_such_service", dict(os.environ), tmp_path / "x.log")
    stack.services["x"] = sp
    sp.start()
    restarts = 0
    for i in range(MAX_RESTARTS + 3):
        assert sp.proc is not None
        sp.proc.wait(30)
        restarts += len(stack.supervise(now=float(i)))
    assert restarts == MAX_RESTARTS  # then left down
    assert not sp.alive()
    # Out of the window, it gets another chance.
    assert stack.supervise(now=1000.0) == ["x"]
    sp.stop()
