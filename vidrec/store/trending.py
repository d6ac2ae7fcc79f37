"""Trending: what is popular now, as exponentially decayed counts of positive events.

One Redis sorted set holds, per video, its positive events weighted 2 ** ((t - ref) /
HALF_LIFE_S), t the event's time and ref a reference time kept beside the set (forward
decay, Cormode et al. 2009). An event a week old then weighs half as much as one now, and
no pass over every video is ever needed to age the counts: only their ratios matter, and
those do not change as time goes on. The trainer adds events as it applies them (inside
the same atomic script, so a redelivered event is not counted twice, and a video already
in the user's recent history is not counted again) and calls `refresh`
every few seconds (through FeatureStore), which writes the popular list the candidate stage reads.

A first publish seeds the set with the model's all-time popularity as of publish time, so
a new deployment has a list at once; from then on live events take over within weeks.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import redis

from vidrec.schema import Keys

HALF_LIFE_S = 7 * 86400.0  # "popular this week"
POPULAR_LIST_LEN = 500
TRENDING_LEN = 20_000  # videos kept in the set; the rest weigh too little to matter
# Scores grow 2x per half-life after ref; past 2^64 the set is rescaled and ref moved to
# now (about once a year), far below where a double loses the ratios.
REBASE_HALF_LIVES = 64.0
REFRESH_S = 5.0  # how often the trainer rewrites the popular list
SEED_SHARD = "seed"  # Redis Cluster: the shard a publish seeds


# KEYS: trending set, ref, popular list. ARGV: now, half-life, rebase after, keep, n.
_REFRESH = """
local now, hl = tonumber(ARGV[1]), tonumber(ARGV[2])
local rebase, keep, n = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local ref = tonumber(redis.call('GET', KEYS[2]) or '')
if ref == nil then
  redis.call('SET', KEYS[2], tostring(now))
elseif (now - ref) / hl > rebase then
  redis.call('ZUNIONSTORE', KEYS[1], 1, KEYS[1], 'WEIGHTS', tostring(2 ^ (-(now - ref) / hl)))
  redis.call('SET', KEYS[2], tostring(now))
end
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -keep - 1)
local top = redis.call('ZREVRANGE', KEYS[1], 0, n - 1)
if #top > 0 then
  redis.call('DEL', KEYS[3])
  redis.call('RPUSH', KEYS[3], unpack(top))
