"""Decode and check one Kafka record; no Kafka or Redis here.

A record that cannot be decoded or applied becomes a DeadLetter with a reason; it goes to
vidrec.events.dlq and the stream moves on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from vidrec.v1 import events_pb2

MAX_RECORD_BYTES = 64 * 1024
E = events_pb2


@dataclass
class DeadLetter:
    reason: str


# The feedback weights decide what counts as a positive (history) or a negative.
POSITIVE_WATCH = 0.25


def decode(value: bytes | None) -> events_pb2.Event | DeadLetter:
    if value is None:
        return DeadLetter("empty record")
    if len(value) > MAX_RECORD_BYTES:
        return DeadLetter(f"record is {len(value)} bytes; the limit is {MAX_RECORD_BYTES}")
    e = events_pb2.Event()
    try:
        e.ParseFromString(value)
    except DecodeError as exc:
        return DeadLetter(f"not a vidrec.v1.Event: {exc}")
    problem = check(e)
    return DeadLetter(problem) if problem else e


def check(e: events_pb2.Event) -> str | None:
    if not e.event_id:
        return "event_id is empty"
    if not e.user_id or not e.video_id:
        return "user_id and video_id are required"
    if e.type not in E.EventType.values() or e.type == E.EVENT_TYPE_UNSPECIFIED:
        return f"unknown event type {e.type}"
    for name in ("value", "timestamp", "watch_time_s"):
        x = getattr(e, name)
        if math.isnan(x) or math.isinf(x):
            return f"{name} is not a finite number"
    if e.type == E.EVENT_TYPE_RATING and not 1 <= e.value <= 5:
        return f"rating {e.value} outside 1..5"
    if e.type == E.EVENT_TYPE_WATCH and not 0 <= e.value <= 1:
        return f"watched fraction {e.value} outside 0..1"
    return None


def kind(e: events_pb2.Event) -> str:
    """positive (history), negative (dislike/skip), seen, or exposure (impression only)."""
    t = e.type
    if t == E.EVENT_TYPE_IMPRESSION:
        return "exposure"
    if t in (E.EVENT_TYPE_DISLIKE, E.EVENT_TYPE_SKIP):
        return "negative"
    if t == E.EVENT_TYPE_WATCH:
        return "positive" if e.value > POSITIVE_WATCH else "seen"
    if t == E.EVENT_TYPE_RATING:
        return "positive" if e.value >= 3 else "negative"
    return "positive"  # click, like, share


EVENT_NAMES = {
    E.EVENT_TYPE_IMPRESSION: "impression", E.EVENT_TYPE_CLICK: "click",
    E.EVENT_TYPE_WATCH: "watch", E.EVENT_TYPE_LIKE: "like", E.EVENT_TYPE_DISLIKE: "dislike",
    E.EVENT_TYPE_SHARE: "share", E.EVENT_TYPE_SKIP: "skip", E.EVENT_TYPE_RATING: "rating",
}
