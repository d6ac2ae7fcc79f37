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


def test_profile_logit_learns_what_each_profile_value_likes_and_popularity() -> None:
    """Women like w1, men like m1; p1 is popular with both. A new woman gets w1 before m1,
    a new man the reverse, and both get p1 before the video nobody watched."""
    import pandas as pd

    from benchmarks import profile_logit

    users = pd.DataFrame({"user_id": [f"u{i}" for i in range(12)],
                          "gender": ["F"] * 5 + ["M"] * 5 + ["F", "M"]})
    rows = []
    for i in range(10):  # u10 (F) and u11 (M) are the cold users
        g = "w1" if i < 5 else "m1"
        rows += [(f"u{i}", g, 1), (f"u{i}", "p1", 2)]
    inter = pd.DataFrame([(u, v, t, "like", 1.0) for u, v, t in rows],
                         columns=["user_id", "video_id", "timestamp", "event", "value"])
    model = profile_logit.fit(inter, users, ["w1", "m1", "p1", "none"], l2=1e-4)
    recs = model.recommend(["u10", "u11"], 4)
    assert recs["u10"].index("w1") < recs["u10"].index("m1")
    assert recs["u11"].index("m1") < recs["u11"].index("w1")
    for r in recs.values():
        assert r.index("p1") < r.index("none")


def test_ease_recommends_what_co_occurs_and_never_what_was_seen() -> None:
    """EASE's closed form: users who watched a also watched b, so a user with a alone gets b
    first; their own a never comes back."""
    import pandas as pd

    from benchmarks.peers import fit_ease, recommend_ease

    rows = []
    for u in range(20):
        rows += [(f"u{u}", "a"), (f"u{u}", "b")]
    for u in range(20, 30):
        rows += [(f"u{u}", "c"), (f"u{u}", "d")]
    rows += [("new", "a")]
    train = pd.DataFrame([{"user_id": u, "video_id": v, "event": "rating", "value": 5.0,
                           "timestamp": float(i)} for i, (u, v) in enumerate(rows)])
    recs = recommend_ease(fit_ease(train, {"l2": 1.0}), ["new", "nobody"], 2)
    assert recs["new"][0] == "b" and "a" not in recs["new"]
    assert recs["nobody"] == []


def test_sasrec_learns_what_comes_next_and_never_returns_what_was_seen() -> None:
    """Every user watches a -> b -> c -> d in order (or e -> f -> g -> h); a user whose
    sequence stops at b must get c first, and never a or b again."""
    import pandas as pd

    from benchmarks.peers import fit_sasrec, recommend_sasrec

    rows = []
    for u in range(40):
        chain = "abcd" if u % 2 else "efgh"
        rows += [(f"u{u}", v) for v in chain]
    rows += [("new", "a"), ("new", "b"), ("other", "e"), ("other", "f"), ("other", "g")]
    train = pd.DataFrame([{"user_id": u, "video_id": v, "event": "rating", "value": 5.0,
                           "timestamp": float(i)} for i, (u, v) in enumerate(rows)])
    m = fit_sasrec(train, {"dim": 16, "max_len": 8, "epochs": 60, "dropout": 0.0,
                           "lr": 5e-3, "batch": 16})
    recs = recommend_sasrec(m, ["new", "other", "nobody"], 2)
    assert recs["new"][0] == "c" and not {"a", "b"} & set(recs["new"])
    assert recs["other"][0] == "h"
    assert recs["nobody"] == []


def test_pooled_runs_weigh_by_precision_and_narrow_by_root_n() -> None:
    import pytest

    from benchmarks.ab_pool import pooled
    from vidrec.abtest import Z95, Interval

    one = Interval(0.02, 0.02 - Z95 * 0.01, 0.02 + Z95 * 0.01)  # standard error 1%
    p = pooled([one, one, one, one])
    assert p.value == pytest.approx(0.02)
    assert (p.hi - p.lo) / 2 == pytest.approx(Z95 * 0.01 / 2)  # 4 runs: half the width
    # A run twice as precise counts four times as much.
    sharp = Interval(0.0, -Z95 * 0.005, Z95 * 0.005)
    assert pooled([one, sharp]).value == pytest.approx(0.02 * 1 / 5)
