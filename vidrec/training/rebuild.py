"""Rebuild what Redis holds of every user after Redis was lost, from durable data only.

The state a user has online is what the first publish seeded from the base data plus
every event the trainer applied since, and the trainer's event log holds every event it
applied. The offline path replays the same events to the same state (the event contract,
tests/test_event_contract.py), so the rebuild is: base data + event log -> history,
negatives, feedback (the MF row) and seen set per user, written over what Redis has.
Videos, the fresh list and the trending seed come back from the serving model and the
upserted-videos log; the event ids of the log are marked applied, so a Kafka redelivery of
an event applied before the loss is not applied twice.

Not rebuilt: the per-arm online counters (the event log does not keep the model version
and arm of an event), the live trending counts (reseeded from the model's popularity) and
the fresh list's live uploads (the model's newest videos instead). One difference from the
live state remains by design: a video that fell out of a user's 50-long history and is
engaged again goes back to its front online; the rebuild keeps it where its first positive
put it (beyond the 50).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vidrec.data.dataset import load_dataset, user_profiles
from vidrec.events import FeedbackWeights
from vidrec.models.bundle import ModelBundle
from vidrec.serving.publish import newest_videos
from vidrec.store.eventlog import EventLog
from vidrec.store.features import FeatureStore, UserSeed
from vidrec.training.pipeline import user_records
from vidrec.training.retrain import combined_dataset, read_videos_log

log = logging.getLogger(__name__)

# Event ids marked applied after a rebuild: the tail of the log a redelivery can reach.
MARK_LAST_IDS = 200_000


@dataclass
class RebuildResult:
    users: int
    events: int
    videos: int


def rebuild(store: FeatureStore, base: Path, event_log: EventLog, videos_log: Path,
            bundle: ModelBundle | None, weights: FeedbackWeights | None = None
            ) -> RebuildResult:
    w = weights or FeedbackWeights()
    events = event_log.read()
    vids = read_videos_log(videos_log)
    if bundle is not None:
        store.put_videos(bundle.video_rows())
        store.seed_trending(bundle.video_ids, bundle.popularity.astype(np.float64))
        store.refresh_trending()
        store.put_fresh(newest_videos(bundle))
    if vids is not None and len(vids):
        store.put_videos(vids.to_dict("records"))
    ds = combined_dataset(base, events, vids)
    records = user_records(ds.interactions, w, user_profiles(ds.users))
    # The seen set as the online path builds it: every base-data row (publish seeds the
    # training rows) and every applied live event beyond an impression.
    base_inter = load_dataset(base).interactions
    seen_base = base_inter.groupby("user_id")["video_id"].apply(set).to_dict()
    live = events[(events["event"] != "impression")
                  & events["video_id"].isin(set(ds.videos["video_id"]))]
    seen_live = live.groupby("user_id")["video_id"].apply(set).to_dict()
    n = store.seed_users(
        (UserSeed(uid, rec.profile, rec.history,
                  sorted(seen_base.get(uid, set()) | seen_live.get(uid, set())),
                  rec.negatives, {v: (f[0], f[1], f[2], f[3]) for v, f in rec.feedback.items()},
                  rec.rating_sum, rec.rating_n)
         for uid, rec in records.items()), overwrite=True)
    pairs = event_log.event_users()[-MARK_LAST_IDS:]
    ids = [e for e, _ in pairs]
    store.mark_applied(ids, user_ids=[u for _, u in pairs])
    log.info("rebuilt %d users from %d base rows and %d logged events; %d event ids marked "
             "applied", n, len(base_inter), len(events), len(ids))
    return RebuildResult(n, len(events), len(vids) if vids is not None else 0)
