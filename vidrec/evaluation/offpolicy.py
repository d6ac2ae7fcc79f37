"""Off-policy evaluation: how another model would have done on the impressions that the
serving model chose, without showing it to anyone.

Scoring a candidate model on the clicks of lists the serving model picked rewards the
serving model: a video the candidate prefers but the serving model never showed has no
click to be found, so the serving model wins by construction. The only unbiased evidence
is where the logging policy randomised: the reranker's exploration slot draws its video
uniformly from a pool (vidrec.rerank, `Ranked.propensity` and `Ranked.pool`), and every
impression carries that propensity and pool (Event.propensity, Event.exploration_pool).

For each explored slot i, logged video a_i with propensity p_i and reward r_i (a click on
it), a target policy pi puts a_i there with probability pi(a_i | pool_i); the estimators
(Horvitz-Thompson / inverse propensity scoring) are

    IPS   = sum_i w_i r_i / n          w_i = min(pi(a_i | pool_i) / p_i, clip)
    SNIPS = sum_i w_i r_i / sum_i w_i  (self-normalised: lower variance, small bias)

Both estimate the click rate of the slot if `pi` filled it, here "the model's best video
of the pool" (`greedy`). Deterministic slots (propensity 1) carry no counterfactual
evidence and are left out. Intervals: users are the independent unit (one user's slots
share their taste), so a Poisson bootstrap over users, paired between the two policies
for their difference (same users, same slots).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from vidrec.abtest import Interval, verdict

log = logging.getLogger(__name__)

# What counts as the reward of an impression: a click on it (the online CTR's numerator).
REWARDS: tuple[str, ...] = ("click",)
# Weights above this are clipped (Ionides 2008): trades a little bias for bounded variance.
# A greedy target over a uniform pool of n has weight n, so this clips only pools > 20.
DEFAULT_CLIP = 20.0
REPLICATES = 1000

Scorer = Callable[[Sequence[str], Sequence[Sequence[str]]], list[np.ndarray]]


@dataclass(frozen=True)
class Slots:
    """The explored impressions of a log, one per (request, position)."""

    user_id: np.ndarray
    video_id: np.ndarray
    pool: list[tuple[str, ...]]
    propensity: np.ndarray
    reward: np.ndarray

    def __len__(self) -> int:
        return len(self.video_id)


def explored_slots(events: pd.DataFrame, rewards: Sequence[str] = REWARDS) -> Slots:
    """The randomised impressions of an event table (EventLog.read_logged's columns) with
    their reward: 1 if an event in `rewards` followed for the same request and video.

    Kept: impressions with 0 < propensity < 1, a request id, and a pool holding the shown
    video. An impression without them cannot be weighed, so it is left out."""
    ev = events
    p = pd.to_numeric(ev["propensity"], errors="coerce")
    imp = ev[(ev["event"] == "impression") & (p > 0) & (p < 1) & (ev["request_id"] != "")]
    imp = imp.drop_duplicates(["request_id", "position"], keep="first")
    ok = np.array([v in pool for v, pool in zip(imp["video_id"], imp["exploration_pool"],
                                                strict=True)], dtype=bool)
    if (~ok).any():
        log.warning("%d explored impressions without their video in the pool: left out",
                    int((~ok).sum()))
    imp = imp[ok]
    fb = ev[ev["event"].isin(list(rewards)) & (ev["request_id"] != "")]
    hit = set(zip(fb["request_id"], fb["video_id"], strict=True))
    reward = np.array([(r, v) in hit for r, v in zip(imp["request_id"], imp["video_id"],
                                                     strict=True)], dtype=np.float64)
    return Slots(imp["user_id"].to_numpy(dtype=object), imp["video_id"].to_numpy(dtype=object),
                 [tuple(x) for x in imp["exploration_pool"]],
                 pd.to_numeric(imp["propensity"]).to_numpy(dtype=np.float64), reward)


def _pool_scores(scorer: Scorer, slots: Slots) -> list[np.ndarray]:
    """Each slot's pool scored by `scorer`, every user scored once over the union of their
    pools (the model work is per user)."""
    per_user: dict[str, dict[str, int]] = {}
    for u, pool in zip(slots.user_id, slots.pool, strict=True):
        d = per_user.setdefault(str(u), {})
        for v in pool:
            d.setdefault(v, len(d))
    users = list(per_user)
    scored = scorer(users, [list(per_user[u]) for u in users])
    by_user = dict(zip(users, scored, strict=True))
    return [np.asarray([by_user[str(u)][per_user[str(u)][v]] for v in pool], dtype=np.float64)
            for u, pool in zip(slots.user_id, slots.pool, strict=True)]


def greedy(scorer: Scorer) -> Callable[[Slots], np.ndarray]:
    """The target policy "show the pool's best video by this model" (ties share): its
    probability of each slot's logged video."""

    def prob(slots: Slots) -> np.ndarray:
        out = np.zeros(len(slots))
        for i, s in enumerate(_pool_scores(scorer, slots)):
            s = np.where(np.isnan(s), -np.inf, s)
            best = s == s.max()
            j = slots.pool[i].index(str(slots.video_id[i]))
            out[i] = best[j] / best.sum()
        return out

    return prob


def softmax(scorer: Scorer, temperature: float) -> Callable[[Slots], np.ndarray]:
    """A stochastic target policy: the pool drawn in proportion to exp(score / T)."""
    if temperature <= 0:
        raise ValueError("temperature must be > 0 (use greedy for T -> 0)")

    def prob(slots: Slots) -> np.ndarray:
        out = np.zeros(len(slots))
        for i, s in enumerate(_pool_scores(scorer, slots)):
            z = np.where(np.isfinite(s), s / temperature, -np.inf)
            e = np.exp(z - z.max()) if np.isfinite(z.max()) else np.ones_like(z)
            j = slots.pool[i].index(str(slots.video_id[i]))
            out[i] = e[j] / e.sum()
        return out

    return prob


def bundle_scorer(bundle: Any, profiles: Mapping[str, Mapping[str, Any]] | None = None
                  ) -> Scorer:
    """A model bundle's ranker score (vidrec.models.bundle.BatchRecommender.score_videos);
    `profiles` describe users the bundle never saw."""
    from vidrec.models.bundle import BatchRecommender

    rec = BatchRecommender(bundle)
    prof = profiles or {}

    def score(users: Sequence[str], videos: Sequence[Sequence[str]]) -> list[np.ndarray]:
        return rec.score_videos(users, videos, profiles=[prof.get(u, {}) for u in users])

    return score


@dataclass(frozen=True)
class Estimate:
    """One policy's value on the explored slots: click rate of the slot if it chose."""

    ips: Interval
    snips: Interval
    slots: int
    users: int
    # Effective sample size (sum w)^2 / sum w^2: how many slots the estimate is worth.
    ess: float
    clipped: int


@dataclass(frozen=True)
class Difference:
    """Candidate minus baseline, on the same slots (paired)."""

    baseline: Estimate
    candidate: Estimate
    snips: Interval
    ips: Interval
    verdict: str

    def as_dict(self) -> dict[str, float]:
        return {"offpolicy_slots": float(self.baseline.slots),
                "offpolicy_users": float(self.baseline.users),
                "offpolicy_serving_snips": self.baseline.snips.value,
                "offpolicy_candidate_snips": self.candidate.snips.value,
                "offpolicy_serving_ips": self.baseline.ips.value,
                "offpolicy_candidate_ips": self.candidate.ips.value,
                "offpolicy_diff_snips": self.snips.value,
                "offpolicy_diff_snips_lo": self.snips.lo,
                "offpolicy_diff_snips_hi": self.snips.hi}


def _weights(target: np.ndarray, propensity: np.ndarray, clip: float
             ) -> tuple[np.ndarray, int]:
    w = target / propensity
    return np.minimum(w, clip), int((w > clip).sum())


class _Bootstrap:
    """Per-user sums and one shared set of Poisson replicate weights over users, so every
    policy and their difference are resampled alike."""

    def __init__(self, slots: Slots, replicates: int, seed: int) -> None:
        users, self.inv = np.unique(slots.user_id.astype(str), return_inverse=True)
        self.n_users = len(users)
        self.reward = slots.reward
        self.n = np.bincount(self.inv, minlength=self.n_users).astype(np.float64)
        rng = np.random.default_rng(seed)
        self.p = rng.poisson(1.0, size=(replicates, self.n_users)).astype(np.float64)

    def reps(self, w: np.ndarray) -> tuple[float, float, np.ndarray, np.ndarray]:
        wr = np.bincount(self.inv, weights=w * self.reward, minlength=self.n_users)
        ws = np.bincount(self.inv, weights=w, minlength=self.n_users)
        with np.errstate(invalid="ignore", divide="ignore"):
            ips = (self.p @ wr) / (self.p @ self.n)
            snips = (self.p @ wr) / (self.p @ ws)
        ips_v = float(wr.sum() / self.n.sum()) if self.n.sum() else float("nan")
        snips_v = float(wr.sum() / ws.sum()) if ws.sum() else float("nan")
        return ips_v, snips_v, ips, snips


def _interval(value: float, reps: np.ndarray) -> Interval:
    reps = reps[np.isfinite(reps)]
    if len(reps) < 2:
        return Interval(value, float("nan"), float("nan"))
    lo, hi = np.percentile(reps, [2.5, 97.5])
    return Interval(value, float(lo), float(hi))


def _estimate(bs: _Bootstrap, target: np.ndarray, slots: Slots, clip: float
              ) -> tuple[Estimate, np.ndarray, np.ndarray]:
    w, clipped = _weights(target, slots.propensity, clip)
    ips_v, snips_v, ips, snips = bs.reps(w)
    ess = float(w.sum() ** 2 / (w ** 2).sum()) if (w ** 2).sum() > 0 else 0.0
    est = Estimate(_interval(ips_v, ips), _interval(snips_v, snips), len(slots), bs.n_users,
                   ess, clipped)
    return est, ips, snips


def estimate(slots: Slots, target: np.ndarray, clip: float = DEFAULT_CLIP,
             replicates: int = REPLICATES, seed: int = 0) -> Estimate:
    """IPS and SNIPS of a target policy whose probabilities of the logged videos are
    `target`, with 95% per-user bootstrap intervals."""
    return _estimate(_Bootstrap(slots, replicates, seed), target, slots, clip)[0]


def compare(slots: Slots, baseline: np.ndarray, candidate: np.ndarray,
            clip: float = DEFAULT_CLIP, replicates: int = REPLICATES, seed: int = 0
            ) -> Difference:
    """Candidate minus baseline (SNIPS and IPS) with a paired per-user bootstrap interval;
    verdict "better" / "worse" when the interval excludes 0."""
    bs = _Bootstrap(slots, replicates, seed)
    b, b_ips, b_snips = _estimate(bs, baseline, slots, clip)
    c, c_ips, c_snips = _estimate(bs, candidate, slots, clip)
    d_snips = _interval(c.snips.value - b.snips.value, c_snips - b_snips)
    d_ips = _interval(c.ips.value - b.ips.value, c_ips - b_ips)
    return Difference(b, c, d_snips, d_ips, verdict(d_snips.lo, d_snips.hi))


def compare_models(events: pd.DataFrame, baseline: Any, candidate: Any,
                   rewards: Sequence[str] = REWARDS, clip: float = DEFAULT_CLIP,
                   replicates: int = REPLICATES, seed: int = 0) -> Difference | None:
    """Two model bundles' greedy exploration-slot policies on a log's explored slots;
    None when the log has no explored slot."""
    slots = explored_slots(events, rewards)
    if not len(slots):
        return None
    return compare(slots, greedy(bundle_scorer(baseline))(slots),
                   greedy(bundle_scorer(candidate))(slots), clip, replicates, seed)


def report_lines(d: Difference, baseline: str, candidate: str) -> list[str]:
    """The comparison as Markdown, for `vidrec evaluate --events` and the retrain log."""
    rows = [("logged slots (users)", f"{d.baseline.slots} ({d.baseline.users})", ""),
            ("IPS", d.baseline.ips.fmt(4), d.candidate.ips.fmt(4)),
            ("SNIPS", d.baseline.snips.fmt(4), d.candidate.snips.fmt(4)),
            ("effective slots", f"{d.baseline.ess:.0f}", f"{d.candidate.ess:.0f}"),
            ("clipped weights", str(d.baseline.clipped), str(d.candidate.clipped))]
    lines = ["## Off-policy estimate on the explored slots (CTR of the slot, 95% per-user "
             "bootstrap)", "", f"| | {baseline} | {candidate} |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    lines += ["", f"{candidate} - {baseline}: SNIPS {d.snips.value:+.4f} "
              f"[{d.snips.lo:+.4f}, {d.snips.hi:+.4f}], IPS {d.ips.value:+.4f} "
              f"[{d.ips.lo:+.4f}, {d.ips.hi:+.4f}]: {d.verdict}"]
    return lines
