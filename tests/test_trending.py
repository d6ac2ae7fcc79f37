"""Trending counts in a real Redis: decay, seeding, rescaling, exactly-once with events."""

from __future__ import annotations

import time

import numpy as np

from vidrec.store import trending
from vidrec.store.features import FeatureStore
from vidrec.v1 import events_pb2

E = events_pb2
WEEK = trending.HALF_LIFE_S


def likes(video: str, n: int, t: float, tag: str) -> list[events_pb2.Event]:
    return [E.Event(event_id=f"{tag}{i}", user_id=f"u{i}", video_id=video,
                    type=E.EVENT_TYPE_LIKE, timestamp=t) for i in range(n)]


def test_a_week_old_count_weighs_half_and_the_list_follows(redis_client, key_prefix: str) -> None:  # type: ignore[no-untyped-def]
    """Seeded a week ago: a=10, b=4, c=1. Six likes for c now count 6 against a's 10 / 2 =
    5, so c leads the popular list; the seed alone had it last."""
    store = FeatureStore(redis_client, key_prefix)
    store.put_videos([{"video_id": v} for v in "abc"])
    now = time.time()
    assert store.seed_trending(["a", "b", "c"], np.array([10.0, 4.0, 1.0]), now=now - WEEK)
    assert store.refresh_trending(now=now) == ["a", "b", "c"]
    assert store.popular_list(10) == ["a", "b", "c"]
    store.apply_events(likes("c", 6, now, "x"))
    got = store.trending_scores(now=now)
    assert abs(got["a"] - 5.0) < 1e-6 and abs(got["b"] - 2.0) < 1e-6
    assert abs(got["c"] - (0.5 + 6.0)) < 1e-6
    assert store.refresh_trending(now=now) == ["c", "a", "b"]
    assert store.popular_list(10) == ["c", "a", "b"]
    # Redelivered events are not counted twice (the same atomic script as the history).
    store.apply_events(likes("c", 6, now, "x"))
    assert abs(store.trending_scores(now=now)["c"] - 6.5) < 1e-6


def test_a_republish_keeps_live_counts(redis_client, key_prefix: str) -> None:  # type: ignore[no-untyped-def]
    store = FeatureStore(redis_client, key_prefix)
    now = time.time()
    assert store.seed_trending(["a", "b"], np.array([5.0, 1.0]), now=now)
    assert not store.seed_trending(["a", "b"], np.array([1.0, 50.0]), now=now)
    assert store.refresh_trending(now=now) == ["a", "b"]


def test_rescaling_keeps_every_ratio(redis_client, key_prefix: str) -> None:  # type: ignore[no-untyped-def]
    """After ~2 years (100 half-lives) the raw scores are 2^100 times their counts; refresh
    rescales them and moves the reference time, and the decayed counts stay the same."""
    store = FeatureStore(redis_client, key_prefix)
    store.put_videos([{"video_id": v} for v in "ab"])
    now = time.time()
    store.seed_trending(["a"], np.array([3.0]), now=now - 100 * WEEK)
    store.apply_events(likes("b", 2, now, "y"))
    before = store.trending_scores(now=now)
    assert abs(before["b"] - 2.0) < 1e-6 and before["a"] < 1e-20
    raw = dict(redis_client.zrange(store.keys.trending(), 0, -1, withscores=True))
    assert raw[b"b"] > 2.0**90
    store.refresh_trending(now=now)
    assert abs(float(redis_client.get(store.keys.trending_ref())) - now) < 1e-3
    after = store.trending_scores(now=now)
    assert abs(after["b"] - 2.0) < 1e-9 and abs(after["a"] / before["a"] - 1) < 1e-9
    raw = dict(redis_client.zrange(store.keys.trending(), 0, -1, withscores=True))
    assert abs(raw[b"b"] - 2.0) < 1e-9


def test_a_clock_far_ahead_counts_as_now(redis_client, key_prefix: str) -> None:  # type: ignore[no-untyped-def]
    """A client whose clock says next year must not outweigh a year of real events."""
    store = FeatureStore(redis_client, key_prefix)
    store.put_videos([{"video_id": "a"}])
    now = time.time()
    store.seed_trending([], np.array([]), now=now)
    store.apply_events(likes("a", 1, now + 365 * 86400, "z"))
    assert store.trending_scores(now=now)["a"] < 2 ** (120 / WEEK) + 1e-6


def test_one_user_counts_once_per_video(redis_client, key_prefix: str) -> None:  # type: ignore[no-untyped-def]
    """A click, a watch and five likes by one user lift a video by one; a second user's
    like by one more."""
    store = FeatureStore(redis_client, key_prefix)
    store.put_videos([{"video_id": "a"}])
    now = time.time()
    store.seed_trending([], np.array([]), now=now)
    types = [E.EVENT_TYPE_CLICK, E.EVENT_TYPE_WATCH] + [E.EVENT_TYPE_LIKE] * 5
    store.apply_events([E.Event(event_id=f"c{i}", user_id="u1", video_id="a", type=t,
                                value=0.9, timestamp=now) for i, t in enumerate(types)])
    assert abs(store.trending_scores(now=now)["a"] - 1.0) < 1e-9
    store.apply_events(likes("a", 1, now, "other-"))  # user u0
    assert abs(store.trending_scores(now=now)["a"] - 2.0) < 1e-9


def test_fresh_fake_users_cannot_lift_a_video_into_popular(redis_client, key_prefix: str) -> None:  # type: ignore[no-untyped-def]
    """The attack the first test above shows (six fresh users like c, c tops "popular" for
    every new user) does nothing with the trainer's rule: a user's likes count once they
    reacted to more than 5 other videos. Established users still move the list."""
    store = FeatureStore(redis_client, key_prefix)
    store.put_videos([{"video_id": v} for v in "abc" + "0123456789"])
    now = time.time()
    store.seed_trending(["a", "b", "c"], np.array([10.0, 4.0, 1.0]), now=now - WEEK)
    fake = likes("c", 200, now, "fake")  # 200 brand-new accounts
    store.apply_events(fake, trending_min_seen=5)
    assert store.refresh_trending(now=now) == ["a", "b", "c"]
    # Six users with a history of six other videos each do lift it, as real viewers should.
    history = [E.Event(event_id=f"h{u}-{v}", user_id=f"real{u}", video_id=v,
                       type=E.EVENT_TYPE_WATCH, value=0.9, timestamp=now)
               for u in range(6) for v in "012345"]
    store.apply_events(history, trending_min_seen=5)
    real = [E.Event(event_id=f"r{u}", user_id=f"real{u}", video_id="c",
                    type=E.EVENT_TYPE_LIKE, timestamp=now) for u in range(6)]
    store.apply_events(real, trending_min_seen=5)
    assert store.refresh_trending(now=now)[0] == "c"
