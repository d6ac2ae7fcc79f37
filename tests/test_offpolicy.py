"""Off-policy evaluation: the exploration slot's propensities, the estimators, the log that
keeps them, and the retrain gate's verdict against a simulated online difference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vidrec.evaluation.offpolicy import (
    Slots,
    compare,
    estimate,
    explored_slots,
    greedy,
)
from vidrec.events import event_problem
from vidrec.rerank import Item, RerankConfig, UserState, rerank
from vidrec.store.eventlog import EventLog
from vidrec.v1 import events_pb2

NOW = 1_700_000_000.0


def _bandit(n: int, seed: int) -> tuple[Slots, np.ndarray]:
    """Uniform logging over pools of 4 videos with known click probabilities."""
    rng = np.random.default_rng(seed)
    probs = {"a": 0.5, "b": 0.3, "c": 0.2, "d": 0.1}
    pool = tuple(probs)
    shown = rng.choice(list(pool), n)
    reward = (rng.random(n) < np.array([probs[v] for v in shown])).astype(float)
    users = np.array([f"u{i % 200}" for i in range(n)], dtype=object)
    return Slots(users, shown.astype(object), [pool] * n, np.full(n, 0.25), reward), \
        np.array([probs[v] for v in pool])


def _scorer(values: np.ndarray):  # type: ignore[no-untyped-def]
    def score(users, videos):  # type: ignore[no-untyped-def]
        return [values.copy() for _ in users]
    return score


def test_ips_and_snips_recover_the_value_of_a_policy_never_run() -> None:
    slots, truth = _bandit(20_000, seed=1)
    best = greedy(_scorer(truth))(slots)  # always "a": click rate 0.5
    worst = greedy(_scorer(-truth))(slots)  # always "d": 0.1
    e = estimate(slots, best, replicates=200)
    assert e.ips.value == pytest.approx(0.5, abs=0.02)
    assert e.snips.value == pytest.approx(0.5, abs=0.02)
    assert e.ips.lo < 0.5 < e.ips.hi
    assert e.ess == pytest.approx(slots.reward.size / 4, rel=0.05)
    d = compare(slots, worst, best, replicates=200)
    assert d.snips.value == pytest.approx(0.4, abs=0.03)
    assert d.verdict == "better"
    assert compare(slots, best, worst, replicates=200).verdict == "worse"


def test_weights_are_clipped() -> None:
    slots, truth = _bandit(1000, seed=2)
    e = estimate(slots, greedy(_scorer(truth))(slots), clip=2.0, replicates=50)
    # weight 4 clipped to 2 on the slots where the logger showed "a"
    assert e.clipped == int((slots.video_id == "a").sum())
    assert e.ips.value == pytest.approx(0.5 * 2 / 4, abs=0.05)
    assert e.snips.value == pytest.approx(0.5, abs=0.06)  # self-normalised: clip cancels


def _log_rows() -> pd.DataFrame:
    cols = ["user_id", "video_id", "timestamp", "event", "value", "request_id", "position",
            "propensity", "exploration_pool"]
    return pd.DataFrame([
        ("u1", "v1", 1, "impression", np.nan, "r1", 0, 1.0, ()),
        ("u1", "v9", 1, "impression", np.nan, "r1", 1, 0.5, ("v8", "v9")),
        ("u1", "v9", 2, "click", np.nan, "r1", 1, np.nan, ()),
        ("u2", "v8", 1, "impression", np.nan, "r2", 1, 0.5, ("v8", "v9")),
        ("u2", "v9", 2, "click", np.nan, "r3", 1, np.nan, ()),  # another request: no reward
        ("u3", "v7", 1, "impression", np.nan, "r4", 1, 0.5, ("v8", "v9")),  # not in pool
        ("u4", "v8", 1, "impression", np.nan, "r5", 1, np.nan, ()),  # not logged
    ], columns=cols)


def test_explored_slots_keep_randomised_impressions_with_their_own_reward() -> None:
    s = explored_slots(_log_rows())
    assert list(s.user_id) == ["u1", "u2"]
    assert list(s.video_id) == ["v9", "v8"]
    assert list(s.reward) == [1.0, 0.0]
    assert list(s.propensity) == [0.5, 0.5]


def _items(n: int) -> list[Item]:
    return [Item(f"v{i}", 1.0 - i / n, "two_tower", category=f"c{i % 12}",
                 creator_id=f"k{i}", upload_ts=NOW - 90 * 86_400) for i in range(n)]


@pytest.mark.parametrize("scope", ["tiers", "ranked", "top"])
def test_the_exploration_slot_logs_its_propensity_and_pool(scope: str) -> None:
    cfg = RerankConfig(exploration_scope=scope, exploration_pool=4, mmr_lambda=1.0)
    out = rerank(_items(30), UserState("u1"), 10, cfg, NOW)
    assert [r.propensity for r in out[:9]] == [1.0] * 9
    assert all(r.pool == () for r in out[:9])
    last = out[9]
    assert last.item.source == "exploration"
    assert last.propensity == pytest.approx(1 / 4)
    assert len(last.pool) == 4 and last.item.video_id in last.pool
    shown = {r.item.video_id for r in out[:9]}
    assert last.item.video_id not in shown
    if scope == "top":  # drawn first from the four best; the list fills in the others
        assert last.pool == ("v0", "v1", "v2", "v3")
        assert shown == {f"v{i}" for i in range(10)} - {last.item.video_id}
    else:
        assert not shown & set(last.pool)
    if scope == "ranked":  # the best four not shown, whatever their category
        assert last.pool == ("v9", "v10", "v11", "v12")


def test_an_unknown_exploration_scope_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="exploration_scope"):
        RerankConfig(exploration_scope="everything")


def test_event_contract_checks_the_propensity() -> None:
    e = events_pb2.Event(event_id="e1", user_id="u1", video_id="v1",
                         type=events_pb2.EVENT_TYPE_IMPRESSION, propensity=1.5)
    assert "propensity" in (event_problem(e) or "")
    e.propensity = 0.25
    e.exploration_pool.extend(["v1", "bad id"])
    assert "exploration_pool" in (event_problem(e) or "")
    del e.exploration_pool[1]
    assert event_problem(e) is None


def test_the_event_log_keeps_propensities_and_upgrades_an_old_log(tmp_path: Path) -> None:
    (tmp_path / "events.csv").write_text(
        "user_id,video_id,timestamp,event,value,event_id\nu0,v0,100,click,,old1\n")
    log = EventLog(tmp_path)
    log.append([events_pb2.Event(
        event_id="r1:9", user_id="u1", video_id="v3", type=events_pb2.EVENT_TYPE_IMPRESSION,
        timestamp=200, request_id="r1", position=9, propensity=0.2, model_version="v4",
        experiment_arm="hybrid", exploration_pool=["v1", "v2", "v3", "v4", "v5"])])
    df = log.read_logged()
    assert list(df["event"]) == ["click", "impression"]
    row = df.iloc[1]
    assert (row["request_id"], row["position"], row["propensity"], row["model_version"]) == (
        "r1", 9, 0.2, "v4")
    assert row["exploration_pool"] == ("v1", "v2", "v3", "v4", "v5")
    assert np.isnan(df.iloc[0]["propensity"]) and df.iloc[0]["position"] == -1
    assert list(log.read().columns) == ["user_id", "video_id", "timestamp", "event", "value"]
    assert len(log.read()) == 2


def test_the_gate_agrees_in_sign_with_the_simulated_online_difference(
        small_dataset: Path, small_model: Path) -> None:
    """A model and a degraded copy each serve the hidden users (served funnel, rules on);
    from the degraded model's log the gate must never confidently prefer the degraded one.

    Its sign agrees with the online difference in 28 of 36 pairs with this exploration
    scope (benchmarks.offpolicy, seeds 0-5), never confidently wrong: one small run is a
    draw from that, so the test asserts what always held (the interval never excludes the
    better model) rather than the sign of one draw, which flipped when MF training changed."""
    from benchmarks.offpolicy import degrade, serve_online
    from vidrec.data.synth import GroundTruth
    from vidrec.models.bundle import ModelBundle
    from vidrec.training.retrain import offpolicy_gate

    good = ModelBundle.load(small_model)
    bad = degrade(good, 3.0, seed=7)
    truth = GroundTruth.load(small_dataset)
    users = [u for u in good.users if u in set(truth.user_ids)]
    cfg = RerankConfig(exploration_scope="ranked", exploration_pool=10)
    on_good = serve_online(good, truth, users, 6, seed=1, cfg=cfg)
    on_bad = serve_online(bad, truth, users, 6, seed=1, cfg=cfg)
    assert on_good.ctr > on_bad.ctr  # the degradation is real online
    d = offpolicy_gate(on_bad.events, serving=bad, candidate=good)
    assert d is not None and d.baseline.slots >= 1000
    assert d.snips.hi > 0 and d.verdict != "worse"
    # A model against itself: the paired difference is exactly 0.
    assert offpolicy_gate(on_bad.events, bad, bad).snips.value == 0.0  # type: ignore[union-attr]


def test_the_retrain_gate_decides_off_policy_when_the_window_has_explored_slots(
        small_dataset: Path, small_model: Path, tmp_path: Path) -> None:
    """The serving model's own log (explored impressions with propensities) is the newest
    window: the gate compares off-policy, publishes only for a non-negative SNIPS
    difference."""
    from dataclasses import replace

    from benchmarks.offpolicy import serve_online
    from vidrec.data.synth import GroundTruth
    from vidrec.models.bundle import ModelBundle
    from vidrec.store.artifacts import ArtifactStore
    from vidrec.training.pipeline import PipelineConfig
    from vidrec.training.retrain import retrain

    store = ArtifactStore(tmp_path / "artifacts")
    store.set_latest(store.stage(small_model))
    serving = ModelBundle.load(store.path(store.latest() or ""))
    truth = GroundTruth.load(small_dataset)
    users = [u for u in serving.users if u in set(truth.user_ids)]
    logged = serve_online(serving, truth, users, 3, seed=2,
                          cfg=RerankConfig(exploration_scope="ranked", exploration_pool=10)
                          ).events
    logged["timestamp"] = logged["timestamp"].astype("int64")
    published: list[Path] = []
    cfg = PipelineConfig()
    cfg.train = replace(cfg.train, epochs=2)
    cfg.mf = replace(cfg.mf, iterations=3)
    res = retrain(small_dataset, logged[["user_id", "video_id", "timestamp", "event", "value"]],
                  None, store, lambda p: published.append(p) or "v9", window_frac=0.5, cfg=cfg,
                  logged=logged)
    assert res.offpolicy is not None and res.offpolicy.baseline.slots >= 200
    assert (res.published is not None) == (res.offpolicy.snips.value >= 0)
    assert "off-policy" in res.reason or res.reason == "published"


def test_vidrec_evaluate_events_compares_two_models_off_policy(
        small_dataset: Path, small_model: Path, tmp_path: Path) -> None:
    """The CLI reads the trainer's event log (impressions with propensities, clicks with
    their request ids) and writes the off-policy comparison."""
    import json

    from benchmarks.offpolicy import degrade, serve_online
    from vidrec.cli import main
    from vidrec.data.synth import GroundTruth
    from vidrec.events import TYPE_OF
    from vidrec.models.bundle import ModelBundle

    good = ModelBundle.load(small_model)
    bad_dir = tmp_path / "bad"
    degrade(good, 3.0, seed=7).save(bad_dir)
    truth = GroundTruth.load(small_dataset)
    users = [u for u in good.users if u in set(truth.user_ids)][:150]
    ev = serve_online(ModelBundle.load(bad_dir), truth, users, 4, seed=3,
                      cfg=RerankConfig(exploration_scope="ranked", exploration_pool=10)).events
    log = EventLog(tmp_path / "events")
    log.append([events_pb2.Event(
        event_id=f"{r.request_id}:{r.position}:{r.event}", user_id=r.user_id,
        video_id=r.video_id, type=TYPE_OF[r.event], timestamp=r.timestamp,
        value=0.0 if np.isnan(r.value) else r.value, request_id=r.request_id,
        position=r.position, propensity=0.0 if np.isnan(r.propensity) else r.propensity,
        exploration_pool=list(r.exploration_pool)) for r in ev.itertuples()])
    out = tmp_path / "report"
    assert main(["evaluate", "--events", str(tmp_path / "events"), "--model", str(bad_dir),
                 "--candidate", str(small_model), "--out", str(out)]) == 0
    got = json.loads((out / "offpolicy.json").read_text())
    assert got["offpolicy_slots"] == float((ev["propensity"] < 1).sum())
    assert got["offpolicy_diff_snips"] == pytest.approx(
        got["offpolicy_candidate_snips"] - got["offpolicy_serving_snips"])
    assert "SNIPS" in (out / "offpolicy.md").read_text()
