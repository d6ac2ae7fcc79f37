"""The catalog door: UpsertVideos and HideVideos become VideoUpserted records on
vidrec.videos (the trainer writes Redis, the candidate stage indexes them), and
SimilarVideos' reasons. No gRPC here.

Writes never erase what the caller did not mean to: an upsert without upload_ts keeps the
upload time the catalog has, an upsert without `hidden` keeps a hidden video hidden, and a
hide rewrites the video's own record with only the flag changed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence

from services.gateway.validation import Invalid, check_id, check_text
from vidrec import schema
from vidrec.v1 import events_pb2

MAX_VIDEOS = 1000
MAX_TITLE = 500
MAX_TAGS = 32
MAX_DURATION_S = 7 * 86_400.0
FUTURE_SLACK_S = 86_400.0


def check_videos(videos: Sequence[events_pb2.VideoUpserted], now: float | None = None) -> None:
    """The data contract of videos.csv, for one batch of upserts."""
    if not videos:
        raise Invalid("videos is empty")
    if len(videos) > MAX_VIDEOS:
        raise Invalid(f"at most {MAX_VIDEOS} videos per call, got {len(videos)}")
    now = time.time() if now is None else now
    seen: set[str] = set()
    for i, v in enumerate(videos):
        where = f"videos[{i}]"
        try:
            check_id("video_id", v.video_id)
            if v.video_id in seen:
                raise Invalid(f"video_id {v.video_id!r} appears twice in one call")
            seen.add(v.video_id)
            if len(v.title) > MAX_TITLE:
                raise Invalid(f"title is longer than {MAX_TITLE} characters")
            if any(ord(c) < 32 for c in v.title):
                raise Invalid("title contains control characters")
            for f in ("category", "creator_id", "language"):
                check_text(f, getattr(v, f))
            if len(v.tags) > MAX_TAGS:
                raise Invalid(f"more than {MAX_TAGS} tags")
            for t in v.tags:
                check_text("tags", t)
                if schema.TAG_SEPARATOR in t:
                    raise Invalid(f"tag {t[:40]!r} contains {schema.TAG_SEPARATOR!r}")
            if not (math.isfinite(v.duration_s) and 0 <= v.duration_s <= MAX_DURATION_S):
                raise Invalid(f"duration_s must be in 0..{MAX_DURATION_S:.0f}, "
                              f"got {v.duration_s}")
            if not math.isfinite(v.upload_ts) or v.upload_ts < 0 or (
                    v.upload_ts > now + FUTURE_SLACK_S):
                raise Invalid(f"upload_ts {v.upload_ts} is not a time before tomorrow "
                              "(Unix seconds; 0 = now)")
        except Invalid as exc:
            raise Invalid(f"{where}: {exc}") from None


def check_hide(ids: Sequence[str]) -> None:
    if not ids:
        raise Invalid("video_ids is empty")
    if len(ids) > MAX_VIDEOS:
        raise Invalid(f"at most {MAX_VIDEOS} video ids per call, got {len(ids)}")
    for i, v in enumerate(ids):
        try:
            check_id("video_id", v)
        except Invalid as exc:
            raise Invalid(f"video_ids[{i}]: {exc}") from None


def _flag(value: str | None) -> bool:
    return str(value or "").lower() in ("1", "true")


def merged_upserts(videos: Sequence[events_pb2.VideoUpserted],
                   known: Mapping[str, Mapping[str, str]], now: float
                   ) -> list[events_pb2.VideoUpserted]:
    """The records to write: upload time and hidden flag kept from the catalog where the
    caller left them unset, so sending the same upsert twice writes the same record."""
    out = []
    for v in videos:
        m = events_pb2.VideoUpserted()
        m.CopyFrom(v)
        old = known.get(v.video_id)
        if not m.upload_ts:
            try:
                m.upload_ts = float(old["upload_ts"]) if old and old.get("upload_ts") else now
            except ValueError:
                m.upload_ts = now
        if old is not None and _flag(old.get("hidden")):
            m.hidden = True
        out.append(m)
    return out


def record_message(rec: Mapping[str, str], hidden: bool) -> events_pb2.VideoUpserted:
    """A video as the catalog holds it (a Redis hash), with only `hidden` changed."""
    def num(f: str) -> float:
        try:
            x = float(rec.get(f) or 0.0)
        except ValueError:
            return 0.0
        return x if math.isfinite(x) else 0.0

    tags = [t for t in (rec.get("tags") or "").split(schema.TAG_SEPARATOR) if t]
    return events_pb2.VideoUpserted(
        video_id=str(rec["video_id"]), title=rec.get("title", ""),
        category=rec.get("category", ""), tags=tags, creator_id=rec.get("creator_id", ""),
        language=rec.get("language", ""), duration_s=num("duration_s"),
        upload_ts=num("upload_ts"), hidden=hidden,
        age_restricted=_flag(rec.get("age_restricted")))


SIMILAR_REASONS = {
    "content": "Like “{title}”: {detail}",
    "two_tower": "Viewers who liked “{title}” like this",
    "co_watch": "Watched by people who watched “{title}”",
}


def similar_reason(by: str, anchor: Mapping[str, str], video: Mapping[str, str]) -> str:
    """Why a video is "more like" the asked-about one, in words a viewer understands."""
    title = anchor.get("title") or anchor.get("video_id", "this video")
    shared = []
    if anchor.get("creator_id") and anchor.get("creator_id") == video.get("creator_id"):
        shared.append("same creator")
    if anchor.get("category") and anchor.get("category") == video.get("category"):
        shared.append(f"also {anchor['category']}")
    a_tags = set((anchor.get("tags") or "").split(schema.TAG_SEPARATOR)) - {""}
    common = [t for t in (video.get("tags") or "").split(schema.TAG_SEPARATOR) if t in a_tags]
    if common:
        shared.append("tags " + ", ".join(common[:3]))
    detail = "; ".join(shared) or "similar topic"
    return SIMILAR_REASONS.get(by, SIMILAR_REASONS["two_tower"]).format(title=title,
                                                                         detail=detail)
