"""Redis lost: `vidrec rebuild` gives every user the state the live system had, from the
base data and the trainer's event log alone (issue: a wiped Redis lost every history)."""

from __future__ import annotations

import random
from pathlib import Path

from vidrec import events as ev
from vidrec.data.dataset import load_dataset
from vidrec.models.bundle import ModelBundle
from vidrec.serving.publish import load_features
from vidrec.store.eventlog import EventLog
from vidrec.store.features import FeatureStore
from vidrec.training.rebuild import rebuild
from vidrec.v1 import events_pb2

W = ev.FeedbackWeights()


def live_events(small_dataset: Path, n: int, seed: int) -> list[events_pb2.Event]:
    """Events after the base data, on videos each user had not touched (and repeats of
    those), of every type, plus some naming a video nobody knows."""
    ds = load_dataset(small_dataset)
    t0 = float(ds.interactions["timestamp"].max()) + 10
    touched = ds.interactions.groupby("user_id")["video_id"].apply(set).to_dict()
    videos = sorted(ds.videos["video_id"])
    users = sorted(touched)[:40]
    rng = random.Random(seed)
    mine: dict[str, list[str]] = {u: [] for u in users}
    out = []
    for i in range(n):
        u = rng.choice(users)
        if mine[u] and rng.random() < 0.3:
            v = rng.choice(mine[u])
        elif rng.random() < 0.03:
            v = "never-heard-of-it"
        else:
            v = rng.choice([x for x in videos if x not in touched[u]])
            mine[u].append(v)
        name = rng.choice(["impression", "click", "watch", "like", "dislike", "skip",
                           "share", "rating"])
        value = (float(rng.randint(1, 5)) if name == "rating"
                 else round(rng.random(), 2) if name == "watch" else 0.0)
        out.append(events_pb2.Event(event_id=f"live-{seed}-{i}", user_id=u, video_id=v,
                                    type=ev.TYPE_OF[name], value=value, timestamp=t0 + i))
    return out


def snapshot(store: FeatureStore, users: list[str]) -> dict[str, tuple]:
    out = {}
    for u in users:
        st = store.user(u)
        fb = {v: (round(s, 5), t) for v, (s, t) in store.user_feedback(u, W).items()}
        out[u] = (st.history, st.negatives, st.seen, fb)
    return out


def test_a_wiped_redis_is_rebuilt_to_the_live_state(redis_client, key_prefix: str,  # type: ignore[no-untyped-def]
                                                   small_dataset: Path, small_model: Path,
                                                   tmp_path: Path) -> None:
    store = FeatureStore(redis_client, key_prefix)
    bundle = ModelBundle.load(small_model)
    load_features(store, bundle, overwrite_history=False)  # the first publish
    log = EventLog(tmp_path / "events")
    events = live_events(small_dataset, 3000, seed=1)
    for i in range(0, len(events), 250):  # the trainer: log, then apply
        batch = events[i: i + 250]
        log.append(batch)
        store.apply_events(batch)
    users = sorted(bundle.users)
    before = snapshot(store, users)
    assert sum(len(h) for h, *_ in before.values()) > 0

    redis_client.flushdb()  # Redis lost
    assert store.user(users[0]).history == []
    res = rebuild(store, small_dataset, log, tmp_path / "events" / "videos.jsonl", bundle)
    assert res.users >= len(users) and res.events == len(events)
    after = snapshot(store, users)
    diff = [u for u in users if after[u] != before[u]]
    assert not diff, (diff[:3], before[diff[0]], after[diff[0]])
    # A redelivery of an event applied before the loss is not applied again.
    again = store.apply_events(events[-10:])
    assert again.duplicates == 10 - len(again.unknown_video) and not again.applied
