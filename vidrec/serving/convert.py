"""Protobuf <-> domain conversions shared by the services (enums, profiles, filters)."""

from __future__ import annotations

import time
from typing import Any

from vidrec.store.index import SearchFilter
from vidrec.v1 import common_pb2, events_pb2

SOURCE_NAMES: dict[int, str] = {
    common_pb2.CANDIDATE_SOURCE_TWO_TOWER: "two_tower",
    common_pb2.CANDIDATE_SOURCE_MF: "mf",
    common_pb2.CANDIDATE_SOURCE_CONTENT_SIMILAR: "content_similar",
    common_pb2.CANDIDATE_SOURCE_POPULAR: "popular",
    common_pb2.CANDIDATE_SOURCE_FRESH: "fresh",
    common_pb2.CANDIDATE_SOURCE_EXPLORATION: "exploration",
}
SOURCE_ENUMS = {v: k for k, v in SOURCE_NAMES.items()}


def source_name(enum: int) -> str:
    return SOURCE_NAMES.get(enum, "two_tower")


def source_enum(name: str) -> Any:
    """The CandidateSource value (an int the generated stubs type as the enum)."""
    return SOURCE_ENUMS.get(name, common_pb2.CANDIDATE_SOURCE_UNSPECIFIED)


def profile_dict(p: common_pb2.UserProfile) -> dict[str, Any]:
    out: dict[str, Any] = dict(p.extra)
    if p.HasField("age"):
        out["age"] = p.age
    for f in ("gender", "country", "language", "occupation"):
        v = getattr(p, f)
        if v:
            out[f] = v
    return out


def profile_proto(d: dict[str, Any]) -> common_pb2.UserProfile:
    p = common_pb2.UserProfile()
    for k, v in d.items():
        if v is None or v == "":
            continue
        if k == "age":
            try:
                p.age = int(float(v))
            except ValueError:
                continue
        elif k in ("gender", "country", "language", "occupation"):
            setattr(p, k, str(v))
        elif k != "user_id":
            p.extra[k] = str(v)
    return p


def search_filter(f: common_pb2.Filters) -> SearchFilter:
    return SearchFilter(languages=tuple(f.languages),
                        exclude_age_restricted=f.exclude_age_restricted,
                        exclude_categories=tuple(f.exclude_categories))


def passes(flt: SearchFilter, row: dict[str, Any] | None) -> bool:
    """The same filter applied in Python to candidates that did not come from the index."""
    if row is None:
        return False
    if str(row.get("hidden", "")).lower() in ("1", "true"):
        return False
    if flt.languages and str(row.get("language", "")) not in flt.languages:
        return False
    if flt.exclude_age_restricted and str(row.get("age_restricted", "")).lower() in ("1", "true"):
        return False
    return not (flt.exclude_categories and str(row.get("category", "")) in flt.exclude_categories)


def video_row(v: events_pb2.VideoUpserted) -> dict[str, Any]:
    """A VideoUpserted message as a videos.csv-like record (Redis hash, encoders)."""
    return {"video_id": v.video_id, "title": v.title, "category": v.category,
            "tags": list(v.tags), "creator_id": v.creator_id, "language": v.language,
            "duration_s": v.duration_s or None, "upload_ts": v.upload_ts or time.time(),
            "hidden": int(v.hidden), "age_restricted": int(v.age_restricted)}
