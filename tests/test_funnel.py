"""The offline mirror of the served funnel: the reranker's own rules over the ranker's
list, the ablation table and the rule tuning, on hand-built lists whose answers are known."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from vidrec.config import RerankerSettings
from vidrec.evaluation.funnel import (
    CatalogMeta,
    FunnelData,
    Objective,
    ablation,
    frontier,
    new_share,
    settings_env,
    tune_rules,
    user_context,
)
from vidrec.models.bundle import UserRecord
from vidrec.rerank import DAY_S, Item, RerankConfig, UserState, rerank
from vidrec.v1 import common_pb2

NOW = 1_700_000_000.0


def _catalog() -> list[dict[str, object]]:
    """20 videos: v0-v9 in category A (creator a), v10-v19 in B (creator b); v19 is new."""
    rows: list[dict[str, object]] = []
    for i in range(20):
        cat = "A" if i < 10 else "B"
        rows.append({"video_id": f"v{i}", "title": f"t{i}", "category": cat,
                     "creator_id": cat.lower(), "tags": [cat],
                     "upload_ts": NOW - DAY_S if i == 19 else NOW - 400 * DAY_S})
    return rows


def _data(relevant_cat: str = "A") -> FunnelData:
    """Two users whose ranker lists put all of category A first; the relevant videos are
    category `relevant_cat`'s."""
    ids = [f"v{i}" for i in range(20)]
    ranked = {u: [(v, 20.0 - j) for j, v in enumerate(ids)] for u in ("u1", "u2")}
    rel_ids = {v for v in ids if (int(v[1:]) < 10) == (relevant_cat == "A")}
    contexts = {u: common_pb2.UserContext(user_id=u) for u in ranked}
    vectors = {v: np.eye(2)[0 if int(v[1:]) < 10 else 1] for v in ids}
    return FunnelData(ranked, contexts, {u: set(rel_ids) for u in ranked},
                      CatalogMeta(_catalog()), ids, {v: 1 for v in ids}, vectors, NOW)


def test_served_lists_are_the_reranker_rules_output() -> None:
    """Same rules, same config: the served list is what vidrec.rerank returns for the
    ranker's list with the catalog's metadata."""
    data = _data()
    cfg = RerankConfig(max_per_creator=0, max_per_category=3, exploration_slots=1)
    served = data.served(6, cfg)
    items = [Item(v, s, "two_tower", category="A" if int(v[1:]) < 10 else "B",
                  creator_id="a" if int(v[1:]) < 10 else "b", title=f"t{v[1:]}",
                  upload_ts=NOW - DAY_S if v == "v19" else NOW - 400 * DAY_S)
             for v, s in data.ranked["u1"]]
    direct = [r.item.video_id for r in rerank(items, UserState("u1"), 6, cfg, NOW)]
    assert served["u1"] == direct
    # The caps hold: at most 3 of category A; the exploration slot shows the new upload.
    assert sum(int(v[1:]) < 10 for v in served["u1"]) <= 3
    assert served["u1"][-1] == "v19"


def test_metrics_count_new_uploads_and_true_relevance() -> None:
    recs = {"u": ["v19", "v1", "v2", "v3"]}
    ts = CatalogMeta(_catalog()).upload_ts()
    assert new_share(recs, ts, 4, NOW, 14.0) == pytest.approx(0.25)
    assert new_share(recs, ts, 4, NOW + 20 * DAY_S, 14.0) == 0.0


def test_ablation_rows_and_deltas() -> None:
    """'no rules' is the ranker's own top k; each Δ is the row minus 'all rules'."""
    data = _data()
    cfg = RerankConfig(max_per_creator=0, max_per_category=2, exploration_slots=0,
                       rules=("caps",))
    rows = {r["rules"]: r for r in ablation(data, cfg, 4)}
    assert list(rows) == ["all rules", "- caps", "no rules"]
    ranker = data.metrics(data.ranker_only(4), [4])
    assert rows["no rules"]["ndcg@4"] == pytest.approx(ranker["ndcg@4"]) == 1.0
    # Capped at 2 per category: 2 relevant (A) then 2 of B.
    assert rows["all rules"]["precision@4"] == pytest.approx(0.5)
    assert rows["all rules"]["diversity@4"] > rows["no rules"]["diversity@4"]
    assert rows["no rules"]["Δ precision@4"] == pytest.approx(0.5)
    assert "Δ ndcg@4" not in rows["all rules"]


