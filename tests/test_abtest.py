"""The A/B readout: intervals with users as the unit, verdicts, and the sample size."""

from __future__ import annotations

import numpy as np
import pytest

from vidrec.abtest import (
    NOT_DISTINGUISHABLE,
    RatioSums,
    bootstrap,
    compare_delta,
    compare_intervals,
    per_user_variance,
    readout,
    sums_of,
    users_needed,
    verdict,
)
from vidrec.simulate import SimResult, Window, read_out


def _arm(rng: np.random.Generator, users: int, ctr: float, spread: float
         ) -> tuple[np.ndarray, np.ndarray]:
    """Users with their own click rates around `ctr` (taste), 10 impressions each."""
    rates = np.clip(rng.normal(ctr, spread, users), 0.0, 1.0)
    shown = np.full(users, 10.0)
    return rng.binomial(10, rates).astype(float), shown


def test_bootstrap_interval_covers_the_ratio_and_widens_with_user_heterogeneity() -> None:
    rng = np.random.default_rng(0)
    x, y = _arm(rng, 2000, 0.14, 0.0)
    iv, reps = bootstrap(x, y, 2000, seed=1)
    assert iv.lo < iv.value < iv.hi and iv.value == pytest.approx(x.sum() / y.sum())
    # Homogeneous users: the binomial standard error over 20,000 impressions.
    se = np.sqrt(0.14 * 0.86 / 20_000)
    assert (iv.hi - iv.lo) / (2 * 1.96) == pytest.approx(se, rel=0.15)
    # The same mean with users that differ in taste: impressions are no longer independent
    # and the user-level interval is wider than the naive binomial one.
    hx, hy = _arm(np.random.default_rng(2), 2000, 0.14, 0.12)
    hiv, _ = bootstrap(hx, hy, 2000, seed=1)
    assert (hiv.hi - hiv.lo) > 1.25 * (iv.hi - iv.lo)


def test_delta_method_matches_the_user_bootstrap() -> None:
    rng = np.random.default_rng(3)
    x, y = _arm(rng, 1500, 0.2, 0.1)
    y = y + rng.integers(0, 10, len(y))  # users see different numbers of videos
    iv, _ = bootstrap(x, y, 4000, seed=0)
    d = sums_of(x, y).interval()
    assert d.value == pytest.approx(iv.value)
    assert d.hi - d.lo == pytest.approx(iv.hi - iv.lo, rel=0.1)


def test_verdicts() -> None:
    assert verdict(0.01, 0.05) == "better"
    assert verdict(-0.05, -0.01) == "worse"
    assert verdict(-0.01, 0.02) == NOT_DISTINGUISHABLE
    rng = np.random.default_rng(4)
    a, b = _arm(rng, 3000, 0.16, 0.05), _arm(rng, 3000, 0.14, 0.05)
    ints, comps = readout({"hybrid": {"ctr": a}, "mf_only": {"ctr": b}}, "mf_only")
    (c,) = comps
    assert (c.arm, c.baseline, c.verdict) == ("hybrid", "mf_only", "better")
    assert c.relative.lo < 0.16 / 0.14 - 1 < c.relative.hi
    # The detectable effect is (1.96 + 0.84) standard errors: about 1.43 half-widths.
    assert c.mde == pytest.approx((c.relative.hi - c.relative.lo) / 2 * 2.8 / 1.96, rel=0.1)
    same = readout({"x": {"ctr": b}, "y": {"ctr": _arm(rng, 3000, 0.14, 0.05)}}, "x")[1]
    assert same[0].verdict == NOT_DISTINGUISHABLE
    dc = compare_delta("hybrid", "mf_only", "ctr", sums_of(*a), sums_of(*b))
    assert dc.verdict == "better" and dc.relative.lo > 0
    # From the two intervals alone (what `vidrec stats` gets): the same comparison.
    ic = compare_intervals("hybrid", "mf_only", "ctr", sums_of(*a).interval(),
                           sums_of(*b).interval())
    assert ic.verdict == "better"
    assert (ic.relative.lo, ic.relative.hi) == pytest.approx(
        (dc.relative.lo, dc.relative.hi), rel=0.02)


def test_users_needed_for_a_5pct_difference() -> None:
    """n = 2 (1.96 + 0.84)^2 var / (0.05 mean)^2: with a per-user variance of 0.01 around a
    mean of 0.14, about 4,000 users per arm."""
    n = users_needed(0.01, 0.14, 0.05)
    assert n == pytest.approx(2 * (1.959964 + 0.841621) ** 2 * 0.01 / 0.007 ** 2, rel=1e-6)
    s = RatioSums(users=4, x=4, y=8, xx=6, yy=16, xy=8)  # x = 2,1,1,0 ; y = 2 each
    # Linearised contributions (x - 0.5 y) / mean(y) = 0.5, 0, 0, -0.5 -> variance 1/6.
    assert per_user_variance(s) == pytest.approx(1 / 6)


