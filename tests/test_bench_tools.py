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


def test_cold_summary_ratio_is_against_each_splits_best_peer() -> None:
    from benchmarks.cold import summarise

    per_seed = {
        0: {"users": 90.0, "vidrec two_tower": 0.30, "vidrec hybrid": 0.44,
            "vidrec popularity": 0.40, "lightfm_warp": 0.40, "popularity (peer)": 0.41},
        1: {"users": 95.0, "vidrec two_tower": 0.36, "vidrec hybrid": 0.42,
            "vidrec popularity": 0.38, "lightfm_warp": 0.42, "popularity (peer)": 0.39},
    }
    s = summarise(per_seed)
    assert abs(s["vidrec hybrid"]["mean"] - 0.43) < 1e-12
    # Sample standard deviation of (0.44, 0.42) is 0.01414; over sqrt(2): 0.01.
    assert abs(s["vidrec hybrid"]["se"] - 0.01) < 1e-9
    # Split 0's best peer is popularity (0.41), split 1's LightFM (0.42).
    assert s["vidrec hybrid / best peer"]["per_split"] == [round(0.44 / 0.41, 4), 1.0]
    assert abs(s["vidrec hybrid / best peer"]["ratio_of_means"] - 0.43 / 0.41) < 1e-12
    assert "users" not in s
