"""Request validation: every bad input becomes one clear sentence (INVALID_ARGUMENT)."""

from __future__ import annotations

import math
import re

from vidrec.v1 import common_pb2, events_pb2, gateway_pb2

MAX_ID_LEN = 128
MAX_FEATURE_LEN = 64
MAX_EXTRA = 32
MAX_FILTER_VALUES = 32
MAX_RECOMMEND_BYTES = 64 * 1024
MAX_EVENTS = 5000
MAX_EVENTS_BYTES = 2 * 1024 * 1024
_ID = re.compile(r"^[\w.:@/+=-]+$")


class Invalid(ValueError):
    """The request is malformed; the message is safe to show to the client."""


def check_id(name: str, value: str, required: bool = True) -> None:
    if not value:
        if required:
            raise Invalid(f"{name} is required")
        return
    if len(value) > MAX_ID_LEN:
        raise Invalid(f"{name} is longer than {MAX_ID_LEN} characters")
    if not _ID.match(value):
        raise Invalid(f"{name} {value[:40]!r} has characters outside [A-Za-z0-9_.:@/+=-]")


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
    f = req.filters
    for name, values in (("filters.languages", f.languages),
                         ("filters.exclude_categories", f.exclude_categories)):
        if len(values) > MAX_FILTER_VALUES:
            raise Invalid(f"{name} has more than {MAX_FILTER_VALUES} values")
        for v in values:
            check_text(name, v)


WATCH = events_pb2.EVENT_TYPE_WATCH
RATING = events_pb2.EVENT_TYPE_RATING


def check_event(e: events_pb2.Event, i: int) -> None:
    where = f"events[{i}]"
    check_id(f"{where}.event_id", e.event_id)
    check_id(f"{where}.user_id", e.user_id)
    check_id(f"{where}.video_id", e.video_id)
    if e.type not in events_pb2.EventType.values() or e.type == 0:
        raise Invalid(f"{where}.type {e.type} is not a known event type")
    for name in ("value", "timestamp", "watch_time_s"):
        x = getattr(e, name)
        if math.isnan(x) or math.isinf(x):
            raise Invalid(f"{where}.{name} is not a finite number")
    if e.type == RATING and not 1 <= e.value <= 5:
        raise Invalid(f"{where}.value: a rating must be in 1..5, got {e.value}")
    if e.type == WATCH and not 0 <= e.value <= 1:
        raise Invalid(f"{where}.value: a watched fraction must be in 0..1, got {e.value}")
    if e.timestamp < 0 or e.watch_time_s < 0 or e.position < 0:
        raise Invalid(f"{where}: timestamp, watch_time_s and position must not be negative")
    check_id(f"{where}.request_id", e.request_id, required=False)


def check_events(req: gateway_pb2.LogEventsRequest) -> None:
    if req.ByteSize() > MAX_EVENTS_BYTES:
        raise Invalid(f"request is {req.ByteSize()} bytes; the limit is {MAX_EVENTS_BYTES}")
    if not req.events:
        raise Invalid("events is empty")
    if len(req.events) > MAX_EVENTS:
        raise Invalid(f"at most {MAX_EVENTS} events per call, got {len(req.events)}")
    for i, e in enumerate(req.events):
        check_event(e, i)