def test_simulation_readout_uses_users_as_the_unit() -> None:
    """Two users with 50 requests each are two units, not 100."""
    res = SimResult()
    res.users = {"a": {"u1": Window(requests=50, shown=500, clicks=100, relevant=200),
                       "u2": Window(requests=50, shown=500, clicks=0, relevant=100)},
                 "mf_only": {"u3": Window(requests=1, shown=10, clicks=1, relevant=3),
                             "u4": Window(requests=1, shown=10, clicks=2, relevant=3),
                             "u5": Window(requests=1, shown=10, clicks=1, relevant=2)}}
    ro = read_out(res, "mf_only", replicates=500)
    assert ro.users == {"a": 2, "mf_only": 3}
    iv = ro.intervals["a"]["ctr"]
    assert iv.value == pytest.approx(0.1) and iv.lo < 0.05 and iv.hi > 0.15
    assert {c.metric for c in ro.comparisons} >= {"ctr", "true_precision"}
    assert all(c.mde > 0 for c in ro.comparisons if c.metric == "ctr")


def test_server_counters_give_the_per_user_interval(redis_client, key_prefix: str) -> None:  # type: ignore[no-untyped-def]
    """The apply script keeps per-user moments, so GetStats' CTR interval is the one the
    users' own counts give (delta method), also after a redelivery (applied once)."""
    from vidrec.store.features import FeatureStore
    from vidrec.v1 import events_pb2

    E = events_pb2
    store = FeatureStore(redis_client, key_prefix)
    store.put_videos([{"video_id": f"v{i}"} for i in range(10)])
    rng = np.random.default_rng(5)
    events, clicks, shown, completed, watches = [], [], [], [], []
    for u in range(30):
        n, c = 10, int(rng.integers(0, 6))
        done = int(rng.integers(0, c + 1))
        for i in range(n):
            for t in ([E.EVENT_TYPE_IMPRESSION] + [E.EVENT_TYPE_CLICK] * (i < c)
                      + [E.EVENT_TYPE_WATCH] * (i < c)):
                value = (0.95 if i < done else 0.3) if t == E.EVENT_TYPE_WATCH else 0.0
                events.append(E.Event(event_id=f"{u}-{i}-{t}", user_id=f"u{u}",
                                      video_id=f"v{i}", type=t, value=value,
                                      timestamp=1_700_000_000.0, model_version="m",
                                      experiment_arm="x"))
        clicks.append(c), shown.append(n), completed.append(done), watches.append(c)
    store.apply_events(events)
    store.apply_events(events[:100])  # redelivered: counted once
    (row,) = [r for r in store.read_stats() if r["model_version"] == "m"]
    want = sums_of(clicks, shown).interval()
    assert row["users"] == 30 and row["ctr"] == pytest.approx(want.value)
    assert (row["ctr_lo"], row["ctr_hi"]) == pytest.approx((want.lo, want.hi))
    wc = sums_of(completed, watches).interval()
    assert (row["completion_rate_lo"], row["completion_rate_hi"]) == pytest.approx(
        (wc.lo, wc.hi))


def test_simulation_report_shows_intervals_and_verdicts(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from vidrec.simulate import write_report

    rng = np.random.default_rng(6)
    res = SimResult()
    for arm, ctr in (("hybrid", 0.2), ("mf_only", 0.1)):
        users = {f"{arm}{u}": Window(requests=2, shown=20, clicks=int(rng.binomial(20, ctr)),
                                     relevant=int(rng.binomial(20, 2 * ctr)))
                 for u in range(300)}
        res.users[arm] = users
        res.window_users = [{a: u for a, u in res.users.items()}] * 2
        res.windows = [{a: {"ctr": 0.1, "completion_rate": 0.0, "watch_min_per_request": 0.0,
                            "true_precision": 0.2} for a in res.users}] * 2
        res.window_versions = [["v1"], ["v1"]]
        res.totals[arm] = Window(requests=600, shown=6000)
    report = write_report(res, tmp_path / "sim").read_text()
    assert "| hybrid vs mf_only | ctr |" in report and "| better |" in report
    assert "per-user bootstrap" in report
    assert (tmp_path / "sim" / "simulation.png").stat().st_size > 10_000
