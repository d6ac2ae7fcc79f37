"""Online metrics per (model version, experiment arm), aggregated from events in Redis.

Counters are HINCRBY'd by the trainer once per event id (idempotent via the processed
set), so replays do not double count. CTR = clicks / impressions; completion rate =
completed watches (fraction >= COMPLETE) / watches.
"""

from __future__ import annotations

from typing import Any

from vidrec.store.features import FeatureStore

COMPLETE = 0.9
FIELDS = ("impressions", "clicks", "watches", "completed", "likes", "dislikes")


def read_stats(store: FeatureStore) -> list[dict[str, Any]]:
    members = sorted(m.decode() if isinstance(m, bytes) else m
                     for m in store.r.smembers(store.keys.stats_index()))
    p = store.r.pipeline(transaction=False)
    for m in members:
        version, _, arm = m.partition("|")
        p.hgetall(store.keys.counters(version, arm))
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
