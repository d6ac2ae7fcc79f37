"""Properties of the evaluation splits and relevance labels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from vidrec.data.splits import (
    RelevanceThresholds,
    cold_start_split,
    is_relevant,
    item_counts,
    relevant_sets,
    seen_sets,
    temporal_split,
    validation_split,
)


def frame(rows: list[tuple[str, str, int, str, float]]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["user_id", "video_id", "timestamp", "event", "value"])
    return df.astype({"timestamp": "int64", "value": "float64"})


def ratings(n_users: int, per_user: int, seed: int = 0) -> pd.DataFrame:
    """Each user rates `per_user` distinct videos at shuffled times."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        times = rng.permutation(per_user) * 10 + 1000
        for j in range(per_user):
            rows.append((f"u{u}", f"v{j}", int(times[j]), "rating", float(rng.integers(1, 6))))
    return frame(rows)


def test_is_relevant_default_and_custom_thresholds() -> None:
    df = frame(
        [
            ("u", "a", 1, "rating", 4.0),
            ("u", "b", 1, "rating", 3.0),
            ("u", "c", 1, "like", np.nan),
            ("u", "d", 1, "share", np.nan),
            ("u", "e", 1, "watch", 0.8),
            ("u", "f", 1, "watch", 0.5),
            ("u", "g", 1, "click", np.nan),
            ("u", "h", 1, "dislike", np.nan),
            ("u", "i", 1, "impression", np.nan),
            ("u", "j", 1, "rating", np.nan),
        ]
    )
    assert is_relevant(df).tolist() == [1, 0, 1, 1, 1, 0, 0, 0, 0, 0]
    strict = RelevanceThresholds(rating_min=5.0, watch_min=0.4, positive_events=("like",))
    assert is_relevant(df, strict).tolist() == [0, 0, 1, 0, 1, 1, 0, 0, 0, 0]


def test_temporal_split_last_fifth_per_user_with_stable_ties() -> None:
    # u1: 10 ratings, t = 9..0 reversed in file order except a tie at the end
    rows = [("u1", f"v{j}", 100 - j, "rating", 5.0) for j in range(8)]
    rows += [("u1", "tie_first", 50, "rating", 5.0), ("u1", "tie_second", 50, "rating", 5.0)]
    # u2: 7 ratings -> floor(1.4) = 1 test; u3: 4 ratings < 5 -> all train
    rows += [("u2", f"w{j}", j, "rating", 4.0) for j in range(7)]
    rows += [("u3", f"x{j}", j, "rating", 4.0) for j in range(4)]
    df = frame(rows)
    train, test = temporal_split(df, test_frac=0.2, min_interactions=5)
    assert len(train) + len(test) == len(df)
    by_user = {u: set(g) for u, g in test.groupby("user_id")["video_id"]}
    # u1's two latest are v0 (t=100) and v1 (t=99); the tie at t=50 is earliest
    assert by_user == {"u1": {"v0", "v1"}, "u2": {"w6"}}
    # every test row is at least as late as every train row of the same user
    for u, g in test.groupby("user_id"):
        assert g["timestamp"].min() >= train.loc[train.user_id == u, "timestamp"].max()
    # the first of two tied rows goes to train when only one of them fits in test
    tie = frame([("u", f"v{j}", j, "rating", 5.0) for j in range(4)]
                + [("u", "first", 9, "rating", 5.0), ("u", "second", 9, "rating", 5.0)])
    tr, te = temporal_split(tie, min_interactions=5)
    assert te["video_id"].tolist() == ["second"] and "first" in tr["video_id"].tolist()


def test_temporal_split_respects_min_interactions_and_fraction() -> None:
    df = ratings(n_users=20, per_user=15)
    train, test = temporal_split(df, test_frac=0.2, min_interactions=5)
    assert test.groupby("user_id").size().eq(3).all()
    assert test["user_id"].nunique() == 20
    train, test = temporal_split(df, test_frac=0.2, min_interactions=16)
    assert test.empty and len(train) == len(df)
    with pytest.raises(ValueError):
        temporal_split(df, test_frac=1.0)


def test_temporal_split_keeps_a_pair_on_one_side() -> None:
    rows = [("u", f"v{j}", 10 * j, "watch", 0.9) for j in range(5)]
    # v4's like arrives later; v0 is watched again late but its pair started early
    rows += [("u", "v4", 60, "like", np.nan), ("u", "v0", 70, "watch", 1.0)]
    # impressions: of a test video (follows the pair), and impression-only before/after cutoff
    rows += [("u", "v4", 39, "impression", np.nan), ("u", "old", 5, "impression", np.nan),
             ("u", "new", 80, "impression", np.nan)]
    train, test = temporal_split(frame(rows), min_interactions=5)
    assert set(test["video_id"]) == {"v4", "new"}
    assert len(test[test.video_id == "v4"]) == 3
    assert set(train["video_id"]) == {"v0", "v1", "v2", "v3", "old"}


def test_validation_split_is_carved_from_train_only() -> None:
    df = ratings(n_users=10, per_user=20)
    train, test = temporal_split(df)
    fit, val = validation_split(train)
    key = ["user_id", "video_id"]
    train_pairs = set(map(tuple, train[key].to_numpy().tolist()))
    test_pairs = set(map(tuple, test[key].to_numpy().tolist()))
    val_pairs = set(map(tuple, val[key].to_numpy().tolist()))
    fit_pairs = set(map(tuple, fit[key].to_numpy().tolist()))
    assert val_pairs and val_pairs <= train_pairs and not val_pairs & test_pairs
    assert fit_pairs | val_pairs == train_pairs and not fit_pairs & val_pairs
    assert val.groupby("user_id").size().eq(3).all()  # floor(16 * 0.2)


def test_cold_start_split_holds_users_out_and_is_seeded() -> None:
    df = ratings(n_users=50, per_user=6)
    train, test, cold = cold_start_split(df, users_frac=0.1, seed=7)
    assert len(cold) == 5 and cold == sorted(cold)
    assert set(test["user_id"]) == set(cold)
    assert not set(train["user_id"]) & set(cold)
    assert len(train) + len(test) == len(df)
    again = cold_start_split(df.sample(frac=1.0, random_state=1), users_frac=0.1, seed=7)[2]
    assert again == cold
    assert cold_start_split(df, users_frac=0.1, seed=8)[2] != cold


def test_relevant_seen_and_counts() -> None:
    df = frame(
        [
            ("u1", "a", 1, "rating", 5.0),
            ("u1", "b", 2, "rating", 2.0),
            ("u2", "a", 3, "impression", np.nan),
            ("u2", "c", 4, "watch", 0.95),
            ("u3", "b", 5, "rating", 1.0),
        ]
    )
    assert relevant_sets(df) == {"u1": {"a"}, "u2": {"c"}}
    assert seen_sets(df) == {"u1": {"a", "b"}, "u2": {"a", "c"}, "u3": {"b"}}
    assert item_counts(df) == {"a": 1, "b": 2, "c": 1}
