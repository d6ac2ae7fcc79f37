"""A/B readout: per-arm confidence intervals and a verdict that tells noise from effect.

Online metrics are ratios over impressions (CTR = clicks / impressions), but impressions
are not independent draws: one user's ten slots and repeated visits share that user's
taste. Treating impressions as independent makes intervals several times too narrow.
Users are the independent unit (an arm is a set of users, `services/gateway/arms.py`), so:

- `bootstrap`: with per-user numerators and denominators (the simulator has them), a
  Poisson bootstrap over users (each user weighted by a Poisson(1) draw per replicate).
- `delta_interval`: with only streaming sums over users (the trainer's Redis counters:
  sum of x_u, y_u, x_u^2, y_u^2, x_u y_u and the user count), the delta method for a ratio
  of means, which is what the user bootstrap converges to (Deng et al., KDD 2018).

The verdict compares each arm with a baseline: "better" / "worse" when the 95% interval
of the relative difference excludes 0, else "not distinguishable at 95%".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054
Z80 = 0.8416212335729143  # one-sided power 80%
NOT_DISTINGUISHABLE = "not distinguishable at 95%"


@dataclass(frozen=True)
class Interval:
    value: float
    lo: float
    hi: float

    def fmt(self, digits: int = 3) -> str:
        return f"{self.value:.{digits}f} [{self.lo:.{digits}f}, {self.hi:.{digits}f}]"


@dataclass(frozen=True)
class Comparison:
    """Arm vs baseline: the relative difference (arm / baseline - 1) and its interval."""

    arm: str
    baseline: str
    metric: str
    relative: Interval
    verdict: str
    # Minimum detectable effect: the smallest relative difference this much data finds
    # with 80% power at 5% two-sided, (z_.975 + z_.8) x the difference's standard error.
    mde: float = float("nan")


def verdict(lo: float, hi: float) -> str:
    if lo > 0:
        return "better"
    if hi < 0:
        return "worse"
    return NOT_DISTINGUISHABLE


def _poisson_weights(n_users: int, replicates: int, rng: np.random.Generator) -> np.ndarray:
    return rng.poisson(1.0, size=(replicates, n_users)).astype(np.float64)


def bootstrap(num: Sequence[float], den: Sequence[float], replicates: int = 2000,
              seed: int = 0) -> tuple[Interval, np.ndarray]:
    """sum(num) / sum(den) with a 95% percentile interval from resampling users; also the
    replicates (to compare arms). Users with den 0 still count in the resample."""
    x, y = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    value = float(x.sum() / y.sum()) if y.sum() > 0 else float("nan")
    if len(x) < 2:
        return Interval(value, float("nan"), float("nan")), np.full(replicates, value)
    w = _poisson_weights(len(x), replicates, np.random.default_rng(seed))
    with np.errstate(invalid="ignore", divide="ignore"):
        reps = (w @ x) / (w @ y)
    reps = reps[np.isfinite(reps)]
    if not len(reps):  # nobody has a denominator (e.g. no watches: no completion rate)
        return Interval(value, float("nan"), float("nan")), reps
    lo, hi = np.percentile(reps, [2.5, 97.5])
    return Interval(value, float(lo), float(hi)), reps


def compare_bootstrap(arm: str, baseline: str, metric: str, arm_reps: np.ndarray,
                      base_reps: np.ndarray, arm_value: float, base_value: float
                      ) -> Comparison:
    """Arms are disjoint sets of users, so their replicates are independent: the
    relative difference's replicates are the ratios of paired draws."""
    n = min(len(arm_reps), len(base_reps))
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = arm_reps[:n] / base_reps[:n] - 1.0
    rel = rel[np.isfinite(rel)]
    lo, hi = (np.percentile(rel, [2.5, 97.5]) if len(rel) else (float("nan"),) * 2)
    value = arm_value / base_value - 1.0 if base_value else float("nan")
    mde = (Z95 + Z80) * float(np.std(rel)) if len(rel) > 1 else float("nan")
    return Comparison(arm, baseline, metric, Interval(value, float(lo), float(hi)),
                      verdict(float(lo), float(hi)), mde)


@dataclass(frozen=True)
class RatioSums:
    """Streaming sums over users of a ratio metric x/y (e.g. clicks/impressions)."""

    users: float
    x: float
    y: float
    xx: float
    yy: float
    xy: float

    @property
    def value(self) -> float:
        return self.x / self.y if self.y else float("nan")

    def variance(self) -> float:
        """Delta-method variance of sum(x)/sum(y) with users as the i.i.d. unit."""
        n = self.users
        if n < 2 or not self.y:
            return float("nan")
        r = self.value
        # sum over users of (x_u - r y_u)^2; its mean is 0 by construction of r.
        ss = max(self.xx - 2 * r * self.xy + r * r * self.yy, 0.0)
        return ss * n / (n - 1) / (self.y ** 2)

    def interval(self) -> Interval:
        se = math.sqrt(self.variance()) if self.variance() == self.variance() else math.nan
        return Interval(self.value, self.value - Z95 * se, self.value + Z95 * se)


