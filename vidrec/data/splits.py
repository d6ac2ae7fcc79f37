"""Train/test splits and relevance labels for offline evaluation (DESIGN.md §4).

Two protocols:

- per-user temporal: each user's most recent interactions are the test set, the rest is
  training; this measures "what will a known user watch next".
- cold start: a random set of users is held out entirely; a model sees only their profile
  features and must rank for them; this measures the new-user path.

The unit that is split is the (user, video) pair, not the event row: a video stream holds
several events per pair (click, watch, like, ...), and putting a click in train and the
watch of the same video in test would leak the answer and, through the seen filter, also
make the answer unrecommendable. A pair's time is its first engagement (any event but an
impression); impressions alone are not engagement, so impression-only pairs are neither
counted nor ranked, they just fall on the side their timestamp puts them. For MovieLens
each row is one rating of one movie, so pairs and rows coincide.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from vidrec.schema import USER_ID, VIDEO_ID

__all__ = [
    "NON_ENGAGEMENT_EVENTS",
    "RelevanceThresholds",
    "cold_start_split",
    "is_relevant",
    "item_counts",
    "relevant_sets",
    "seen_sets",
    "temporal_split",
    "validation_split",
]

# Events that show a video without the user acting on it; they do not make a pair.
NON_ENGAGEMENT_EVENTS: tuple[str, ...] = ("impression",)


@dataclass(frozen=True)
class RelevanceThresholds:
    """What counts as "the user wanted this video" when scoring a held-out interaction.

    Defaults: an explicit rating of 4 or 5 out of 5, a like or a share, or a watch of at
    least 80% of the video. Clicks and short watches are not relevant: they are what a
    misleading thumbnail earns.
    """

    rating_min: float = 4.0
    watch_min: float = 0.8
    positive_events: tuple[str, ...] = ("like", "share")


DEFAULT_THRESHOLDS = RelevanceThresholds()


def is_relevant(
    interactions: pd.DataFrame, thresholds: RelevanceThresholds = DEFAULT_THRESHOLDS
) -> np.ndarray:
    """Boolean mask over the rows of `interactions` marking relevant (positive) events."""
    event = interactions["event"].to_numpy(dtype=object)
    value = interactions["value"].to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore"):
        rating_ok = (event == "rating") & (value >= thresholds.rating_min)
        watch_ok = (event == "watch") & (value >= thresholds.watch_min)
    positive = np.isin(event, np.array(thresholds.positive_events, dtype=object))
    return np.asarray(rating_ok | watch_ok | positive, dtype=bool)


def _engagement_pairs(interactions: pd.DataFrame) -> pd.DataFrame:
    """One row per engaged (user, video) pair with its first timestamp and row position,
    sorted per user by time, ties broken by the original row order."""
    pos = np.arange(len(interactions))
    engaged = ~interactions["event"].isin(NON_ENGAGEMENT_EVENTS).to_numpy()
    frame = pd.DataFrame(
        {
            USER_ID: interactions[USER_ID].to_numpy()[engaged],
            VIDEO_ID: interactions[VIDEO_ID].to_numpy()[engaged],
            "ts": interactions["timestamp"].to_numpy()[engaged],
            "pos": pos[engaged],
        }
    )
    pairs = frame.groupby([USER_ID, VIDEO_ID], sort=False, as_index=False).agg(
        ts=("ts", "min"), pos=("pos", "min")
    )
    return pairs.sort_values([USER_ID, "ts", "pos"], kind="stable").reset_index(drop=True)


def _n_test(n: np.ndarray, test_frac: float) -> np.ndarray:
    """floor(n * frac) but at least 1: "the last 20%" of 7 interactions is 1 of them."""
    return np.maximum(1, np.floor(n * test_frac + 1e-9)).astype(np.int64)


def temporal_split(
    interactions: pd.DataFrame, test_frac: float = 0.2, min_interactions: int = 5
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per user, the last `test_frac` of engaged videos by time are test, the rest train.

    A user with fewer than `min_interactions` engaged videos goes wholly to train: with so
    little history the test would be one coin flip and the training side nearly empty.
    All rows of a (user, video) pair land on the same side. Row order is kept.
    """
    if not 0.0 < test_frac < 1.0:
        raise ValueError(f"test_frac must be in (0, 1), got {test_frac}")
    pairs = _engagement_pairs(interactions)
    user_codes, _ = pd.factorize(pairs[USER_ID])
    n_per_user = np.bincount(user_codes) if len(pairs) else np.zeros(0, dtype=np.int64)
    n = n_per_user[user_codes]
    rank = pairs.groupby(USER_ID, sort=False).cumcount().to_numpy()
    n_test = np.where(n >= min_interactions, _n_test(n, test_frac), 0)
    pairs["test"] = rank >= n - n_test

    keyed = interactions[[USER_ID, VIDEO_ID, "timestamp"]].merge(
        pairs[[USER_ID, VIDEO_ID, "test"]], on=[USER_ID, VIDEO_ID], how="left"
    )
    unpaired = pd.isna(keyed["test"]).to_numpy()
    test = np.zeros(len(keyed), dtype=bool)
    test[~unpaired] = keyed["test"].to_numpy()[~unpaired].astype(bool)
    if unpaired.any():
        cutoff = pairs.loc[pairs["test"]].groupby(USER_ID)["ts"].min()
        user_cutoff = keyed[USER_ID].map(cutoff).to_numpy(dtype=np.float64)
        with np.errstate(invalid="ignore"):
            late = keyed["timestamp"].to_numpy(dtype=np.float64) >= user_cutoff
        test[unpaired] = late[unpaired]
    return (
        interactions.loc[~test].reset_index(drop=True),
        interactions.loc[test].reset_index(drop=True),
    )


