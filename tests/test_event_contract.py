"""One event contract (vidrec/events.py): the offline path (training's history, negatives
and MF matrix) and the online path (the trainer's apply script in a real Redis, then the
fold-in) give the same answer for the same event table.

Before the contract a rating was positive online when >= 3 and offline when above the
user's mean minus 2, and the online history moved a video to the front on every positive
event while training ordered it by its first one: these tests failed on that code.
"""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest

from vidrec import events as ev
from vidrec.data.feedback import build_feedback_matrix, first_liked, recency_ranks
from vidrec.models.mf import MFConfig, fold_in, recency_user_factors
from vidrec.store.features import FeatureStore, UserSeed
from vidrec.training.foldin import user_row
from vidrec.training.pipeline import user_records
from vidrec.v1 import events_pb2

W = ev.FeedbackWeights()
VIDEOS = [f"v{i:02d}" for i in range(40)]


def event_table(seed: int = 0, users: int = 12, per_user: int = 45) -> pd.DataFrame:
    """Every kind of event, ratings from users with different means, repeats of a pair."""
    rng = random.Random(seed)
    rows = []
    t = 1_700_000_000
    for u in range(users):
        uid = f"u{u}"
        # A generous rater, a harsh one, ...: the same star means different things.
        bias = rng.choice([-1.5, -0.5, 0.0, 0.8, 1.5])
        for _ in range(per_user):
            t += rng.randrange(1, 50)
            vid = rng.choice(VIDEOS)
            name = rng.choice(["impression", "click", "watch", "watch", "like", "dislike",
                               "share", "skip", "rating", "rating", "rating"])
            if name == "rating":
                value = float(min(5, max(1, round(3 + bias + rng.gauss(0, 1.2)))))
            elif name == "watch":
                value = round(rng.random(), 2)
            else:
                value = float("nan")
            rows.append((uid, vid, t, name, value))
    # The case from the issue: a 2-star rating by a user whose ratings average 3.5.
    for i, r in enumerate([4.0, 5.0, 3.0, 2.0]):
        rows.append(("skew", VIDEOS[i], t + 10 + i, "rating", r))
    return pd.DataFrame(rows, columns=["user_id", "video_id", "timestamp", "event", "value"])


def as_events(df: pd.DataFrame) -> list[events_pb2.Event]:
    out = []
    for i, (u, v, t, name, value) in enumerate(df.itertuples(index=False)):
        out.append(events_pb2.Event(
            event_id=f"e{i}", user_id=u, video_id=v, type=ev.TYPE_OF[name],
            value=0.0 if np.isnan(value) else value, timestamp=float(t)))
    return out


def offline_scores(df: pd.DataFrame) -> dict[str, dict[str, float]]:
    fm = build_feedback_matrix(df, W)
    out: dict[str, dict[str, float]] = {}
    for i, u in enumerate(fm.user_ids):
        row = fm.score.getrow(i)
        out[str(u)] = {str(fm.video_ids[j]): float(s)
                       for j, s in zip(row.indices, row.data, strict=True)}
    return out


def online_state(store: FeatureStore, users: list[str]
                 ) -> dict[str, tuple[list[str], list[str], dict[str, tuple[float, float]]]]:
    out = {}
    for u in users:
        st = store.user(u)
        out[u] = (st.history, st.negatives, store.user_feedback(u, W))
    return out


def assert_same(offline: pd.DataFrame, store: FeatureStore) -> None:
    records = user_records(offline, W, {})
    scores = offline_scores(offline)
    online = online_state(store, sorted(records))
    for u, rec in records.items():
        hist, negs, fb = online[u]
        assert hist == rec.history, u
        assert negs == rec.negatives, u
        # Impression-only pairs are matrix entries of score 0 (no effect on ALS) and
        # have no feedback entry online.
        want = {v: s for v, s in scores.get(u, {}).items() if s != 0.0}
        got = {v: s for v, (s, _) in fb.items() if s != 0.0}
        assert got.keys() == want.keys(), u
        assert all(abs(got[v] - want[v]) < 1e-5 for v in want), u
        # The time of each pair's first event (the MF recency rank) too.
        assert {v: t for v, (_, t) in fb.items()} == {
            v: f[3] for v, f in rec.feedback.items()}, u


@pytest.fixture
def store(redis_client, key_prefix: str) -> FeatureStore:  # type: ignore[no-untyped-def]
    s = FeatureStore(redis_client, key_prefix)
    s.put_videos([{"video_id": v} for v in VIDEOS])
    return s