end
return top
"""


def seed(r: redis.Redis, keys: Keys, video_ids: Sequence[str], weights: np.ndarray,
         now: float | None = None, cluster: bool = False) -> bool:
    """Start the set from `weights` (e.g. the model's popularity) as of `now`, unless it
    exists: a republish must not wipe what live events have counted. True if seeded.
    On a cluster the seed is a shard of its own (SEED_SHARD), merged with the others."""
    now = time.time() if now is None else now
    keep = np.argsort(-weights, kind="stable")[:TRENDING_LEN]
    pairs = {str(video_ids[i]): float(weights[i]) for i in keep if weights[i] > 0}
    if not r.set(keys.trending_ref(), repr(now), nx=True):
        return False
    if cluster:
        r.set(keys.shard_trending_ref(SEED_SHARD), repr(now))
        r.sadd(keys.shards(), SEED_SHARD)
    if pairs:
        r.zadd(keys.shard_trending(SEED_SHARD) if cluster else keys.trending(), pairs)
    return True


def refresh(r: redis.Redis, keys: Keys, now: float | None = None,
            n: int = POPULAR_LIST_LEN) -> list[str]:
    """Rescale if due, trim, and write the top `n` as the popular list; returns them."""
    now = time.time() if now is None else now
    script = r.register_script(_REFRESH)
    top = script(keys=[keys.trending(), keys.trending_ref(), keys.popular()],
                 args=[repr(now), HALF_LIFE_S, REBASE_HALF_LIVES, TRENDING_LEN, n])
    return [x.decode() if isinstance(x, bytes) else str(x) for x in top]


def scores(r: redis.Redis, keys: Keys, now: float | None = None) -> dict[str, float]:
    """Every video's decayed count as of `now` (for tests and inspection)."""
    now = time.time() if now is None else now
    ref = float(r.get(keys.trending_ref()) or now)
    scale = 2.0 ** (-(now - ref) / HALF_LIFE_S)
    pairs: list[tuple[bytes | str, float]] = r.zrange(  # type: ignore[assignment]
        keys.trending(), 0, -1, withscores=True)
    return {(k.decode() if isinstance(k, bytes) else k): v * scale for k, v in pairs}


# Redis Cluster: one trending set per shard (store/cluster_apply.py), each with its own
# reference time, rescaled and trimmed shard by shard (KEYS: set, ref; ARGV: now,
# half-life, rebase after, keep). Returns the reference and the whole (trimmed) set.
_SHARD_REFRESH = """
local now, hl = tonumber(ARGV[1]), tonumber(ARGV[2])
local rebase, keep = tonumber(ARGV[3]), tonumber(ARGV[4])
local ref = tonumber(redis.call('GET', KEYS[2]) or '')
if ref == nil then
  ref = now
  redis.call('SET', KEYS[2], tostring(now))
elseif (now - ref) / hl > rebase then
  redis.call('ZUNIONSTORE', KEYS[1], 1, KEYS[1], 'WEIGHTS', tostring(2 ^ (-(now - ref) / hl)))
  ref = now
  redis.call('SET', KEYS[2], tostring(now))
end
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -keep - 1)
return {tostring(ref), redis.call('ZREVRANGE', KEYS[1], 0, -1, 'WITHSCORES')}
"""

# KEYS: a list. ARGV: its new items (replaced in one step; one key, one slot).
REPLACE_LIST = """
redis.call('DEL', KEYS[1])
for j = 1, #ARGV, 5000 do
  redis.call('RPUSH', KEYS[1], unpack(ARGV, j, math.min(j + 4999, #ARGV)))
end
return #ARGV
"""


def _sets(keys: Keys, shards: Sequence[str]) -> list[tuple[str, str]]:
    """Every shard's set and reference (the seed is one of them)."""
    return [(keys.shard_trending(s), keys.shard_trending_ref(s)) for s in shards]


def refresh_sharded(r: Any, keys: Keys, shards: Sequence[str], now: float | None = None,
                    n: int = POPULAR_LIST_LEN) -> list[str]:
    """`refresh` on Redis Cluster: rescale and trim every shard, sum the shards' decayed
    counts as of now, write the top `n` as the popular list. Each refresh reads up to
    TRENDING_LEN entries per shard (the top of a sum needs more than each part's top)."""
    now = time.time() if now is None else now
    script = r.register_script(_SHARD_REFRESH)
    merged: dict[str, float] = {}
    for zkey, rkey in _sets(keys, shards):
        ref, flat = script(keys=[zkey, rkey],
                           args=[repr(now), HALF_LIFE_S, REBASE_HALF_LIVES, TRENDING_LEN])
        scale = 2.0 ** ((float(ref) - now) / HALF_LIFE_S)
        for v, sc in zip(flat[::2], flat[1::2], strict=True):
            vid = v.decode() if isinstance(v, bytes) else str(v)
            merged[vid] = merged.get(vid, 0.0) + float(sc) * scale
    top = [v for v, _ in sorted(merged.items(), key=lambda kv: (kv[1], kv[0]),
                                reverse=True)[:n]]
    if top:
        r.register_script(REPLACE_LIST)(keys=[keys.popular()], args=top)
    return top


def scores_sharded(r: Any, keys: Keys, shards: Sequence[str],
                   now: float | None = None) -> dict[str, float]:
    """`scores` on Redis Cluster: the shards' decayed counts summed per video."""
    now = time.time() if now is None else now
    out: dict[str, float] = {}
    for zkey, rkey in _sets(keys, shards):
        ref = float(r.get(rkey) or now)
        scale = 2.0 ** (-(now - ref) / HALF_LIFE_S)
        for k, v in r.zrange(zkey, 0, -1, withscores=True):
            vid = k.decode() if isinstance(k, bytes) else k
            out[vid] = out.get(vid, 0.0) + v * scale
    return out
