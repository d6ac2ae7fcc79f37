"""The event contract: what an interaction event is, when it is valid, and what it means.

Every process that reads events uses this module, so that offline training, the online
trainer, the gateway and the simulator cannot disagree (training/serving skew):

- **names**: the data contract's event names (schema.EVENT_TYPES) and vidrec.v1.EventType.
- **validation**: `event_problem` says what is wrong with an event, or None. The gateway
  rejects such a call (INVALID_ARGUMENT), the trainer sends such a record to the DLQ.
- **weight**: each event's feedback weight, summed per (user, video) into the MF matrix:

      click            +click
      watch (f in 0-1) +watch * (f - watch_neutral)      a 10% watch is a mild negative
      like / share     +like / +share
      dislike / skip   -dislike / -skip
      rating r (1-5)   +rating_base + rating_centred * (r - the user's mean rating)
      impression        0 (exposure only)

- **kind**: positive (goes to the user's history), negative (the user said "not this":
  goes to the negatives the reranker acts on), seen (interacted, neither: a short watch
  weighs against the video in MF but is no "no"), exposure (an impression only; not seen).

A rating's weight depends on the user's mean rating. Its *kind* is decided when it
arrives, against the mean of the user's ratings so far (itself included): that is all the
online trainer can know, and offline training replays events in time order to get the
same answer. Its *weight* in the matrix is recomputed against every rating of the user
known when the matrix is built (offline: the training set; online: what was applied).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import pandas as pd

from vidrec import schema
from vidrec.v1 import events_pb2

E = events_pb2

TYPE_OF: dict[str, events_pb2.EventType] = {
    "impression": E.EVENT_TYPE_IMPRESSION, "click": E.EVENT_TYPE_CLICK,
    "watch": E.EVENT_TYPE_WATCH, "like": E.EVENT_TYPE_LIKE, "dislike": E.EVENT_TYPE_DISLIKE,
    "share": E.EVENT_TYPE_SHARE, "skip": E.EVENT_TYPE_SKIP, "rating": E.EVENT_TYPE_RATING,
}
NAME_OF: dict[int, str] = {t: n for n, t in TYPE_OF.items()}
assert tuple(TYPE_OF) == schema.EVENT_TYPES, "the event names and the data contract differ"

# Events whose `value` means something (rating 1-5, watched fraction 0-1).
VALUED = ("rating", "watch")
# A watch at or above this fraction counts as a completed video (online stats).
COMPLETE = 0.9
# An event may carry a client clock at most this far ahead of ours; beyond it the clock is
# wrong and the event would sort after every real one (and overflow the retrain's log).
MAX_CLOCK_AHEAD_S = 86_400.0
MAX_ID_LEN = 128
MAX_RECORD_BYTES = 64 * 1024
# ASCII only, matched whole (fullmatch): `\w` would admit full-width and other Unicode
# letters (look-alike ids), and `$` a trailing newline (log injection).
_ID = re.compile(r"[A-Za-z0-9_.:@/+=-]+")
# model_version as events carry it: a published version name, never a path.
_VERSION = re.compile(r"v[0-9]{1,9}")
_ARM = re.compile(r"[A-Za-z0-9_-]{1,32}")
MAX_POSITION = 10_000  # a place in a shown list
MAX_POOL = 100  # videos an exploration slot may be drawn from (RerankConfig.exploration_pool)


class Kind(StrEnum):
    POSITIVE = "positive"
    NEGATIVE = "negative"
    SEEN = "seen"
    EXPOSURE = "exposure"


@dataclass(frozen=True)
class FeedbackWeights:
    click: float = 0.5
    watch: float = 2.0
    watch_neutral: float = 0.25
    like: float = 2.0
    share: float = 2.0
    dislike: float = 3.0
    skip: float = 1.0
    rating_base: float = 1.0
    rating_centred: float = 0.5
    max_abs: float = 5.0
    alpha: float = 2.0


# --- validation -----------------------------------------------------------------------


def id_problem(name: str, value: str, required: bool = True) -> str | None:
    if not value:
        return f"{name} is required" if required else None
    if len(value) > MAX_ID_LEN:
        return f"{name} is longer than {MAX_ID_LEN} characters"
    if not _ID.fullmatch(value):
        return f"{name} {value[:40]!r} has characters outside [A-Za-z0-9_.:@/+=-]"
    return None


def event_problem(e: events_pb2.Event, now: float | None = None) -> str | None:
    """What makes `e` unusable, in one sentence safe to show its sender; None if usable.

    A timestamp of 0 means "not set" (the gateway stamps its own clock)."""
    for name in ("event_id", "user_id", "video_id"):
        p = id_problem(name, getattr(e, name))
        if p:
            return p
    p = id_problem("request_id", e.request_id, required=False)
    if p:
        return p
    if e.type not in NAME_OF:
        return f"type {e.type} is not a known event type"
    for name in ("value", "timestamp", "watch_time_s", "propensity"):
        if not math.isfinite(getattr(e, name)):
            return f"{name} is not a finite number"
    if e.type == E.EVENT_TYPE_RATING and not 1 <= e.value <= 5:
        return f"value: a rating must be in 1..5, got {e.value}"
    if e.type == E.EVENT_TYPE_WATCH and not 0 <= e.value <= 1:
        return f"value: a watched fraction must be in 0..1, got {e.value}"
    if e.timestamp < 0 or e.watch_time_s < 0 or e.position < 0:
        return "timestamp, watch_time_s and position must not be negative"
    limit = (time.time() if now is None else now) + MAX_CLOCK_AHEAD_S
    if e.timestamp > limit:
        return (f"timestamp {e.timestamp:.0f} is more than {MAX_CLOCK_AHEAD_S:.0f} s ahead "
                "of the server clock")
    if e.watch_time_s > 7 * 86_400:
        return f"watch_time_s {e.watch_time_s:.0f} is longer than a week"
    if e.position > MAX_POSITION:
        return f"position {e.position} is past any list (at most {MAX_POSITION})"
    # A propensity outside (0, 1] would turn an off-policy weight 1/p into nonsense;
    # 0 means "not logged" and such impressions are left out of those estimates.
    if not 0 <= e.propensity <= 1:
        return f"propensity must be in 0..1, got {e.propensity}"
    if len(e.exploration_pool) > MAX_POOL:
        return f"exploration_pool has more than {MAX_POOL} videos"
    for v in e.exploration_pool:
        p = id_problem("exploration_pool video_id", v)
        if p:
            return p
    if e.model_version and not _VERSION.fullmatch(e.model_version):
        return f"model_version {e.model_version[:40]!r} is not a version name like v12"
    if e.experiment_arm and not _ARM.fullmatch(e.experiment_arm):
        return (f"experiment_arm {e.experiment_arm[:40]!r} is not an arm name "
                "([A-Za-z0-9_-], 1-32 characters)")
    return None


# --- meaning ----------------------------------------------------------------------------


def base_weight(name: str, value: float, w: FeedbackWeights) -> float:
    """The weight of a non-rating event (a rating's depends on the user's mean rating)."""
    if name == "watch":
        return w.watch * ((0.0 if math.isnan(value) else value) - w.watch_neutral)
    return {"click": w.click, "like": w.like, "share": w.share, "dislike": -w.dislike,
            "skip": -w.skip}.get(name, 0.0)


def rating_weight(rating: float, mean: float, w: FeedbackWeights) -> float:
    return w.rating_base + w.rating_centred * (rating - mean)


def kind_of(name: str, weight: float) -> Kind:
    if name == "impression":
        return Kind.EXPOSURE
    if weight > 0:
        return Kind.POSITIVE
    if weight < 0 and name != "watch":
        return Kind.NEGATIVE
    return Kind.SEEN


def pair_score(base: float, rating_sum: float, rating_n: float, user_mean: float,
               w: FeedbackWeights) -> float:
    """One (user, video) pair's clipped score from its summed non-rating weights and its
    ratings, rated against the user's mean rating: the MF matrix entry."""
    s = base + rating_n * w.rating_base + w.rating_centred * (rating_sum - rating_n * user_mean)
    return float(np.clip(s, -w.max_abs, w.max_abs))