def test_tuning_drops_a_cap_that_costs_relevance_unless_the_floor_needs_it() -> None:
    data = _data()
    start = RerankConfig(max_per_creator=0, max_per_category=2, exploration_slots=0,
                         rules=("caps", "mmr"), mmr_lambda=1.0)
    best, trials = tune_rules(data, start, Objective(k=4))
    assert best.max_per_category in (0, 4, 5, 6, 8)
    # Knobs with no effect here stay where they were (ties go to the fewest changes).
    assert (best.max_per_creator, best.freshness_boost, best.exploration_slots) == (0, 0.05, 0)
    assert data.metrics(data.served(4, best), [4])["ndcg@4"] == pytest.approx(1.0)
    assert len(trials) > 10
    # A diversity floor at today's level keeps a mixed list.
    floor = data.metrics(data.served(4, start), [4])["diversity@4"]
    kept, _ = tune_rules(data, start, Objective(k=4, min_diversity=floor))
    served = data.served(4, kept)["u1"]
    assert {int(v[1:]) < 10 for v in served} == {True, False}


def test_frontier_prices_each_diversity_floor() -> None:
    trials = [{"ndcg@4": 1.0, "diversity@4": 0.0, "new_share@4": 0.0, "feasible": True},
              {"ndcg@4": 0.8, "diversity@4": 0.5, "new_share@4": 0.0, "feasible": True},
              {"ndcg@4": 0.6, "diversity@4": 0.9, "new_share@4": 0.1, "feasible": True}]
    rows = frontier(trials, 4, [0.0, 0.4, 0.9, 0.95])
    assert [r.get("ndcg@4") for r in rows] == [1.0, 0.8, 0.6, None]
    assert frontier(trials, 4, [0.0], new_floor=0.05)[0]["ndcg@4"] == 0.6


def test_settings_round_trip_through_the_environment() -> None:
    """The tuned config's VIDREC_* variables give the reranker that very config."""
    from vidrec.config import load_settings

    cfg = RerankConfig(max_per_creator=3, max_per_category=0, mmr_lambda=0.9,
                       freshness_boost=0.2, exploration_slots=0, exploration_pool=10)
    env = settings_env(cfg)
    assert RerankConfig.from_settings(load_settings(RerankerSettings, env)) == cfg
    ablated = replace(cfg, rules=("seen_filter", "caps"))
    assert RerankConfig.from_settings(
        load_settings(RerankerSettings, settings_env(ablated))) == ablated


def test_user_context_carries_the_training_state() -> None:
    rec = UserRecord(profile={"gender": "F"}, history=["v3", "v2"], seen=["v2", "v3", "v9"],
                     negatives=["v9"])
    ctx = user_context("u1", rec)
    assert list(ctx.recent_video_ids) == ["v3", "v2"]
    assert list(ctx.negative_video_ids) == ["v9"] and set(ctx.seen_video_ids) == {"v2", "v3",
                                                                                   "v9"}
    cold = user_context("new", None, {"gender": "M"})
    assert cold.is_new_user and cold.profile.gender == "M"


def test_evaluate_reports_the_served_list_its_ablation_and_tuned_rules(tmp_path) -> None:
    """`vidrec evaluate` scores the served list beside the ranker's: the ablation's 'no
    rules' row is the ranker's own list, and the rules were tuned on validation."""
    from vidrec.data.dataset import load_dataset
    from vidrec.data.synth import generate
    from vidrec.evaluation.offline import evaluate_dataset
    from vidrec.models.two_tower_task import TrainConfig
    from vidrec.training.pipeline import PipelineConfig

    generate(tmp_path / "d", users=120, videos=200, seed=1, interactions_per_user=40.0)
    cfg = PipelineConfig(train=TrainConfig(epochs=1, batch_size=256))
    res = evaluate_dataset(load_dataset(tmp_path / "d"), cfg, ks=(5, 10), progress=False,
                           tune_rules_on_validation=True)
    ranker, served = res.results["hybrid (warm)"], res.results["hybrid + rules (warm)"]
    for key in ("ndcg@10", "diversity@10", "new_share@10", "true_precision@10", "coverage@5"):
        assert key in served and key in ranker
    (title, rows), = [(t, r) for t, r in res.tables.items() if t.startswith("Rule ablation")]
    by = {r["rules"]: r for r in rows}
    assert by["no rules"]["ndcg@10"] == pytest.approx(ranker["ndcg@10"])
    assert by["no rules"]["true_precision@10"] == pytest.approx(ranker["true_precision@10"])
    assert by["all rules"]["ndcg@10"] == pytest.approx(served["ndcg@10"])
    assert {f"- {r}" for r in RerankConfig().rules} <= set(by)
    tuned = res.tables["Rules tuned on validation (never test)"]
    assert [r["config"] for r in tuned] == ["in force", "tuned", "no rules"]
    assert tuned[1]["diversity@10"] >= tuned[0]["diversity@10"] - 1e-9
    (price,) = [r for t, r in res.tables.items() if t.startswith("The price of diversity")]
    assert price[0]["diversity floor"] <= price[-1]["diversity floor"]
    assert price[0]["ndcg@10"] >= price[-1]["ndcg@10"]
    assert "hybrid + rules (cold)" in res.results
    assert {"mf_only arm (warm)", "mf_only arm + rules (warm)"} <= set(res.results)
