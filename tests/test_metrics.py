"""Hand-computed cases for the offline metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vidrec.metrics import (
    average_precision_at_k,
    evaluate,
    hits_at_k,
    ndcg_at_k,
    precision_at_k,
    recall_at_k,
)

RECS = ["a", "b", "c", "d"]
REL = {"a", "c", "e"}
L2, L3, L4, L5 = (math.log2(x) for x in (2, 3, 4, 5))


def test_precision_recall_hand_computed() -> None:
    assert precision_at_k(RECS, REL, 4) == pytest.approx(0.5)
    assert recall_at_k(RECS, REL, 4) == pytest.approx(2 / 3)
    assert precision_at_k(RECS, REL, 1) == pytest.approx(1.0)
    assert recall_at_k(RECS, REL, 2) == pytest.approx(1 / 3)


def test_short_list_counts_missing_slots_as_misses() -> None:
    assert precision_at_k(["a"], REL, 4) == pytest.approx(0.25)
    assert hits_at_k(["a"], REL, 3).tolist() == [1.0, 0.0, 0.0]


def test_average_precision_hand_computed() -> None:
    # hits at ranks 1 and 3: P@1 = 1, P@3 = 2/3; min(4, 3) = 3 relevant reachable
    assert average_precision_at_k(RECS, REL, 4) == pytest.approx((1 + 2 / 3) / 3)
    # k=2: only rank 1 hits; min(2, 3) = 2
    assert average_precision_at_k(RECS, REL, 2) == pytest.approx(1 / 2)
    # a perfect list scores 1 even when there are more relevant items than k
    assert average_precision_at_k(["a", "c"], REL, 2) == pytest.approx(1.0)


def test_ndcg_hand_computed() -> None:
    dcg = 1 / L2 + 1 / L4
    idcg = 1 / L2 + 1 / L3 + 1 / L4
    assert ndcg_at_k(RECS, REL, 4) == pytest.approx(dcg / idcg)
    # k=2: dcg = 1/log2(2); ideal has min(2, 3) = 2 hits
    assert ndcg_at_k(RECS, REL, 2) == pytest.approx(1.0 / (1 / L2 + 1 / L3))
    assert ndcg_at_k(["c", "a"], REL, 2) == pytest.approx(1.0)
    assert ndcg_at_k(["x", "y", "z", "a"], {"a"}, 4) == pytest.approx(1 / L5)


def test_duplicates_count_once_and_empty_relevant_is_zero() -> None:
    assert precision_at_k(["a", "a"], {"a"}, 2) == pytest.approx(0.5)
    assert ndcg_at_k(["a", "a"], {"a"}, 2) == pytest.approx(1.0)
    assert recall_at_k(RECS, set(), 4) == 0.0
    assert average_precision_at_k(RECS, set(), 4) == 0.0
    assert ndcg_at_k(RECS, set(), 4) == 0.0
    with pytest.raises(ValueError):
        precision_at_k(RECS, REL, 0)


def test_evaluate_means_over_users_and_counts_silent_users_as_zero() -> None:
    recs = {"u1": RECS, "u2": ["e", "x"], "u4": ["a"]}
    relevant = {"u1": REL, "u2": {"e"}, "u3": {"a"}, "u5": set()}
    out = evaluate(recs, relevant, ks=[2, 4], catalog=list("abcdefgx"))
    # u1, u2, u3 count (u3 has no recs -> zeros); u5 has nothing relevant; u4 not in relevant
    assert out["users"] == 3
    assert out["precision@4"] == pytest.approx((0.5 + 0.25 + 0.0) / 3)
    assert out["recall@4"] == pytest.approx((2 / 3 + 1.0 + 0.0) / 3)
    assert out["map@4"] == pytest.approx(((1 + 2 / 3) / 3 + 1.0 + 0.0) / 3)
    u1_ndcg = (1 / L2 + 1 / L4) / (1 / L2 + 1 / L3 + 1 / L4)
    assert out["ndcg@4"] == pytest.approx((u1_ndcg + 1.0 + 0.0) / 3)
    assert out["precision@2"] == pytest.approx((0.5 + 0.5 + 0.0) / 3)
    per_list = {"precision": precision_at_k, "recall": recall_at_k,
                "map": average_precision_at_k, "ndcg": ndcg_at_k}
    for k in (2, 4):
        for name, fn in per_list.items():
            expected = np.mean([fn(recs.get(u, []), relevant[u], k) for u in ("u1", "u2", "u3")])
            assert out[f"{name}@{k}"] == pytest.approx(expected)
    # coverage over the evaluated users' lists: @2 {a, b, e, x}, @4 {a, b, c, d, e, x}
    assert out["coverage@2"] == pytest.approx(4 / 8)
    assert out["coverage@4"] == pytest.approx(6 / 8)
    assert "diversity@4" not in out and "novelty@4" not in out


def test_evaluate_diversity_and_novelty() -> None:
    vectors = {
        "a": np.array([1.0, 0.0]),
        "b": np.array([0.0, 2.0]),
        "c": np.array([1.0, 1.0]),
        "z": np.array([0.0, 0.0]),
    }
    recs = {"u1": ["a", "b", "c"], "u2": ["a", "z"]}
    relevant = {"u1": {"a"}, "u2": {"a"}}
    popularity = {"a": 6, "b": 2}  # total 8; c and z unseen -> count 1
    out = evaluate(recs, relevant, [3], catalog=["a", "b", "c", "z"],
                   popularity=popularity, item_vectors=vectors)
    s = 1 / math.sqrt(2)
    u1_div = 1 - (0.0 + s + s) / 3  # pairs ab, ac, bc
    u2_div = 1 - 0.0  # a zero vector is orthogonal to everything
    assert out["diversity@3"] == pytest.approx((u1_div + u2_div) / 2)
    u1_nov = (-math.log2(6 / 8) - math.log2(2 / 8) - math.log2(1 / 8)) / 3
    u2_nov = (-math.log2(6 / 8) - math.log2(1 / 8)) / 2
    assert out["novelty@3"] == pytest.approx((u1_nov + u2_nov) / 2)
    assert out["coverage@3"] == pytest.approx(1.0)


def test_evaluate_with_no_users_and_bad_ks() -> None:
    out = evaluate({}, {}, [5], catalog=["a"])
    assert out["users"] == 0 and math.isnan(out["ndcg@5"]) and out["coverage@5"] == 0.0
    with pytest.raises(ValueError):
        evaluate({}, {}, [], catalog=[])
    with pytest.raises(ValueError):
        evaluate({}, {}, [0], catalog=[])
