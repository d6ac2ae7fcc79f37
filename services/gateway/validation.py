"""Request validation: every bad input becomes one clear sentence (INVALID_ARGUMENT)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from vidrec.events import event_problem, id_problem
from vidrec.v1 import common_pb2, gateway_pb2

MAX_FEATURE_LEN = 64
MAX_EXTRA = 32
MAX_FILTER_VALUES = 32
MAX_RECOMMEND_BYTES = 64 * 1024
MAX_EVENTS = 5000
MAX_EVENTS_BYTES = 2 * 1024 * 1024


class Invalid(ValueError):
    """The request is malformed; the message is safe to show to the client."""


def check_id(name: str, value: str, required: bool = True) -> None:
    problem = id_problem(name, value, required)
    if problem:
        raise Invalid(problem)


def check_text(name: str, value: str) -> None:
    if len(value) > MAX_FEATURE_LEN:
        raise Invalid(f"{name} is longer than {MAX_FEATURE_LEN} characters")
    if any(ord(c) < 32 for c in value):
        raise Invalid(f"{name} contains control characters")


def check_profile(p: common_pb2.UserProfile) -> None:
    if p.HasField("age") and not 0 < p.age <= 120:
        raise Invalid(f"profile.age must be in 1..120, got {p.age}")
    for f in ("gender", "country", "language", "occupation"):
        check_text(f"profile.{f}", getattr(p, f))
    if len(p.extra) > MAX_EXTRA:
        raise Invalid(f"profile.extra has more than {MAX_EXTRA} features")
    for k, v in p.extra.items():
        check_text("profile.extra key", k)
        check_text(f"profile.extra[{k}]", v)


def check_recommend(req: gateway_pb2.RecommendRequest, max_k: int) -> None:
    if req.ByteSize() > MAX_RECOMMEND_BYTES:
        raise Invalid(f"request is {req.ByteSize()} bytes; the limit is {MAX_RECOMMEND_BYTES}")
    check_id("user_id", req.user_id, required=False)
    if not 0 < req.k <= max_k:
        raise Invalid(f"k must be in 1..{max_k}, got {req.k}")
    check_profile(req.profile)
    check_filters(req.filters)


SIMILAR_BY = ("two_tower", "content", "co_watch")


def check_similar(req: gateway_pb2.SimilarVideosRequest, max_k: int) -> None:
    check_id("video_id", req.video_id)
    check_id("user_id", req.user_id, required=False)
    if req.by and req.by not in SIMILAR_BY:
        raise Invalid(f"by must be one of {', '.join(SIMILAR_BY)} (or empty), got "
                      f"{req.by[:40]!r}")
    if not 0 < req.k <= max_k:
        raise Invalid(f"k must be in 1..{max_k}, got {req.k}")
    check_filters(req.filters)


def check_filters(f: common_pb2.Filters) -> None:
    for name, values in (("filters.languages", f.languages),
                         ("filters.exclude_categories", f.exclude_categories)):
        if len(values) > MAX_FILTER_VALUES:
            raise Invalid(f"{name} has more than {MAX_FILTER_VALUES} values")
        for v in values:
            check_text(name, v)


# Events older than this are refused at the door (a device may send late, not years late).
MAX_EVENT_AGE_S = 30 * 86_400.0


def check_events(req: gateway_pb2.LogEventsRequest, arms: Sequence[str] = (),
                 now: float | None = None) -> None:
    """`arms`: the configured experiment arms; an event naming another is refused (it
    would become a Redis key and a GetStats row)."""
    if req.ByteSize() > MAX_EVENTS_BYTES:
        raise Invalid(f"request is {req.ByteSize()} bytes; the limit is {MAX_EVENTS_BYTES}")
    if not req.events:
        raise Invalid("events is empty")
    if len(req.events) > MAX_EVENTS:
        raise Invalid(f"at most {MAX_EVENTS} events per call, got {len(req.events)}")
    for i, e in enumerate(req.events):
        # The event contract's own check: the trainer applies what passes it.
        problem = event_problem(e)
        if problem:
            raise Invalid(f"events[{i}]: {problem}")
        oldest = (time.time() if now is None else now) - MAX_EVENT_AGE_S
        if e.timestamp and e.timestamp < oldest:
            raise Invalid(f"events[{i}]: timestamp {e.timestamp:.0f} is more than "
                          f"{MAX_EVENT_AGE_S / 86400:.0f} days old")
        if arms and e.experiment_arm and e.experiment_arm not in arms:
            raise Invalid(f"events[{i}]: experiment_arm {e.experiment_arm!r} is not one of "
                          f"this deployment's arms ({', '.join(arms)})")
