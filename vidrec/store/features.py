"""The Redis feature store: user profiles, histories, seen sets, negatives, feedback,
video features, popular and fresh lists, trending counts, online counters, serving
pointers and the trainer's heartbeat. Every key comes from schema.Keys and the raw client
never leaves this package: callers ask for what they need.

The URL picks the deployment: `redis://` (or `rediss://`) a single Redis, with the
one-script apply and the key layout of docs/redis.md; `redis+cluster://host:port[,...]`
(or `rediss+cluster://`) a Redis Cluster, with the two-step apply of store/cluster_apply.py
and the global state sharded by Kafka partition, merged here on read. The methods are the
same either way.

One user read is one pipelined round trip. Writes that the trainer repeats on redelivery
are exactly-once by event id (store/apply.py); a publish seeds what a user lacks and never
erases live state unless the operator asks for it (overwrite).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis
from redis.cluster import RedisCluster

from vidrec import schema
from vidrec.events import FeedbackWeights, pair_score
from vidrec.store import stats, trending
from vidrec.store.apply import DEDUPE_HORIZON_S, Applier, ApplyResult, Position
from vidrec.store.cluster_apply import NO_POSITION_SHARD, ClusterApplier, merge_counters
from vidrec.store.lease import Lease
from vidrec.v1 import events_pb2

VIDEO_FIELDS = ("title", "category", "tags", "creator_id", "language", "duration_s",
                "upload_ts", "hidden", "age_restricted")
NEG_LEN = schema.NEGATIVES_LEN
FRESH_LEN = 200  # newest uploads kept in the fresh list


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


CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")


class FeatureStore:
    def __init__(self, client: redis.Redis | RedisCluster, prefix: str = "vidrec",
                 video_cache_s: float = 30.0, video_cache_size: int = 200_000) -> None:
        # Typed as a single Redis: a RedisCluster takes the same calls (the cluster-only
        # paths below branch on self.cluster).
        self._r: redis.Redis = client  # type: ignore[assignment]
        self.cluster = isinstance(client, RedisCluster)
        self.keys = schema.Keys(prefix)
        self._applier: Applier | ClusterApplier | None = None
        self._seed_script = client.register_script(_SEED_USER)
        self._list_script = client.register_script(_REPLACE_LIST)
        self._push_script = client.register_script(_PUSH_FRESH)
        if self.cluster:  # a cluster pipeline does not load scripts itself
            client.script_load(_SEED_USER)
        # Video metadata changes rarely and every request reads ~100 of them: a per-process
        # cache with a short TTL turns ~10 ms of Redis parsing per request into dict hits.
        self._video_cache: dict[str, tuple[float, dict[str, str]]] = {}
        self.video_cache_s = video_cache_s
        self.video_cache_size = video_cache_size

    @classmethod
    def from_url(cls, url: str, prefix: str = "vidrec", timeout_s: float = 1.0
                 ) -> FeatureStore:
        """`timeout_s` bounds every Redis call (VIDREC_REDIS_TIMEOUT_MS in the services)."""
        # No retry with backoff: redis-py's default spends ~5 s on a dead server, longer than
        # any request deadline; callers degrade instead.
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        scheme, sep, rest = url.partition("://")
        if sep and scheme in CLUSTER_SCHEMES:
            return cls(cluster_client(scheme, rest, timeout_s), prefix)
        return cls(redis.Redis.from_url(url, socket_timeout=timeout_s,
                                        socket_connect_timeout=min(0.5, timeout_s),
                                        retry=Retry(NoBackoff(), 0)), prefix)

    # --- users -----------------------------------------------------------------------

    def user(self, user_id: str) -> UserState:
        k = self.keys
        p = self._r.pipeline(transaction=False)
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

    def seed_users(self, records: Iterable[UserSeed], overwrite: bool = False) -> int:
        """Bulk load training users. Profile fields are set and seen videos added; the
        history, negatives and feedback of a user are written only where that user has
        none yet in Redis (live events own them after the first publish), unless
        `overwrite`, which replaces exactly those three with the training ones."""
        n = 0
        p = self._r.pipeline(transaction=False)
        for rec in records:
            clean = {a: str(b) for a, b in rec.profile.items()
                     if b is not None and str(b) != "" and a != "user_id"}
            fb: list[str] = []
            for vid, (base, rsum, rn, first_t) in rec.feedback.items():
                fb += [f"s:{vid}", repr(base), f"t:{vid}", repr(first_t)]
                if rn:
                    fb += [f"r:{vid}", repr(rsum), f"n:{vid}", str(int(rn))]
            if rec.rating_n:
                fb += ["_rs", repr(rec.rating_sum), "_rn", str(int(rec.rating_n))]
            uid = rec.user_id
            self._seed_script(
                keys=[self.keys.user_profile(uid), self.keys.user_history(uid),
                      self.keys.user_negatives(uid), self.keys.user_feedback(uid),
                      self.keys.user_seen(uid)],
                args=["1" if overwrite else "0", 2 * len(clean), *[x for kv in clean.items()
                                                               for x in kv],
                      len(rec.history[: schema.HISTORY_LEN]),
                      *rec.history[: schema.HISTORY_LEN],
                      len(rec.negatives[:NEG_LEN]), *rec.negatives[:NEG_LEN],
                      len(fb), *fb, *rec.seen],
                client=p)
            n += 1
            if n % 500 == 0:
                p.execute()
        p.execute()
        return n

    def put_user_vector(self, user_id: str, vector: np.ndarray, version: str) -> None:
        self._r.hset(self.keys.user_vector(user_id),
                     mapping={"v": vector.astype(np.float32).tobytes(), "version": version})

    def user_feedback(self, user_id: str, weights: FeedbackWeights
                      ) -> dict[str, tuple[float, float]]:
        """The user's MF row: video -> (clipped summed feedback score (events.pair_score),
        time of the pair's first event)."""
        h = {_s(a): float(b) for a, b in
             self._r.hgetall(self.keys.user_feedback(user_id)).items()}  # type: ignore[union-attr]
        rn = h.get("_rn", 0.0)
        mean = h.get("_rs", 0.0) / rn if rn else 0.0
        out = {}
        for f in h:
            kind, _, vid = f.partition(":")
            if kind == "t":
                score = pair_score(h.get(f"s:{vid}", 0.0), h.get(f"r:{vid}", 0.0),
                                   h.get(f"n:{vid}", 0.0), mean, weights)
                out[vid] = (score, h[f])
        return out

    # --- events (seconds tier) -----------------------------------------------------------

    def apply_events(self, events: Sequence[events_pb2.Event],
                     weights: FeedbackWeights | None = None,
                     positions: Sequence[Position | None] | None = None,
                     horizon_s: float = DEDUPE_HORIZON_S, now: float | None = None,
                     trending_min_seen: int = 0) -> ApplyResult:
        """Apply a batch exactly once (store/apply.py): by Kafka position when given, and
        by event id within `horizon_s`. A user's positives move trending only once the user
        has reacted to more than `trending_min_seen` other videos."""
        a = self._applier
        if a is None or (weights is not None and weights != a.weights) or \
                a.horizon_s != horizon_s or a.trending_min_seen != trending_min_seen:
            if self.cluster:
                a = ClusterApplier(self._r, self.keys,  # type: ignore[arg-type]
                                   weights, horizon_s, trending_min_seen)
            else:
                a = Applier(self._r, self.keys, weights, horizon_s, trending_min_seen)
            self._applier = a
        return a.apply(events, schema.HISTORY_LEN, NEG_LEN, trending.HALF_LIFE_S, positions,
                       now)

    def forget_positions(self, keep_prefix: str) -> int:
        """Drop the applied-offset marks of every Kafka log but the one named; returns how
        many were dropped (a broker that restarted empty numbers its records from 0).
        On a cluster: the shards' marks (a user's marks of an old log stay in its hash, a
        field per partition it used, and never match a record of the new log)."""
        dropped = 0
        keys = [self.keys.shard_offsets(s) for s in self._shards()] if self.cluster \
            else [self.keys.applied_offsets()]
        for key in keys:
            stale = [f for f in self._r.hkeys(key)
                     if not (f.decode() if isinstance(f, bytes) else f).startswith(keep_prefix)]
            if stale:
                self._r.hdel(key, *stale)
            dropped += len(stale)
        return dropped

    def _shards(self) -> list[str]:
        """Cluster: the shards written so far (one per Kafka partition, and "-")."""
        return sorted(_s(x) for x in self._r.smembers(self.keys.shards()))  # type: ignore[union-attr]

    def remembered_ids(self, horizon_s: float = DEDUPE_HORIZON_S,
                       now: float | None = None) -> int:
        """How many applied event ids are kept for dedupe now (inspection; on a cluster
        a scan of every node's per-user sets)."""
        bucket = int((time.time() if now is None else now) // horizon_s)
        if self.cluster:
            n = 0
            for b in (bucket - 1, bucket):
                for key in self._r.scan_iter(match=f"{self.keys.prefix}:*:done:{b}",
                                             count=1000):
                    n += max(0, int(self._r.scard(key)) - 1)  # type: ignore[arg-type]
            return n
        p = self._r.pipeline(transaction=False)
        for b in (bucket - 1, bucket):
            p.scard(self.keys.processed_events(b))
        return int(sum(p.execute()))

    def mark_applied(self, event_ids: Sequence[str], horizon_s: float = DEDUPE_HORIZON_S,
                     now: float | None = None, user_ids: Sequence[str] | None = None) -> None:
        """Remember these ids as applied (a rebuild marks what its replay covered). A
        cluster keeps them per user: `user_ids` (aligned with `event_ids`) is required."""
        if not event_ids:
            return
        bucket = int((time.time() if now is None else now) // horizon_s)
        if self.cluster:
            if user_ids is None:
                raise ValueError("on Redis Cluster, mark_applied needs the events' user ids")
            per_user: dict[str, list[str]] = {}
            for eid, uid in zip(event_ids, user_ids, strict=True):
                per_user.setdefault(uid, []).append(eid)
            p = self._r.pipeline(transaction=False)
            for uid, ids in per_user.items():
                key = self.keys.user_done(uid, bucket)
                p.sadd(key, "", *ids)
                p.expire(key, 2 * int(horizon_s) + 60)
            p.execute()
            return
        key = self.keys.processed_events(bucket)
        p = self._r.pipeline(transaction=False)
        for i in range(0, len(event_ids), 5000):
            p.sadd(key, *event_ids[i: i + 5000])
        p.expire(key, 2 * int(horizon_s) + 60)
        p.execute()

    def pop_dirty_users(self, n: int) -> list[str]:
        """Up to n users with events not yet folded in (each returned once). On a cluster
        from every shard's set: SPOP hands a user to one caller only, whichever replica
        asks, so replicas share the work and no partition's users wait for its owner."""
        if not self.cluster:
            raw: list[bytes] = self._r.spop(self.keys.dirty_users(), n) or []  # type: ignore[assignment]
            return [_s(u) for u in raw]
        out: list[str] = []
        for sh in self._shards():
            if len(out) >= n:
                break
            got: list[bytes] = self._r.spop(  # type: ignore[assignment]
                self.keys.shard_dirty(sh), n - len(out)) or []
            out += [_s(u) for u in got]
        return list(dict.fromkeys(out))  # a user of two shards (a repartition) once

    def mark_dirty(self, user_ids: Sequence[str]) -> None:
        if user_ids:
            key = self.keys.shard_dirty(NO_POSITION_SHARD) if self.cluster \
                else self.keys.dirty_users()
            if self.cluster:
                self._r.sadd(self.keys.shards(), NO_POSITION_SHARD)
            self._r.sadd(key, *user_ids)

    def lease(self, holder: str, ttl_s: float = 60.0) -> Lease:
        """The retrain lease as `holder` sees it (store/lease.py)."""
        return Lease(self._r, self.keys, holder, ttl_s)

    def beat(self, payload: Mapping[str, Any], ttl_s: int = 30, replica: str = "") -> None:
        """The trainer's heartbeat (it has no port to probe); a replica of a trainer group
        also beats under its own name, which its probe reads."""
        raw = json.dumps({"t": time.time(), **payload})
        self._r.set(self.keys.trainer_heartbeat(), raw, ex=ttl_s)
        if replica:
            self._r.set(self.keys.trainer_heartbeat(replica), raw, ex=ttl_s)

    def heartbeat(self, replica: str = "") -> dict[str, Any] | None:
        raw = self._r.get(self.keys.trainer_heartbeat(replica))
        return json.loads(raw) if raw else None  # type: ignore[arg-type]

    def read_stats(self) -> list[dict[str, Any]]:
        """Online counters per (model version, arm) (store/stats.py)."""
        if self.cluster:
            return stats.read_stats_sharded(self._r, self.keys, self._shards())
        return stats.read_stats(self._r, self.keys)

    def stats_counters(self, model_version: str, arm: str) -> dict[str, float]:
        if self.cluster:
            p = self._r.pipeline(transaction=False)
            for sh in self._shards():
                p.hgetall(self.keys.shard_counters(sh, model_version, arm))
            return merge_counters(p.execute())
        h = self._r.hgetall(self.keys.counters(model_version, arm))
        return {_s(a): float(b) for a, b in h.items()}  # type: ignore[union-attr]

    # --- trending (store/trending.py) ----------------------------------------------------

    def seed_trending(self, video_ids: Sequence[str], weights: np.ndarray,
                      now: float | None = None) -> bool:
        return trending.seed(self._r, self.keys, video_ids, weights, now, self.cluster)

    def refresh_trending(self, now: float | None = None,
                         n: int = trending.POPULAR_LIST_LEN) -> list[str]:
        if self.cluster:
            return trending.refresh_sharded(self._r, self.keys, self._shards(), now, n)
        return trending.refresh(self._r, self.keys, now, n)

    def trending_scores(self, now: float | None = None) -> dict[str, float]:
        if self.cluster:
            return trending.scores_sharded(self._r, self.keys, self._shards(), now)
        return trending.scores(self._r, self.keys, now)

    def trending_ref(self) -> float | None:
        raw = self._r.get(self.keys.trending_ref())
        return float(raw) if raw is not None else None  # type: ignore[arg-type]

    # --- serving pointer -----------------------------------------------------------------

    def set_serving_version(self, version: str) -> None:
        self._r.set(self.keys.serving_version(), version)

    def serving_version(self) -> str | None:
        """The version the last completed publish (or rollback) switched to."""
        v = self._r.get(self.keys.serving_version())
        return v.decode() if isinstance(v, bytes) else v

    # --- videos ----------------------------------------------------------------------

    def put_videos(self, rows: Iterable[Mapping[str, Any]]) -> int:
        p = self._r.pipeline(transaction=False)
        n = 0
        for r in rows:
            mapping: dict[Any, Any] = video_record(r)
            p.hset(self.keys.video_features(str(r["video_id"])), mapping=mapping)
            n += 1
            if n % 2000 == 0:
                p.execute()
        p.execute()
        return n

    def videos(self, video_ids: Sequence[str], fresh: bool = False
               ) -> dict[str, dict[str, str]]:
        """Video records by id (unknown ids absent); cached for video_cache_s seconds.
        `fresh`: read Redis, not the cache (a catalog write merging with what is there)."""
        now = time.monotonic()
        out: dict[str, dict[str, str]] = {}
        missing = []
        for v in video_ids:
            hit = None if fresh else self._video_cache.get(v)
            if hit is not None and hit[0] > now:
                out[v] = hit[1]
            else:
                missing.append(v)
        if not missing:
            return out
        p = self._r.pipeline(transaction=False)
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

    def fresh_list(self, n: int) -> list[str]:
        """Newest uploads first."""
        return self._get_list(self.keys.fresh(), n)

    def popular_list(self, n: int) -> list[str]:
        """What trends now (store/trending.py), most popular first."""
        return self._get_list(self.keys.popular(), n)

    def put_fresh(self, ids: Sequence[str]) -> None:
        """Replace the fresh list atomically (a publish)."""
        self._put_list(self.keys.fresh(), ids)

    def push_fresh(self, video_id: str, max_len: int = FRESH_LEN) -> None:
        """A new upload goes to the front of the fresh list (once)."""
        k = self.keys.fresh()
        if self.cluster:  # one key: a script instead of MULTI
            self._push_script(keys=[k], args=[video_id, max_len])
            return
        p = self._r.pipeline(transaction=True)
        p.lrem(k, 0, video_id)
        p.lpush(k, video_id)
        p.ltrim(k, 0, max_len - 1)
        p.execute()

    def _put_list(self, key: str, ids: Sequence[str]) -> None:
        """Replace a list atomically (write a temp key, RENAME over the old one; on a
        cluster, where the temp key may sit in another slot, one script on the key)."""
        if self.cluster:
            if ids:
                self._list_script(keys=[key], args=list(ids))
            else:
                self._r.delete(key)
            return
        tmp = key + ":tmp"
        p = self._r.pipeline(transaction=True)
        p.delete(tmp)
        if ids:
            p.rpush(tmp, *ids)
            p.rename(tmp, key)
        else:
            p.delete(key)
        p.execute()

    def _get_list(self, key: str, n: int) -> list[str]:
        return [_s(v) for v in self._r.lrange(key, 0, n - 1)]  # type: ignore[union-attr]


def video_record(row: Mapping[str, Any]) -> dict[str, str]:
    """A catalog row as Redis holds it (and FeatureStore.videos reads it back, less the
    video_id): the offline funnel feeds the rules exactly what serving feeds them."""
    return {f: _field(row.get(f)) for f in VIDEO_FIELDS}


def _field(v: Any) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return ""
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, list):
        return schema.TAG_SEPARATOR.join(map(str, v))
    return str(v)


@dataclass
class UserSeed:
    """One training user as a publish seeds it (from the model bundle's users.jsonl)."""

    user_id: str
    profile: Mapping[str, Any]
    history: Sequence[str]  # positives, latest first
    seen: Sequence[str]
    negatives: Sequence[str] = ()
    # video -> (summed non-rating weights, rating sum, rating count, first event time)
    feedback: Mapping[str, tuple[float, float, float, float]] = field(default_factory=dict)
    rating_sum: float = 0.0
    rating_n: float = 0.0


# KEYS: profile, history, negatives, feedback, seen. ARGV: overwrite, then counted groups:
# profile field/value pairs, history ids, negative ids, feedback field/value pairs, and
# the rest are seen ids. One call touches one user's keys (one Cluster slot).
_SEED_USER = """
local overwrite = ARGV[1] == '1'
local i = 2
local function group()
  local n = tonumber(ARGV[i])
  local out = {}
  for j = i + 1, i + n do out[#out + 1] = ARGV[j] end
  i = i + n + 1
  return out
end
local prof, hist, neg, fb = group(), group(), group(), group()
if #prof > 0 then redis.call('HSET', KEYS[1], unpack(prof)) end
local function put(key, vals, kind)
  if overwrite then redis.call('DEL', key) elseif redis.call('EXISTS', key) == 1 then return end
  if #vals == 0 then return end
  if kind == 'list' then redis.call('RPUSH', key, unpack(vals))
  else redis.call('HSET', key, unpack(vals)) end
end
local fresh = overwrite or (redis.call('EXISTS', KEYS[2]) == 0
  and redis.call('EXISTS', KEYS[3]) == 0 and redis.call('EXISTS', KEYS[4]) == 0)
if fresh then
  put(KEYS[2], hist, 'list')
  put(KEYS[3], neg, 'list')
  put(KEYS[4], fb, 'hash')
end
for j = i, #ARGV, 5000 do
  redis.call('SADD', KEYS[5], unpack(ARGV, j, math.min(j + 4999, #ARGV)))
end
return fresh and 1 or 0
"""


def cluster_client(scheme: str, rest: str, timeout_s: float) -> RedisCluster:
    """A RedisCluster from the part of a `redis+cluster://[user:password@]host:port,...`
    URL after the scheme (`rediss+cluster`: TLS)."""
    from urllib.parse import unquote

    from redis.backoff import NoBackoff
    from redis.cluster import ClusterNode
    from redis.retry import Retry

    auth, _, hosts = rest.rpartition("@")
    user, _, password = auth.partition(":") if auth else ("", "", "")
    nodes = []
    for hp in hosts.split("/", 1)[0].split(","):
        host, _, port = hp.strip().rpartition(":")
        nodes.append(ClusterNode(host or "127.0.0.1", int(port or 6379)))
    return RedisCluster(startup_nodes=nodes, username=unquote(user) or None,
                        password=unquote(password) or None, ssl=scheme.startswith("rediss"),
                        socket_timeout=timeout_s, socket_connect_timeout=min(0.5, timeout_s),
                        retry=Retry(NoBackoff(), 0))


_REPLACE_LIST = trending.REPLACE_LIST

# KEYS: the fresh list. ARGV: video id, max length (push_fresh's MULTI, as one script).
_PUSH_FRESH = """
redis.call('LREM', KEYS[1], 0, ARGV[1])
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[2]) - 1)
return 1
"""
