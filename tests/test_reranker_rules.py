"""Hand-built cases for the rerank business rules, vidrec.rerank (no gRPC, no services)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from vidrec.config import RerankerSettings
from vidrec.rerank import (
    DEFAULT_RULES,
    RULES,
    Item,
    Ranked,
    RerankConfig,
    RerankPlan,
    UserState,
    dedupe,
    reason_for,
    recency,
    rerank,
)

NOW = 1_700_000_000.0
DAY = 86_400.0
USER = UserState(user_id="u1")


def ids(out: list[Ranked]) -> list[str]:
    return [r.item.video_id for r in out]


def cfg(*rules: str, **kw: object) -> RerankConfig:
    return RerankConfig(rules=rules, **kw)  # type: ignore[arg-type]


def item(vid: str, score: float, **kw: object) -> Item:
    kw.setdefault("source", "two_tower")
    return Item(video_id=vid, score=score, **kw)  # type: ignore[arg-type]


# --- filters -------------------------------------------------------------------------------


def test_seen_filter_drops_seen_and_recent() -> None:
    items = [item("a", 0.9), item("b", 0.8), item("c", 0.7), item("d", 0.6)]
    user = UserState(user_id="u1", seen={"a"}, recent=["c"])
    out = rerank(items, user, 10, cfg("seen_filter"), NOW)
    assert ids(out) == ["b", "d"]


def test_disliked_creators_and_categories_dropped() -> None:
    items = [
        item("a", 0.9, creator_id="bad"),
        item("b", 0.8, category="gore"),
        item("c", 0.7, creator_id="ok", category="music"),
        item("d", 0.6),  # no metadata: nothing to dislike
    ]
    user = UserState(user_id="u1", disliked_creators={"bad"}, disliked_categories={"gore"})
    assert ids(rerank(items, user, 10, cfg("disliked"), NOW)) == ["c", "d"]


# --- caps ----------------------------------------------------------------------------------


def test_caps_respected_exactly() -> None:
    items = [item(f"a{i}", 1.0 - i / 100, creator_id="A", category="music") for i in range(6)]
    items += [item(f"b{i}", 0.5 - i / 100, creator_id="B", category="music") for i in range(3)]
    items += [item(f"c{i}", 0.3 - i / 100, creator_id="C", category="news") for i in range(3)]
    out = rerank(items, USER, 10, cfg("caps", max_per_creator=2, max_per_category=3), NOW)
    creators = [r.item.creator_id for r in out]
    categories = [r.item.category for r in out]
    assert creators.count("A") == 2
    assert categories.count("music") == 3
    assert ids(out) == ["a0", "a1", "b0", "c0", "c1"]


def test_caps_ignore_missing_metadata_and_non_positive_limits() -> None:
    items = [item(f"x{i}", 1.0 - i / 10) for i in range(5)]  # no creator, no category
    assert len(rerank(items, USER, 10, cfg("caps", max_per_creator=1), NOW)) == 5
    same = [item(f"a{i}", 1.0 - i / 10, creator_id="A") for i in range(5)]
    assert len(rerank(same, USER, 10, cfg("caps", max_per_creator=0), NOW)) == 5


def test_disabled_caps_have_no_effect() -> None:
    items = [item(f"a{i}", 1.0 - i / 100, creator_id="A") for i in range(5)]
    assert len(rerank(items, USER, 5, cfg(max_per_creator=1), NOW)) == 5


# --- MMR -----------------------------------------------------------------------------------


def _near_duplicates() -> list[Item]:
    return [
        item("a", 1.00, category="music", creator_id="A"),
        item("a_dup", 0.99, category="music", creator_id="A"),
        item("other", 0.90, category="news", creator_id="B"),
    ]


def test_mmr_prefers_diverse_item_when_lambda_below_one() -> None:
    assert ids(rerank(_near_duplicates(), USER, 2, cfg("mmr", mmr_lambda=0.5), NOW)) == [
        "a",
        "other",
    ]


def test_mmr_lambda_one_is_score_order() -> None:
    assert ids(rerank(_near_duplicates(), USER, 2, cfg("mmr", mmr_lambda=1.0), NOW)) == [
        "a",
        "a_dup",
    ]


def test_mmr_disabled_is_score_order() -> None:
    assert ids(rerank(_near_duplicates(), USER, 2, cfg(mmr_lambda=0.5), NOW)) == ["a", "a_dup"]


def test_mmr_similarity_is_half_category_half_creator() -> None:
    # After "a": same category only is 0.5 similar, so "same_cat" (0.5*0.9 - 0.5*0.5 = 0.2)
    # still beats the unrelated "other" (0.0); same category and creator (-0.05) does not.
    same_cat = [
        item("a", 1.00, category="music", creator_id="A"),
        item("same_cat", 0.99, category="music", creator_id="B"),
        item("other", 0.90, category="news", creator_id="C"),
    ]
    assert ids(rerank(same_cat, USER, 2, cfg("mmr", mmr_lambda=0.5), NOW)) == ["a", "same_cat"]
    same_both = [*same_cat[::2], item("same_both", 0.99, category="music", creator_id="A")]
    assert ids(rerank(same_both, USER, 2, cfg("mmr", mmr_lambda=0.5), NOW)) == ["a", "other"]


def test_mmr_missing_metadata_is_never_similar() -> None:
    items = [item("a", 1.0), item("b", 0.99), item("c", 0.9, category="news", creator_id="C")]
    assert ids(rerank(items, USER, 2, cfg("mmr", mmr_lambda=0.5), NOW)) == ["a", "b"]
    out = rerank(items, USER, 10, cfg("mmr", mmr_lambda=0.3), NOW)
    assert sorted(ids(out)) == ["a", "b", "c"]


# --- freshness -----------------------------------------------------------------------------


def test_freshness_changes_order() -> None:
    items = [
        item("old", 0.50, upload_ts=NOW - 300 * DAY),
        item("new", 0.48, upload_ts=NOW - 1 * DAY),
    ]
    c = dict(freshness_days=14.0, freshness_boost=0.05)
    assert ids(rerank(items, USER, 2, cfg(**c), NOW)) == ["old", "new"]
    out = rerank(items, USER, 2, cfg("freshness", **c), NOW)
    assert ids(out) == ["new", "old"]
    assert out[0].item.score == pytest.approx(0.48 + 0.05 * (13 / 14))
    assert out[1].item.score == 0.50


def test_recency_is_linear_and_bounded() -> None:
    assert recency(item("x", 0, upload_ts=NOW), NOW, 10) == 1.0
    assert recency(item("x", 0, upload_ts=NOW - 5 * DAY), NOW, 10) == pytest.approx(0.5)
    assert recency(item("x", 0, upload_ts=NOW - 10 * DAY), NOW, 10) == 0.0
    assert recency(item("x", 0, upload_ts=NOW + DAY), NOW, 10) == 1.0  # clock skew
    assert recency(item("x", 0), NOW, 10) == 0.0
    assert recency(item("x", 0, upload_ts=NOW), NOW, 0) == 0.0


# --- exploration ---------------------------------------------------------------------------


def _one_category_plus_outsider() -> list[Item]:
    items = [item(f"m{i}", 1.0 - i / 100, category="music", creator_id=f"c{i}") for i in range(5)]
    return items + [item("sci", 0.1, category="science", creator_id="z")]


def test_exploration_slot_holds_new_category_with_reason() -> None:
    out = rerank(_one_category_plus_outsider(), USER, 3, cfg("exploration"), NOW)
    assert ids(out) == ["m0", "m1", "sci"]
    assert out[-1].item.source == "exploration"
    assert out[-1].reason == "Something different: science"
    assert all(r.item.source == "two_tower" for r in out[:-1])


def test_exploration_is_deterministic_per_user_and_day() -> None:
    items = [item(f"m{i}", 1.0 - i / 100, category="music") for i in range(3)]
    items += [item(f"x{i}", 0.2 - i / 100, category=f"cat{i}") for i in range(8)]
    c = cfg("exploration", exploration_pool=5)
    first = rerank(items, USER, 3, c, NOW)
    assert ids(rerank(items, USER, 3, c, NOW + 60)) == ids(first)  # same day
    assert ids(rerank(list(reversed(items)), USER, 3, c, NOW)) == ids(first)  # input order
    picks = {
        rerank(items, UserState(user_id=f"user{n}"), 3, c, NOW)[-1].item.video_id for n in range(40)
    }
    # varies across users, but only among the 5 best eligible candidates
    assert len(picks) > 1
    assert picks <= {"x0", "x1", "x2", "x3", "x4"}


def test_exploration_prefers_a_new_upload_then_a_new_category_then_regular() -> None:
    items = [item(f"m{i}", 1.0 - i / 100, category="music") for i in range(4)]
    fresh = item("f", 0.1, category="music", source="fresh")
    out = rerank(items + [fresh], USER, 3, cfg("exploration"), NOW)
    assert ids(out) == ["m0", "m1", "f"]
    assert out[-1].reason == "Something new to try"
    fresh = item("f", 0.1, category="music", source="fresh", upload_ts=NOW - 3600)
    out = rerank(items + [fresh], USER, 3, cfg("exploration"), NOW)
    assert out[-1].reason == "Just uploaded in music"
    other = item("sci", 0.5, category="science")
    out = rerank(items + [fresh, other], USER, 3, cfg("exploration"), NOW)
    assert ids(out)[-1] == "f"  # a new upload beats a new category for the slot
    assert out[-1].item.source == "exploration"
    out = rerank(items, USER, 3, cfg("exploration"), NOW)
    assert ids(out) == ["m0", "m1", "m2"]
    assert all(r.item.source == "two_tower" for r in out)


def test_exploration_respects_caps_and_k() -> None:
    items = _one_category_plus_outsider()
    items[-1] = replace(items[-1], creator_id="c0")
    out = rerank(items, USER, 3, cfg("caps", "exploration", max_per_creator=1), NOW)
    assert "sci" not in ids(out)  # creator c0 already used its one slot
    assert ids(rerank(items, USER, 1, cfg("exploration"), NOW)) == ["m0"]  # k=1: no slot


def test_exploration_disabled_has_no_effect() -> None:
    out = rerank(_one_category_plus_outsider(), USER, 3, cfg(), NOW)
    assert ids(out) == ["m0", "m1", "m2"]


# --- reasons -------------------------------------------------------------------------------


def test_reasons_match_source() -> None:
    user = UserState(
        user_id="u1",
        recent=["w1"],
        recent_titles={"w1": "Cat Piano"},
        liked_creators={"fav"},
    )
    items = [
        item("s", 0.9, source="content_similar", anchor_video_id="w1"),
        item("s2", 0.85, source="content_similar", anchor_video_id="unknown"),
        item("p", 0.8, source="popular", category="music"),
        item("p2", 0.75, source="popular"),
        item("fl", 0.7, source="fresh", creator_id="fav", category="news"),
        item("f", 0.6, source="fresh", category="news"),
        item("ft", 0.55, upload_ts=NOW - DAY, category="sport"),
        item("t", 0.5, source="two_tower"),
        item("mf", 0.4, source="mf"),
        item("lk", 0.3, source="mf", creator_id="fav"),
    ]
    out = rerank(items, user, 20, cfg("seen_filter"), NOW)
    assert {r.item.video_id: r.reason for r in out} == {
        "s": "Because you watched Cat Piano",
        "s2": "Similar to videos you watched",
        "p": "Popular in music this week",
        "p2": "Popular this week",
        "fl": "New from fav — a creator you like",
        "f": "New in news",
        "ft": "New in sport",
        "t": "Picked for you",
        "mf": "Picked for you",
        "lk": "More from fav, a creator you like",
    }


def test_reason_for_history_anchor_on_any_source() -> None:
    user = UserState(user_id="u1", recent_titles={"w": "Rust in 100s"})
    assert reason_for(item("x", 1, anchor_video_id="w"), user) == "Because you watched Rust in 100s"


# --- robustness ----------------------------------------------------------------------------


def test_duplicates_keep_best_score_at_first_position() -> None:
    items = [
        item("a", 0.2, source="popular"),
        item("b", 0.5),
        item("a", 0.9, source="content_similar"),
        item("a", math.nan),
        item("", 1.0),  # no id: cannot be shown
    ]
    deduped = dedupe(items)
    assert [(i.video_id, i.score) for i in deduped] == [("a", 0.9), ("b", 0.5)]
    out = rerank(items, USER, 10, RerankConfig(), NOW)
    assert ids(out) == ["a", "b"]
    assert out[0].item.source == "content_similar"


def test_k_larger_than_pool_empty_input_and_non_positive_k() -> None:
    items = [item("a", 0.9), item("b", 0.8)]
    assert ids(rerank(items, USER, 100, RerankConfig(), NOW)) == ["a", "b"]
    assert rerank([], USER, 10, RerankConfig(), NOW) == []
    assert rerank(items, USER, 0, RerankConfig(), NOW) == []
    everything_seen = UserState(user_id="u1", seen={"a", "b"})
    assert rerank(items, everything_seen, 10, RerankConfig(), NOW) == []


def test_default_rules_survive_bad_scores_and_missing_metadata() -> None:
    items = [
        item("a", math.nan),
        item("b", math.inf, upload_ts=math.nan),
        item("c", -math.inf),
        item("d", 0.3, category="", creator_id=""),
    ]
    out = rerank(items, USER, 10, RerankConfig(), NOW)
    assert sorted(ids(out)) == ["a", "b", "c", "d"]
    assert out[0].item.video_id == "b"
    assert all(r.reason for r in out)


def test_every_result_has_a_reason_with_all_rules() -> None:
    rng = np.random.default_rng(0)
    items = [
        item(
            f"v{i}",
            float(rng.random()),
            source=["two_tower", "mf", "content_similar", "popular", "fresh"][i % 5],
            category=f"cat{i % 12}",
            creator_id=f"cr{i % 15}",
            upload_ts=NOW - float(rng.integers(0, 60)) * DAY,
        )
        for i in range(100)
    ]
    out = rerank(items, UserState(user_id="u9", seen={"v1", "v2"}), 20, RerankConfig(), NOW)
    assert len(out) == 20
    assert len(set(ids(out))) == 20
    assert not {"v1", "v2"} & set(ids(out))
    assert all(r.reason for r in out)
    assert sum(r.item.source == "exploration" for r in out) == 1


# --- configuration and plug-ins ------------------------------------------------------------


def test_from_settings_uses_reranker_settings() -> None:
    s = RerankerSettings(max_per_creator=3, mmr_lambda=0.6, exploration_slots=2)
    c = RerankConfig.from_settings(s)
    assert (c.max_per_creator, c.max_per_category, c.mmr_lambda) == (3, 4, 0.6)
    assert (c.freshness_days, c.freshness_boost, c.exploration_slots) == (14.0, 0.05, 2)
    assert c.rules == DEFAULT_RULES


def test_from_settings_reads_rules_and_rejects_unknown() -> None:
    with_rules = RerankerSettings(rules=" seen_filter, caps ")
    assert RerankConfig.from_settings(with_rules).rules == ("seen_filter", "caps")

    with pytest.raises(ValueError, match="capz"):
        RerankConfig.from_settings(RerankerSettings(rules="seen_filter,capz"))
    with pytest.raises(ValueError, match="nope"):
        rerank([item("a", 1)], USER, 1, cfg("nope"), NOW)
    with pytest.raises(ValueError):
        RerankConfig(mmr_lambda=1.5)


def test_custom_rule_plugs_in_through_registry() -> None:
    def no_shorts(plan: RerankPlan) -> None:
        plan.pool = [it for it in plan.pool if not it.video_id.startswith("short")]

    registry = {**RULES, "no_shorts": no_shorts}
    items = [item("short1", 0.9), item("long1", 0.8)]
    out = rerank(items, USER, 5, cfg("seen_filter", "no_shorts"), NOW, registry=registry)
    assert ids(out) == ["long1"]



def test_mmr_trade_off_ignores_low_scored_tail_of_the_pool() -> None:
    """New uploads the ranker appends far below its top list (for the exploration slot)
    must not change how MMR trades score against similarity for the rest: with the pool's
    whole score range as the scale they squeezed the top candidates together and the
    similarity term alone picked the list (the hybrid arm lost to mf_only online)."""
    cats = ["music", "news", "sports", "food"]
    top = [item(f"v{i}", 3.0 - 0.05 * i, category=cats[0] if i < 8 else cats[1 + i % 3],
                creator_id=f"c{i}") for i in range(20)]
    tail = [item(f"new{i}", -6.0 - i, category=cats[1 + i % 3], creator_id=f"n{i}",
                 source="fresh") for i in range(5)]
    c = cfg("mmr", mmr_lambda=0.8)
    alone = ids(rerank(top, USER, 10, c, NOW))
    assert ids(rerank(top + tail, USER, 10, c, NOW)) == alone
    # MMR still diversifies: not simply the 10 best scores.
    assert alone != [f"v{i}" for i in range(10)]