# --- the same, vectorised over an interactions table (offline) -------------------------


def event_weights(interactions: pd.DataFrame, w: FeedbackWeights) -> np.ndarray:
    """Each row's weight, ratings against the user's mean over the whole table."""
    ev = interactions["event"].to_numpy()
    val = interactions["value"].to_numpy(dtype=np.float64)
    s = np.zeros(len(interactions), dtype=np.float64)
    s[ev == "click"] = w.click
    watch = ev == "watch"
    s[watch] = w.watch * (np.nan_to_num(val[watch], nan=0.0) - w.watch_neutral)
    s[ev == "like"] = w.like
    s[ev == "share"] = w.share
    s[ev == "dislike"] = -w.dislike
    s[ev == "skip"] = -w.skip
    rating = ev == "rating"
    if rating.any():
        users = interactions["user_id"].to_numpy()[rating]
        r = val[rating]
        means = pd.Series(r).groupby(users).transform("mean").to_numpy()
        s[rating] = rating_weight(r, means, w)
    return s


def event_kinds(interactions: pd.DataFrame, w: FeedbackWeights) -> np.ndarray:
    """Each row's Kind (as str), ratings judged against the user's ratings up to and
    including it in time order (ties in row order), as the online trainer judges them."""
    ev = interactions["event"].to_numpy()
    s = event_weights(interactions, w)
    rating = ev == "rating"
    if rating.any():
        order = np.lexsort((np.flatnonzero(rating),
                            interactions["timestamp"].to_numpy(np.float64)[rating]))
        users = interactions["user_id"].to_numpy()[rating][order]
        r = interactions["value"].to_numpy(dtype=np.float64)[rating][order]
        g = pd.Series(r).groupby(users)
        running = (g.cumsum() / (g.cumcount() + 1)).to_numpy()
        s[np.flatnonzero(rating)[order]] = rating_weight(r, running, w)
    out = np.full(len(ev), Kind.SEEN.value, dtype=object)
    out[s > 0] = Kind.POSITIVE.value
    out[(s < 0) & (ev != "watch")] = Kind.NEGATIVE.value
    out[ev == "impression"] = Kind.EXPOSURE.value
    return out