def compare_delta(arm: str, baseline: str, metric: str, a: RatioSums, b: RatioSums
                  ) -> Comparison:
    """Relative difference a/b - 1 with the delta method (independent arms):
    var(log a) + var(log b) on the log scale, so the interval is of a ratio."""
    if not (a.value > 0 and b.value > 0):
        nan = Interval(float("nan"), float("nan"), float("nan"))
        return Comparison(arm, baseline, metric, nan, NOT_DISTINGUISHABLE)
    v = a.variance() / a.value ** 2 + b.variance() / b.value ** 2
    if v != v:
        nan = Interval(a.value / b.value - 1, float("nan"), float("nan"))
        return Comparison(arm, baseline, metric, nan, NOT_DISTINGUISHABLE)
    d, se = math.log(a.value / b.value), math.sqrt(v)
    lo, hi = math.exp(d - Z95 * se) - 1, math.exp(d + Z95 * se) - 1
    return Comparison(arm, baseline, metric, Interval(math.exp(d) - 1, lo, hi),
                      verdict(lo, hi), (Z95 + Z80) * se)


def compare_intervals(arm: str, baseline: str, metric: str, a: Interval, b: Interval
                      ) -> Comparison:
    """The same comparison from two arms' normal 95% intervals (what GetStats returns):
    each interval's half-width gives its standard error."""
    def sums(iv: Interval) -> tuple[float, float]:
        return iv.value, ((iv.hi - iv.lo) / (2 * Z95)) ** 2

    (va, var_a), (vb, var_b) = sums(a), sums(b)
    if not (va > 0 and vb > 0) or not (var_a > 0 or var_b > 0):
        nan = Interval(float("nan"), float("nan"), float("nan"))
        return Comparison(arm, baseline, metric, nan, NOT_DISTINGUISHABLE)
    d, se = math.log(va / vb), math.sqrt(var_a / va ** 2 + var_b / vb ** 2)
    lo, hi = math.exp(d - Z95 * se) - 1, math.exp(d + Z95 * se) - 1
    return Comparison(arm, baseline, metric, Interval(math.exp(d) - 1, lo, hi),
                      verdict(lo, hi), (Z95 + Z80) * se)


def sums_of(num: Sequence[float], den: Sequence[float]) -> RatioSums:
    x, y = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return RatioSums(float(len(x)), float(x.sum()), float(y.sum()), float(x @ x),
                     float(y @ y), float(x @ y))


def users_needed(per_user_var: float, mean: float, relative: float = 0.05) -> float:
    """Users per arm for a two-sided 5% test to detect `relative` change with 80% power:
    n = 2 (z_.975 + z_.8)^2 var / (relative * mean)^2, var the per-user variance of the
    ratio's linearisation (x_u - r y_u) / mean(y)."""
    if not mean or per_user_var != per_user_var:
        return float("nan")
    return 2 * (Z95 + Z80) ** 2 * per_user_var / (relative * mean) ** 2


def per_user_variance(s: RatioSums) -> float:
    """The variance of one user's linearised contribution: n * var(ratio)."""
    return s.variance() * s.users


def readout(per_user: Mapping[str, Mapping[str, tuple[Sequence[float], Sequence[float]]]],
            baseline: str | None = None, replicates: int = 2000, seed: int = 0
            ) -> tuple[dict[str, dict[str, Interval]], list[Comparison]]:
    """per_user[arm][metric] = (numerators, denominators), one entry per user. Returns
    each arm's interval per metric, and every other arm against the baseline (by default
    the alphabetically first arm) per metric."""
    arms = sorted(per_user)
    if not arms:
        return {}, []
    base = baseline if baseline is not None and baseline in per_user else arms[0]
    ints: dict[str, dict[str, Interval]] = {}
    reps: dict[tuple[str, str], np.ndarray] = {}
    for i, arm in enumerate(arms):
        ints[arm] = {}
        for j, (metric, (x, y)) in enumerate(sorted(per_user[arm].items())):
            iv, r = bootstrap(x, y, replicates, seed + 1000 * i + j)
            ints[arm][metric], reps[arm, metric] = iv, r
    comps = []
    for arm in arms:
        if arm == base:
            continue
        for metric in sorted(per_user[arm]):
            if metric not in per_user[base]:
                continue
            comps.append(compare_bootstrap(arm, base, metric, reps[arm, metric],
                                           reps[base, metric], ints[arm][metric].value,
                                           ints[base][metric].value))
    return ints, comps
