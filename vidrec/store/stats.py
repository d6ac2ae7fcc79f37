"""Online metrics per (model version, experiment arm), aggregated from events in Redis.

Counters are HINCRBY'd by the trainer once per event id (idempotent via the processed
set), so replays do not double count. CTR = clicks / impressions; completion rate =
completed watches (fraction >= COMPLETE) / watches. Their 95% intervals take users as the
unit (the delta method over per-user moments the apply script keeps; vidrec.abtest): one
user's many impressions are not independent draws.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import redis

from vidrec.abtest import RatioSums
from vidrec.events import COMPLETE
from vidrec.schema import Keys

__all__ = ["COMPLETE", "FIELDS", "RATIOS", "ratio_sums", "read_stats", "read_stats_sharded"]
FIELDS = ("impressions", "clicks", "watches", "completed", "likes", "dislikes")


def read_stats(r: redis.Redis, keys: Keys) -> list[dict[str, Any]]:
    members = sorted(m.decode() if isinstance(m, bytes) else m
                     for m in r.smembers(keys.stats_index()))  # type: ignore[union-attr]
    p = r.pipeline(transaction=False)
    for m in members:
        version, _, arm = m.partition("|")
        p.hgetall(keys.counters(version, arm))
    return [_row(m, {(k.decode() if isinstance(k, bytes) else k): float(v)
                     for k, v in h.items()})
            for m, h in zip(members, p.execute(), strict=True)]


def read_stats_sharded(r: Any, keys: Keys, shards: Sequence[str]) -> list[dict[str, Any]]:
    """read_stats on Redis Cluster: every shard's index and counters, summed per arm
    (two pipelined round trips per node)."""
    p = r.pipeline(transaction=False)
    for sh in shards:
        p.smembers(keys.shard_stats_index(sh))
    pairs = [(sh, m.decode() if isinstance(m, bytes) else m)
             for sh, ms in zip(shards, p.execute(), strict=True) for m in ms]
    p = r.pipeline(transaction=False)
    for sh, m in pairs:
        version, _, arm = m.partition("|")
        p.hgetall(keys.shard_counters(sh, version, arm))
    merged: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for (_, m), h in zip(pairs, p.execute() if pairs else [], strict=True):
        d = merged[m]
        for k, v in h.items():
            d[k.decode() if isinstance(k, bytes) else k] += float(v)
    return [_row(m, merged[m]) for m in sorted(merged)]


def _row(member: str, d: Mapping[str, float]) -> dict[str, Any]:
    version, _, arm = member.partition("|")
    row: dict[str, Any] = {"model_version": version, "experiment_arm": arm}
    for f in FIELDS:
        row[f] = int(d.get(f, 0))
    row["watch_time_s"] = d.get("watch_time_s", 0.0)
    row["ctr"] = row["clicks"] / row["impressions"] if row["impressions"] else 0.0
    row["completion_rate"] = row["completed"] / row["watches"] if row["watches"] else 0.0
    row["users"] = int(d.get("users", 0))
    for name, (x, y) in RATIOS.items():
        iv = ratio_sums(d, x, y).interval()
        row[f"{name}_lo"], row[f"{name}_hi"] = _finite(iv.lo), _finite(iv.hi)
    return row


# Ratio metrics with intervals: name -> (numerator, denominator) counter fields.
RATIOS = {"ctr": ("clicks", "impressions"), "completion_rate": ("completed", "watches")}


def ratio_sums(d: Mapping[str, float], x: str, y: str) -> RatioSums:
    """The per-user moments the apply script keeps for x / y (users as the unit)."""
    cross = f"x:{x}:{y}" if x < y else f"x:{y}:{x}"
    return RatioSums(users=d.get("users", 0.0), x=d.get(x, 0.0), y=d.get(y, 0.0),
                     xx=d.get(f"sq:{x}", 0.0), yy=d.get(f"sq:{y}", 0.0),
                     xy=d.get(cross, 0.0))


def _finite(v: float) -> float:
    return v if math.isfinite(v) else 0.0
