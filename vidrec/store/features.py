"""The Redis feature store: user profiles, histories, seen sets, negatives, video features,
popular and fresh lists. Every key comes from schema.Keys.

One user read is one pipelined round trip. Writes that the trainer repeats on redelivery
are idempotent (set adds, list entries de-duplicated with LREM before LPUSH).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis

from vidrec import schema

VIDEO_FIELDS = ("title", "category", "tags", "creator_id", "language", "duration_s",
                "upload_ts", "hidden", "age_restricted")
NEG_LEN = 200


@dataclass
class UserState:
    user_id: str
    profile: dict[str, str] = field(default_factory=dict)
    history: list[str] = field(default_factory=list)  # most recent first
    seen: set[str] = field(default_factory=set)
    negatives: list[str] = field(default_factory=list)
    mf_vector: np.ndarray | None = None
    mf_version: str = ""

    @property
    def known(self) -> bool:
        return bool(self.profile or self.history or self.seen)


def _s(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


class FeatureStore:
    def __init__(self, client: redis.Redis, prefix: str = "vidrec",
                 video_cache_s: float = 30.0, video_cache_size: int = 200_000) -> None:
        self.r = client
        self.keys = schema.Keys(prefix)
        # Video metadata changes rarely and every request reads ~100 of them: a per-process
        # cache with a short TTL turns ~10 ms of Redis parsing per request into dict hits.
        self._video_cache: dict[str, tuple[float, dict[str, str]]] = {}
        self.video_cache_s = video_cache_s
        self.video_cache_size = video_cache_size

    @classmethod
    def from_url(cls, url: str, prefix: str = "vidrec") -> FeatureStore:
        # No retry with backoff: redis-py's default spends ~5 s on a dead server, longer than
        # any request deadline; callers degrade instead.
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        return cls(redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=0.5,
                                        retry=Retry(NoBackoff(), 0)), prefix)

    # --- users -----------------------------------------------------------------------

    def user(self, user_id: str) -> UserState:
        k = self.keys
        p = self.r.pipeline(transaction=False)
        p.hgetall(k.user_profile(user_id))
        p.lrange(k.user_history(user_id), 0, schema.HISTORY_LEN - 1)
        p.smembers(k.user_seen(user_id))
        p.lrange(k.user_negatives(user_id), 0, NEG_LEN - 1)
        p.hgetall(k.user_vector(user_id))
        prof, hist, seen, neg, vec = p.execute()
        st = UserState(user_id, {_s(a): _s(b) for a, b in prof.items()},
                       [_s(v) for v in hist], {_s(v) for v in seen}, [_s(v) for v in neg])
        if vec:
            d = {_s(a): b for a, b in vec.items()}
            if "v" in d:
                st.mf_vector = np.frombuffer(d["v"], dtype=np.float32).copy()
                st.mf_version = _s(d.get("version", b""))
        return st

    def put_users(self, records: Iterable[tuple[str, Mapping[str, Any], Sequence[str],
                                                Sequence[str]]]) -> int:
        """Bulk load (user_id, profile, history most-recent-first, seen)."""
        n = 0
        p = self.r.pipeline(transaction=False)
        k = self.keys
        for uid, prof, hist, seen in records:
            clean: dict[Any, Any] = {a: str(b) for a, b in prof.items()
                     if b is not None and str(b) != "" and a != "user_id"}
            if clean:
                p.hset(k.user_profile(uid), mapping=clean)
            p.delete(k.user_history(uid))
            if hist:
                p.rpush(k.user_history(uid), *hist[: schema.HISTORY_LEN])
            if seen:
                p.sadd(k.user_seen(uid), *seen)
            n += 1
            if n % 1000 == 0:
                p.execute()
        p.execute()
        return n

    def put_user_vector(self, user_id: str, vector: np.ndarray, version: str) -> None:
        self.r.hset(self.keys.user_vector(user_id),
                    mapping={"v": vector.astype(np.float32).tobytes(), "version": version})

    # --- events (seconds tier) -----------------------------------------------------------

    def record_positive(self, p: Any, user_id: str, video_id: str) -> None:
        """Add to history (moved to the front if already there) and to seen; pipelined."""
        k = self.keys.user_history(user_id)
        p.lrem(k, 0, video_id)
        p.lpush(k, video_id)
        p.ltrim(k, 0, schema.HISTORY_LEN - 1)
        p.sadd(self.keys.user_seen(user_id), video_id)

    def record_seen(self, p: Any, user_id: str, video_id: str) -> None:
        p.sadd(self.keys.user_seen(user_id), video_id)

    def record_negative(self, p: Any, user_id: str, video_id: str) -> None:
        k = self.keys.user_negatives(user_id)
        p.lrem(k, 0, video_id)
        p.lpush(k, video_id)
        p.ltrim(k, 0, NEG_LEN - 1)
        p.sadd(self.keys.user_seen(user_id), video_id)

    # --- videos ----------------------------------------------------------------------

    def put_videos(self, rows: Iterable[Mapping[str, Any]]) -> int:
        p = self.r.pipeline(transaction=False)
        n = 0
        for r in rows:
            mapping: dict[Any, Any] = {f: _field(r.get(f)) for f in VIDEO_FIELDS}
            p.hset(self.keys.video_features(str(r["video_id"])), mapping=mapping)
            n += 1
            if n % 2000 == 0:
                p.execute()
        p.execute()
        return n

    def videos(self, video_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        """Video records by id (unknown ids absent); cached for video_cache_s seconds."""
        now = time.monotonic()
        out: dict[str, dict[str, str]] = {}
        missing = []
        for v in video_ids:
            hit = self._video_cache.get(v)
            if hit is not None and hit[0] > now:
                out[v] = hit[1]
            else:
                missing.append(v)
        if not missing:
            return out
        p = self.r.pipeline(transaction=False)
        for v in missing:
            p.hgetall(self.keys.video_features(v))
        if len(self._video_cache) > self.video_cache_size:
            self._video_cache.clear()
        expires = now + self.video_cache_s
        for v, h in zip(missing, p.execute(), strict=True):
            if h:
                rec = {"video_id": v, **{_s(a): _s(b) for a, b in h.items()}}
                out[v] = rec
                self._video_cache[v] = (expires, rec)
        return out

    # --- lists -----------------------------------------------------------------------

    def put_list(self, key: str, ids: Sequence[str]) -> None:
        """Replace a list atomically (write a temp key, RENAME over the old one)."""
        tmp = key + ":tmp"
        p = self.r.pipeline(transaction=True)
        p.delete(tmp)
        if ids:
            p.rpush(tmp, *ids)
            p.rename(tmp, key)
        else:
            p.delete(key)
        p.execute()

    def get_list(self, key: str, n: int) -> list[str]:
        return [_s(v) for v in self.r.lrange(key, 0, n - 1)]

    def put_json(self, key: str, value: Any) -> None:
        self.r.set(key, json.dumps(value))


def _field(v: Any) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return ""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, list):
        return schema.TAG_SEPARATOR.join(map(str, v))
    return str(v)