def test_a_rating_means_the_same_offline_and_online() -> None:
    df = event_table()
    kinds = ev.event_kinds(df, W)
    skew = (df["user_id"] == "skew").to_numpy()
    # 4, 5, 3 then 2: the running mean is 3.5, 2 > 3.5 - 2, so a weak positive, as the
    # matrix weighs it (1 + 0.5 * (2 - 3.5) = 0.25 > 0).
    assert list(kinds[skew]) == ["positive"] * 4
    assert ev.kind_of("rating", ev.rating_weight(2.0, 3.5, W)) == ev.Kind.POSITIVE
    assert ev.kind_of("rating", ev.rating_weight(1.0, 4.5, W)) == ev.Kind.NEGATIVE
    assert ev.kind_of("watch", ev.base_weight("watch", 0.1, W)) == ev.Kind.SEEN
    assert ev.kind_of("impression", 0.0) == ev.Kind.EXPOSURE


def test_offline_and_online_paths_hold_the_same_history_negatives_and_weights(
        store: FeatureStore) -> None:
    df = event_table()
    events = as_events(df)
    for s in range(0, len(events), 97):  # batches of any size, in time order
        res = store.apply_events(events[s: s + 97])
        assert not res.unknown_video
    assert_same(df, store)
    # A redelivered batch changes nothing.
    store.apply_events(events[:200])
    assert_same(df, store)


def test_a_published_user_then_live_events_equals_training_on_everything(
        store: FeatureStore) -> None:
    """The real flow: publish seeds a user from training, events arrive afterwards."""
    df = event_table(seed=3)
    cut = len(df) // 2
    seen_by_training = df.iloc[:cut]
    seeds = [UserSeed(u, r.profile, r.history, r.seen, r.negatives,
                      {v: (f[0], f[1], f[2], f[3]) for v, f in r.feedback.items()},
                      r.rating_sum, r.rating_n)
             for u, r in user_records(seen_by_training, W, {}).items()]
    store.seed_users(seeds)
    store.apply_events(as_events(df)[cut:])
    assert_same(df, store)
    # A republish must not erase what live events wrote (it seeds only empty users).
    store.seed_users(seeds)
    assert_same(df, store)


def test_online_fold_in_reproduces_the_offline_user_vector(store: FeatureStore) -> None:
    df = event_table(seed=5)
    store.apply_events(as_events(df))
    fm = build_feedback_matrix(df, W, video_ids=np.array(VIDEOS, dtype=object))
    cfg = MFConfig(factors=8, recency_boost=10.0, regularization=0.1)
    y = np.random.default_rng(0).normal(0, 0.3, (len(VIDEOS), 8)).astype(np.float32)
    offline = recency_user_factors(y, fm, recency_ranks(fm, first_liked(df, fm)), cfg)
    index = {v: i for i, v in enumerate(VIDEOS)}
    for i, u in enumerate(fm.user_ids):
        idx, conf, pref = user_row(store.user_feedback(str(u), W), index, cfg, W)
        online = fold_in(y, idx, conf, pref, cfg.regularization)
        np.testing.assert_allclose(online, offline[i], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize(("field", "value", "says"), [
    ("user_id", "u1\n", "characters outside"),          # a trailing newline (log lines)
    ("user_id", "ｕ１", "characters outside"),           # full-width look-alikes
    ("video_id", "v1 ", "characters outside"),
    ("model_version", "/etc/passwd", "not a version name"),
    ("model_version", "../../x", "not a version name"),
    ("model_version", "v" + "1" * 20_000, "not a version name"),
    ("experiment_arm", "x" * 20_000, "not an arm name"),
    ("experiment_arm", "a\nb", "not an arm name"),
    ("position", 1_000_000, "past any list"),
])
def test_hostile_event_fields_are_refused(field: str, value: object, says: str) -> None:
    E = events_pb2
    from vidrec.events import event_problem

    e = E.Event(event_id="e1", user_id="u1", video_id="v1", type=E.EVENT_TYPE_CLICK,
                model_version="v3", experiment_arm="hybrid")
    setattr(e, field, value)
    problem = event_problem(e)
    assert problem is not None and says in problem


def test_the_gateway_refuses_old_events_and_unknown_arms() -> None:
    E = events_pb2
    from services.gateway.validation import Invalid, check_events
    from vidrec.v1 import gateway_pb2

    def req(**kw: object) -> gateway_pb2.LogEventsRequest:
        e = E.Event(event_id="e1", user_id="u1", video_id="v1", type=E.EVENT_TYPE_CLICK)
        for k, v in kw.items():
            setattr(e, k, v)
        return gateway_pb2.LogEventsRequest(events=[e])

    import time

    now = time.time()
    check_events(req(timestamp=now - 3600, experiment_arm="hybrid"), ["hybrid"], now=now)
    with pytest.raises(Invalid, match="days old"):
        check_events(req(timestamp=1.0), ["hybrid"], now=now)  # 1970
    with pytest.raises(Invalid, match="ahead of the server clock"):
        check_events(req(timestamp=now + 10 * 365 * 86400), ["hybrid"], now=now)  # 10 y on
    with pytest.raises(Invalid, match="not one of this deployment's arms"):
        check_events(req(experiment_arm="made_up"), ["hybrid", "mf_only"], now=now)
