"""Benchmark helpers whose figures go into closing notes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from benchmarks.serving import cpu_seconds


def test_cpu_seconds_counts_a_working_child_of_an_idle_shell() -> None:
    """The embedded Redis and Kafka run under a watchdog shell: the CPU of the live server
    below it must be counted (the shell's own counters stay at zero until it exits)."""
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 5: pass"
    p = subprocess.Popen(["sh", "-c", f'"{sys.executable}" -c "{burn}"; true'],
                         start_new_session=True)
    try:
        time.sleep(1.5)
        assert cpu_seconds(p.pid) >= 0.7  # the child has been burning for ~1.5 s
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