def validation_split(
    train: pd.DataFrame, test_frac: float = 0.2, min_interactions: int = 5
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The temporal split again, inside train, so hyperparameters never see the test set."""
    return temporal_split(train, test_frac=test_frac, min_interactions=min_interactions)


def cold_start_split(
    interactions: pd.DataFrame, users_frac: float = 0.1, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Hold out a seeded random `users_frac` of users with all their interactions.

    Users are drawn from the sorted user ids, so the same data and seed give the same cold
    users whatever the row order. Returns (train, test_cold, sorted cold user ids).
    """
    if not 0.0 < users_frac < 1.0:
        raise ValueError(f"users_frac must be in (0, 1), got {users_frac}")
    users = np.sort(interactions[USER_ID].unique().astype(str))
    n_cold = min(len(users), max(1, round(len(users) * users_frac))) if len(users) else 0
    rng = np.random.default_rng(seed)
    cold = sorted(users[rng.choice(len(users), size=n_cold, replace=False)].tolist())
    mask = interactions[USER_ID].isin(cold).to_numpy()
    return (
        interactions.loc[~mask].reset_index(drop=True),
        interactions.loc[mask].reset_index(drop=True),
        cold,
    )


def relevant_sets(
    test: pd.DataFrame, thresholds: RelevanceThresholds = DEFAULT_THRESHOLDS
) -> dict[str, set[str]]:
    """user -> relevant held-out videos; users with none are absent (they cannot score)."""
    rel = test.loc[is_relevant(test, thresholds), [USER_ID, VIDEO_ID]]
    return {str(u): set(g.tolist()) for u, g in rel.groupby(USER_ID, sort=True)[VIDEO_ID]}


def seen_sets(train: pd.DataFrame) -> dict[str, set[str]]:
    """user -> every video with any training event, impressions included: the seen filter."""
    pairs = train[[USER_ID, VIDEO_ID]]
    return {str(u): set(g.tolist()) for u, g in pairs.groupby(USER_ID, sort=True)[VIDEO_ID]}


def item_counts(train: pd.DataFrame) -> dict[str, int]:
    """video -> number of engagement events in train: the popularity that novelty uses."""
    engaged = train.loc[~train["event"].isin(NON_ENGAGEMENT_EVENTS), VIDEO_ID]
    return {str(v): int(c) for v, c in engaged.value_counts(sort=False).items()}

