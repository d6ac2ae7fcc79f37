"""Online metrics per (model version, experiment arm), aggregated from events in Redis.

Counters are HINCRBY'd by the trainer once per event id (idempotent via the processed
set), so replays do not double count. CTR = clicks / impressions; completion rate =
completed watches (fraction >= COMPLETE) / watches.
"""

from __future__ import annotations

from typing import Any

import redis

from vidrec.events import COMPLETE
from vidrec.schema import Keys

__all__ = ["COMPLETE", "FIELDS", "read_stats"]
FIELDS = ("impressions", "clicks", "watches", "completed", "likes", "dislikes")


def read_stats(r: redis.Redis, keys: Keys) -> list[dict[str, Any]]:
    members = sorted(m.decode() if isinstance(m, bytes) else m
                     for m in r.smembers(keys.stats_index()))  # type: ignore[union-attr]
    p = r.pipeline(transaction=False)
    for m in members:
        version, _, arm = m.partition("|")
        p.hgetall(keys.counters(version, arm))
    rows = []
    for m, h in zip(members, p.execute(), strict=True):
        version, _, arm = m.partition("|")
        d = {(k.decode() if isinstance(k, bytes) else k): float(v) for k, v in h.items()}
        row: dict[str, Any] = {"model_version": version, "experiment_arm": arm}
        for f in FIELDS:
            row[f] = int(d.get(f, 0))
        row["watch_time_s"] = d.get("watch_time_s", 0.0)
        row["ctr"] = row["clicks"] / row["impressions"] if row["impressions"] else 0.0
        row["completion_rate"] = row["completed"] / row["watches"] if row["watches"] else 0.0
        rows.append(row)
    return rows
