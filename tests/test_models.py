"""Value checks of the models: feedback matrix, MF fold-in, two-tower outputs, the
demographic prior and the batch recommender's seen filter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from vidrec.data.dataset import Dataset
from vidrec.data.feedback import FeedbackWeights, build_feedback_matrix, recency_ranks
from vidrec.models.bundle import (
    BatchRecommender,
    DemographicPrior,
    ModelBundle,
    RankerWeights,
    UserRecord,
)
from vidrec.models.mf import MFConfig, fold_in, recency_factor, recency_user_factors, train_mf
from vidrec.models.online import OnlineModel
from vidrec.models.two_tower_task import TrainConfig
from vidrec.training.pipeline import PipelineConfig, positives, train_bundle


def _inter(rows: list[tuple[str, str, int, str, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user_id", "video_id", "timestamp", "event", "value"])


def test_feedback_matrix_hand_computed() -> None:
    w = FeedbackWeights()  # rating_base 1, rating_centred 0.5, alpha 2, watch 2 / 0.25
    inter = _inter([
        ("a", "v1", 1, "rating", 5.0),  # a's mean rating is 4: 1 + 0.5 * (5 - 4) = 1.5
        ("a", "v2", 2, "rating", 3.0),  # 1 + 0.5 * (3 - 4) = 0.5
        ("b", "v1", 3, "click", np.nan),  # +0.5
        ("b", "v1", 4, "skip", np.nan),  # -1 -> pair total -0.5
        ("b", "v2", 5, "watch", 0.1),  # 2 * (0.1 - 0.25) = -0.3
        ("b", "v3", 6, "like", np.nan),  # +2
    ])
    fm = build_feedback_matrix(inter, w)
    assert list(fm.user_ids) == ["a", "b"] and list(fm.video_ids) == ["v1", "v2", "v3"]
    score = fm.score.toarray()
    np.testing.assert_allclose(score, [[1.5, 0.5, 0.0], [-0.5, -0.3, 2.0]], atol=1e-6)
    np.testing.assert_array_equal(fm.preference.toarray(), [[1, 1, 0], [0, 0, 1]])
    # confidence = 1 + alpha * |score| on observed cells only (unobserved: implicit 1).
    np.testing.assert_allclose(fm.confidence.toarray(), [[4.0, 2.0, 0.0], [2.0, 1.6, 5.0]],
                               atol=1e-6)
    assert fm.confidence.nnz == 5


def _random_matrix(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(40):
        for v in rng.choice(30, size=8, replace=False):
            rows.append((f"u{u}", f"v{v}", int(rng.integers(1, 1000)), "rating",
                         float(rng.integers(1, 6))))
    return _inter(rows)


def test_mf_fold_in_reproduces_trained_user() -> None:
    fm = build_feedback_matrix(_random_matrix(), FeedbackWeights())
    cfg = MFConfig(factors=8, regularization=1.0, iterations=30)
    model = train_mf(fm, cfg, progress=False)
    for u in (0, 7, 21):
        lo, hi = fm.confidence.indptr[u], fm.confidence.indptr[u + 1]
        vec = fold_in(model.video_factors, fm.confidence.indices[lo:hi],
                      fm.confidence.data[lo:hi], fm.preference.data[lo:hi],
                      cfg.regularization)
        ref = model.user_factors[u]
        cos = vec @ ref / (np.linalg.norm(vec) * np.linalg.norm(ref))
        assert cos > 0.99
        np.testing.assert_allclose(np.linalg.norm(vec), np.linalg.norm(ref), rtol=0.05)
    # No interactions: the zero vector.
    assert not fold_in(model.video_factors, np.array([], dtype=np.int64), np.array([]),
                       np.array([]), cfg.regularization).any()


def test_recency_ranks_order_positives_latest_first() -> None:
    inter = _inter([
        ("a", "v1", 1, "like", np.nan),
        ("a", "v3", 2, "skip", np.nan),  # a negative: no rank
        ("a", "v2", 3, "like", np.nan),
        ("a", "v1", 4, "like", np.nan),  # again: the pair's first positive (t=1) counts
        ("b", "v3", 5, "like", np.nan),
        ("b", "v2", 5, "like", np.nan),  # same time: the earlier row is the later rank 0
    ])
    w = FeedbackWeights()
    fm = build_feedback_matrix(inter, w)
    ranks = recency_ranks(fm, positives(inter, w))
    got = {(fm.user_ids[r], fm.video_ids[c]): ranks[i]
           for r in range(2) for i, c in zip(range(fm.confidence.indptr[r],
                                                   fm.confidence.indptr[r + 1]),
                                             fm.confidence.indices[fm.confidence.indptr[r]:
                                                                   fm.confidence.indptr[r + 1]],
                                             strict=True)}
    assert got == {("a", "v1"): 1.0, ("a", "v2"): 0.0, ("a", "v3"): np.inf,
                   ("b", "v3"): 0.0, ("b", "v2"): 1.0}
    np.testing.assert_allclose(recency_factor(np.array([0.0, 5.0, np.inf]),
                                              MFConfig(recency_boost=10.0)), [11.0, 6.0, 1.0])
    assert (recency_factor(np.array([0.0, np.inf]), MFConfig()) == 1.0).all()


def test_recency_boost_pulls_user_vectors_towards_latest_positives() -> None:
    inter = _random_matrix()
    w = FeedbackWeights()
    fm = build_feedback_matrix(inter, w)
    cfg = MFConfig(factors=8, regularization=1.0, iterations=30)
    model = train_mf(fm, cfg, progress=False)
    ranks = recency_ranks(fm, positives(inter, w))
    plain = recency_user_factors(model.video_factors, fm, ranks, cfg)
    # Boost 0 is the plain ALS user solve against the final video factors.
    np.testing.assert_allclose(plain, model.user_factors, atol=0.05)
    # A half-life this short boosts the latest positive alone: raising one entry's weight
    # in a weighted least-squares fit always shrinks that entry's residual.
    boosted = recency_user_factors(model.video_factors, fm, ranks,
                                   MFConfig(factors=8, regularization=1.0, recency_boost=30.0,
                                            recency_half_life=0.05))
    closer = []
    for u in range(len(fm.user_ids)):
        lo, hi = fm.confidence.indptr[u], fm.confidence.indptr[u + 1]
        r, cols = ranks[lo:hi], fm.confidence.indices[lo:hi]
        if np.isfinite(r).sum() < 2:
            continue
        latest = model.video_factors[cols[np.argmin(r)]]
        # The latest positive (preference 1) is reproduced more closely.
        closer.append(abs(1 - boosted[u] @ latest) < abs(1 - plain[u] @ latest))
    assert len(closer) > 20 and all(closer)


def test_demographic_prior_lift() -> None:
    # One feature with values {unknown=0, x=1, y=2}; two videos. Positives: x -> v0 (3),
    # y -> v1 (1). Overall p(v) with +1 smoothing: (3+1)/(4+2), (1+1)/(4+2).
    counts = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    prior = DemographicPrior(counts, [3], smoothing=2.0)
    p = np.array([4 / 6, 2 / 6])
    expect_x = np.log((np.array([3.0, 0.0]) + 2 * p) / (3 + 2)) - np.log(p)
    np.testing.assert_allclose(prior.scores(np.array([[1]]))[0], expect_x, rtol=1e-5)
    # An unseen value has no evidence: lift 0 everywhere.
    np.testing.assert_allclose(prior.scores(np.array([[0]]))[0], [0.0, 0.0], atol=1e-6)


def test_demographic_field_weights_scale_each_fields_lift() -> None:
    # Two features: a with values {0, 1}, b with values {0, 1}; rows a0 a1 b0 b1.
    counts = np.array([[0, 0], [3, 1], [0, 0], [1, 2]], dtype=np.float32)
    plain = DemographicPrior(counts, [2, 2], smoothing=1.0)
    weighted = DemographicPrior(counts, [2, 2], smoothing=1.0, field_weights=[0.5, 0.0])
    np.testing.assert_allclose(weighted.lift[:2], 0.5 * plain.lift[:2], rtol=1e-6)
    np.testing.assert_allclose(weighted.lift[2:], 0.0)
    np.testing.assert_allclose(weighted.scores(np.array([[1, 1]]))[0],
                               0.5 * plain.lift[1], rtol=1e-6)
    np.testing.assert_allclose(weighted.scores_at(np.array([1, 1]), np.array([1])),
                               [0.5 * plain.lift[1, 1]], rtol=1e-6)


def _taste_by_age(n_users: int = 600, n_videos: int = 60, seed: int = 0
                  ) -> tuple[np.ndarray, sp.csr_matrix, list[int]]:
    """Two age groups (field 0), each liking its own half of the catalog; occupation
    (field 1) has 30 values drawn at random, so its lifts are noise."""
    rng = np.random.default_rng(seed)
    cats = np.stack([rng.integers(1, 3, n_users), rng.integers(1, 31, n_users)], axis=1)
    rows, cols = [], []
    for u in range(n_users):
        half = np.arange(n_videos // 2) + (n_videos // 2 if cats[u, 0] == 2 else 0)
        # A mild overall popularity slope inside each half, so popularity alone is not flat.
        p = np.linspace(2.0, 1.0, len(half))
        liked = rng.choice(half, 6, replace=False, p=p / p.sum())
        rows += [u] * len(liked)
        cols += liked.tolist()
    m = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_users, n_videos))
    return cats.astype(np.int64), m, [3, 31]


def test_field_weights_favour_the_field_that_carries_taste() -> None:
    from vidrec.models.demographic import fit_field_weights

    cats, m, sizes = _taste_by_age()
    fit = fit_field_weights(cats, m, m, sizes, ["age_bucket", "occupation"])
    assert fit.field_weights["age_bucket"] > fit.field_weights["occupation"]
    # Knowing the age group finds the right half: well above popularity alone, and at
    # least as good as counting every field alike (which is the search's start).
    assert fit.ndcg > 1.5 * fit.ndcg_popularity
    assert fit.ndcg >= fit.ndcg_equal
    assert fit.users == 600
    # Nobody with a relevant video (only clicks, say): nothing to choose on, weights stay 1.
    none = fit_field_weights(cats, m, sp.csr_matrix(m.shape), sizes, ["age_bucket", "occ"])
    assert none.field_weights == {"age_bucket": 1.0, "occ": 1.0} and none.users == 0


@pytest.fixture(scope="module")
def tiny_bundle() -> tuple[ModelBundle, pd.DataFrame]:
    rng = np.random.default_rng(3)
    cats = ["Drama", "Comedy", "Action"]
    videos = pd.DataFrame({
        "video_id": [f"v{i}" for i in range(30)],
        "title": [f"Video {i}" for i in range(30)],
        "category": [cats[i % 3] for i in range(30)],
        "tags": [cats[i % 3] for i in range(30)],
        "creator_id": [""] * 30, "language": [""] * 30,
        "duration_s": np.nan, "upload_ts": np.nan,
    })
    users = pd.DataFrame({
        "user_id": [f"u{i}" for i in range(40)],
        "age": rng.integers(15, 60, 40).astype(float),
        "gender": ["M" if i % 2 else "F" for i in range(40)],
        "country": [""] * 40, "language": [""] * 40,
        "occupation": ["student" if i % 3 else "writer" for i in range(40)],
    })
    inter = _random_matrix(3).sort_values("timestamp", kind="stable").reset_index(drop=True)
    ds = Dataset(videos, users, inter)
    cfg = PipelineConfig(mf=MFConfig(factors=8, iterations=4),
                         train=TrainConfig(epochs=2, batch_size=64))
    return train_bundle(ds, cfg, progress=False, version="t"), inter


def test_two_tower_outputs_unit_norm_and_cold_user(tiny_bundle) -> None:
    bundle, _ = tiny_bundle
    np.testing.assert_allclose(np.linalg.norm(bundle.video_vectors, axis=1), 1.0, atol=1e-5)
    rec = BatchRecommender(bundle)
    vecs = rec.user_tower([{"age": 30, "gender": "F", "occupation": "student"}, {}],
                          [[], ["v1", "v2"]])
    assert vecs.shape == (2, bundle.video_vectors.shape[1])
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("mode", ["hybrid", "mf", "two_tower", "popularity"])
def test_batch_recommender_never_returns_seen(tiny_bundle, mode: str) -> None:
    bundle, inter = tiny_bundle
    seen = inter.groupby("user_id")["video_id"].apply(set).to_dict()
    users = sorted(seen)
    lists = BatchRecommender(bundle).recommend(users, 10, mode=mode)
    for u, lst in zip(users, lists, strict=True):
        assert len(lst) == 10 and len(set(lst)) == 10
        assert not set(lst) & seen[u]
    # A cold user (profile only) gets a full list too.
    cold = BatchRecommender(bundle).recommend(["new"], 5, mode=mode,
                                              profiles=[{"gender": "F"}])[0]
    assert len(cold) == 5


def test_chunked_scoring_gives_the_unchunked_results(tiny_bundle, monkeypatch) -> None:
    """A large catalog scores users in chunks (bounded memory); lists and tuning NDCG
    come out exactly as when every user is scored at once."""
    from vidrec.models import bundle as bundle_mod
    from vidrec.training.tune import grid_ndcg

    bundle, inter = tiny_bundle
    users = sorted(inter["user_id"].unique())
    seen = inter.groupby("user_id")["video_id"].apply(set).to_dict()
    rng = np.random.default_rng(0)
    rel = {u: set(rng.choice([v for v in bundle.video_ids if v not in seen[u]], 4,
                             replace=False)) for u in users}
    rel_users = users
    grid = [RankerWeights(1.0, mf, pop, 3.0, 0.3, 5.0) for mf in (0.0, 0.5) for pop in (0.0, 1.0)]
    rec = BatchRecommender(bundle)
    assert rec.chunk_size() >= len(users)
    whole = rec.recommend(users, 8)
    whole_ndcg = grid_ndcg(rec, rel_users, [{}] * len(rel_users), rel, grid)
    # 7 users per chunk (the catalog has 30 videos): several chunks, the last one short.
    monkeypatch.setattr(bundle_mod, "CHUNK_CELLS", 7 * len(bundle.video_ids))
    assert rec.chunk_size() == 7
    assert rec.recommend(users, 8) == whole
    np.testing.assert_allclose(grid_ndcg(rec, rel_users, [{}] * len(rel_users), rel, grid),
                               whole_ndcg, rtol=1e-12)
    assert len(set(np.round(whole_ndcg, 9))) > 1  # the settings differ, so the test can fail
    # A user who has seen the whole catalog has no candidate left: an empty list, in a
    # chunk beside a user who has some, and alone.
    everything = UserRecord({}, list(bundle.video_ids[:5]), list(bundle.video_ids))
    monkeypatch.setitem(bundle.users, "glutton", everything)
    lists = rec.recommend(["glutton", users[0]], 5)
    assert lists[0] == [] and lists[1] == whole[0][:5]
    assert rec.recommend(["glutton"], 5) == [[]]
    assert rec.recommend(["glutton"], 5, mode="two_tower") == [[]]


def test_online_score_matches_offline_blend(tiny_bundle) -> None:
    """OnlineModel.score ranks candidates exactly like BatchRecommender's hybrid score."""
    bundle, inter = tiny_bundle
    online = OnlineModel(bundle)
    rec = BatchRecommender(bundle, n_candidates=len(bundle.video_ids))
    trained = bundle.ranker
    # Every term on, the demographic prior included (scored per candidate online).
    blends = (trained, RankerWeights(1.0, 0.3, 0.2, 3.0, 0.4, 5.0))
    cases = [(w, uid, profile) for w in blends for uid, profile in (
        ("u3", None), ("new", {"gender": "M", "occupation": "writer"}))]
    for w, uid, profile in cases:
        bundle.ranker = w
        r = bundle.users.get(uid)
        prof = r.profile if r else profile
        hist = r.history if r else []
        uv = online.user_vectors(uid, prof, hist)
        unseen = [v for v in bundle.video_ids if not r or v not in set(r.seen)]
        s = online.score(uv, unseen)
        online_top = [unseen[i] for i in np.argsort(-s, kind="stable")[:5]]
        offline_top = rec.recommend([uid], 5, profiles=[prof or {}])[0]
        assert online_top == offline_top, (w, uid)
    bundle.ranker = trained


def test_numpy_user_tower_matches_torch(tiny_bundle) -> None:
    """Serving's numpy user tower gives the torch tower's vectors: empty, short and longer
    histories (more than `recent`), known and unknown profiles and video ids."""
    from vidrec.models.online import NumpyUserTower
    from vidrec.models.two_tower_task import embed_users

    bundle, _ = tiny_bundle
    enc = bundle.encoder
    tower = NumpyUserTower(bundle.two_tower)
    profiles = [{}, {"age": 30, "gender": "F", "occupation": "student"},
                {"age": 71, "gender": "X", "occupation": "astronaut", "zip": "90210"}]
    histories = [[], ["v1"], [f"v{i}" for i in range(12)], ["v3", "nope", "v5"]]
    for prof in profiles:
        for hist in histories:
            cats, h = enc.encode_users([prof]), enc.encode_history([hist])
            want = embed_users(bundle.two_tower, cats, h)[0]
            got = tower(cats[0], h[0])
            np.testing.assert_allclose(got, want, atol=2e-6, err_msg=f"{prof} {hist}")


def test_offline_candidates_mirror_the_serving_mix(tiny_bundle) -> None:
    """Each source takes its Mix share of n (MF's best, the latest watch's content
    neighbours, the most popular), the two-tower fills the rest; nothing seen."""
    from vidrec.models.mix import Mix

    bundle, _ = tiny_bundle
    n, mix = 12, Mix()
    rec = BatchRecommender(bundle, n_candidates=n)
    uid = next(u for u, r in bundle.users.items() if r.history and u in set(rec.mf_row))
    r = bundle.users[uid]
    c = rec.components([uid], [{}])
    cand = set(np.flatnonzero(c.cand[0]))
    seen = {rec.vid[v] for v in r.seen}
    assert len(cand) == n and not cand & seen
    order = [int(i) for i in np.argsort(-c.mf[0], kind="stable") if i not in seen]
    assert set(order[: mix.quota(mix.mf, n)]) <= cand  # MF's share: its best unseen videos
    sims = bundle.content_vectors @ bundle.content_vectors[rec.vid[r.history[0]]]
    taken = seen | set(order[: mix.quota(mix.mf, n)])
    best_content = next(int(i) for i in np.argsort(-sims, kind="stable") if i not in taken)
    assert best_content in cand
    # A cold user: no MF, no history -> popular share plus the two-tower.
    cold = rec.components(["new"], [{"gender": "F"}]).cand[0]
    top_pop = int(np.argmax(bundle.popularity))
    assert cold.sum() == n and cold[top_pop]


def test_a_field_at_weight_zero_no_longer_moves_the_prior(small_model, tmp_path
                                                          ) -> None:  # type: ignore[no-untyped-def]
    """The field weights travel in the manifest: saved, loaded, and used by the offline
    recommender and by serving alike."""
    bundle = ModelBundle.load(small_model)
    a, b = {"gender": "F", "age": 25}, {"gender": "M", "age": 25}
    cats = bundle.encoder.encode_users([a, b])
    assert not np.allclose(*bundle.demographic_prior().scores(cats))  # gender matters
    bundle.manifest["config"]["demographic"] = {"smoothing": 20.0,
                                                "field_weights": {"gender": 0.0}}
    bundle.save(tmp_path / "m")
    loaded = ModelBundle.load(tmp_path / "m")
    np.testing.assert_allclose(*loaded.demographic_prior().scores(cats))
    loaded.ranker = RankerWeights(tt=0.0, mf=0.0, pop=0.0, cold_pop=1.0, demo=0.0,
                                  cold_demo=1.0)  # the priors only (the tower reads gender)
    online = OnlineModel(loaded)
    ua, ub = (online.user_vectors("new", p, []) for p in (a, b))
    ids = loaded.video_ids[:20]
    np.testing.assert_allclose(online.score(ua, ids), online.score(ub, ids), rtol=1e-6)


def test_retrain_keeps_what_train_tuned(small_model) -> None:  # type: ignore[no-untyped-def]
    from vidrec.training.retrain import carried_config

    serving = ModelBundle.load(small_model)
    serving.manifest["config"]["mf"].update(recency_boost=30.0, recency_half_life=4.0)
    serving.ranker = RankerWeights(1.0, 0.9, 0.0, 20.0, 0.5, 40.0)
    cfg = carried_config(serving, PipelineConfig())
    assert (cfg.mf.recency_boost, cfg.mf.recency_half_life) == (30.0, 4.0)
    assert cfg.ranker == serving.ranker and cfg.ranker is not serving.ranker
    serving.manifest["config"]["demographic"] = {"smoothing": 20.0,
                                                 "field_weights": {"age_bucket": 2.0}}
    assert carried_config(serving, PipelineConfig()).demographic.field_weights == {
        "age_bucket": 2.0}
    assert cfg.mf.factors == MFConfig().factors  # the rest stays the caller's
    assert carried_config(None, PipelineConfig()).mf.recency_boost == 0.0


def test_tuning_picks_a_recency_boost_when_tastes_drift() -> None:
    """Every user likes one cluster of videos, then another: the validation split (each
    user's latest 20%) is the second cluster, so recent positives should count more."""
    from vidrec.training.tune import COLD_GRID_DEMO, COLD_GRID_POP, RECENCY_GRID, tune_ranker

    rng = np.random.default_rng(0)
    nv, nu = 120, 300
    videos = pd.DataFrame({
        "video_id": [f"v{i}" for i in range(nv)], "title": [f"Video {i}" for i in range(nv)],
        "category": ["c"] * nv, "tags": [""] * nv, "creator_id": [""] * nv,
        "language": [""] * nv, "duration_s": np.nan, "upload_ts": np.nan})
    rows = []
    for u in range(nu):
        first, then = rng.choice(6, 2, replace=False)  # 6 clusters of 20 videos
        for j, c in enumerate([first] * 15 + [then] * 15):
            rows.append((f"u{u}", f"v{int(c * 20 + rng.integers(20))}", 1000 * u + j, "like",
                         np.nan))
    inter = _inter(rows)
    cfg = PipelineConfig(mf=MFConfig(factors=8, iterations=4),
                         train=TrainConfig(epochs=2, batch_size=64))
    r = tune_ranker(Dataset(videos, pd.DataFrame({"user_id": [f"u{i}" for i in range(nu)]}),
                            inter), cfg, progress=False)
    assert r.recency_boost in RECENCY_GRID and r.recency_boost > 0
    assert r.validation["val_warm_ndcg@10"] > r.validation["val_warm_ndcg@10_no_recency"]
    assert r.weights.cold_pop in COLD_GRID_POP and r.weights.cold_demo in COLD_GRID_DEMO


def test_encoder_fits_a_catalog_without_durations() -> None:
    """videos.csv may omit duration_s: the duration feature is then 0 for every video."""
    from vidrec.models.features import FeatureEncoder

    videos = pd.DataFrame({"video_id": ["v1", "v2"], "title": ["A", "B"], "category": ["c", "d"]})
    enc = FeatureEncoder.fit(videos, pd.DataFrame({"user_id": ["a"]}), ref_ts=0.0)
    assert (enc.duration_mean, enc.duration_std) == (0.0, 1.0)
    np.testing.assert_array_equal(enc.encode_videos(videos.to_dict("records")).nums[:, 0], 0.0)


def test_ranked_is_the_hybrid_list_with_its_scores(tiny_bundle) -> None:
    """What the reranker receives offline: the hybrid's order, blended scores best first."""
    bundle, inter = tiny_bundle
    users = sorted(inter["user_id"].unique())[:5]
    rec = BatchRecommender(bundle)
    ranked = rec.ranked(users, 8)
    assert [[v for v, _ in r] for r in ranked] == rec.recommend(users, 8)
    for r in ranked:
        scores = [s for _, s in r]
        assert scores == sorted(scores, reverse=True) and np.isfinite(scores).all()


def test_mf_only_arm_takes_mf_candidates_for_known_users(tiny_bundle) -> None:
    """The mf_only experiment arm, offline: a user MF knows gets MF's n best unseen videos
    as candidates (services/candidate/sources.generate); a cold user the hybrid mix."""
    bundle, _ = tiny_bundle
    n = 12
    rec = BatchRecommender(bundle, n_candidates=n, arm="mf_only")
    uid = next(u for u, r in bundle.users.items() if r.history and u in set(rec.mf_row))
    seen = {rec.vid[v] for v in bundle.users[uid].seen}
    c = rec.components([uid], [{}])
    best_mf = [int(i) for i in np.argsort(-c.mf[0], kind="stable") if i not in seen][:n]
    assert set(np.flatnonzero(c.cand[0])) == set(best_mf)
    hybrid = BatchRecommender(bundle, n_candidates=n).components([uid], [{}])
    assert set(np.flatnonzero(hybrid.cand[0])) != set(best_mf)
    cold = rec.components(["new"], [{"gender": "F"}]).cand[0]
    assert cold.sum() == n and cold[int(np.argmax(bundle.popularity))]


def test_mf_conjugate_gradient_matches_the_exact_solve() -> None:
    """The CG sweeps (linear in interactions) reach the exact ALS solution's predictions."""
    fm = build_feedback_matrix(_random_matrix(), FeedbackWeights())
    exact = train_mf(fm, MFConfig(factors=8, regularization=1.0, iterations=30, cg_steps=0),
                     progress=False)
    cg = train_mf(fm, MFConfig(factors=8, regularization=1.0, iterations=30, cg_steps=3),
                  progress=False)
    a = (exact.user_factors @ exact.video_factors.T).ravel()
    b = (cg.user_factors @ cg.video_factors.T).ravel()
    assert np.corrcoef(a, b)[0, 1] > 0.99
    np.testing.assert_allclose(np.abs(b).mean(), np.abs(a).mean(), rtol=0.05)


def test_histories_match_history_at_for_every_example() -> None:
    """The vectorised training histories equal the per-example definition (history_at),
    across chunk borders and for users with no, short and long sequences."""
    from vidrec import schema
    from vidrec.models.two_tower_task import Sequences, histories, history_at

    rng = np.random.default_rng(0)
    lens = rng.integers(0, 120, size=200)
    start = np.r_[0, np.cumsum(lens)]
    seq = rng.integers(1, 1000, size=int(start[-1]))
    seqs = Sequences(np.arange(200), start, seq)
    ex_user = np.repeat(np.arange(200), lens)
    ex_pos = np.arange(len(seq)) - np.repeat(start[:-1], lens)
    got = histories(seqs, ex_user, chunk=777)
    for i in range(len(seq)):
        h = history_at(seqs, ex_user[i], ex_pos[i])
        want = np.zeros(schema.HISTORY_LEN, np.int64)
        want[: len(h)] = h
        assert np.array_equal(got[i], want), i


def test_training_device_choice_is_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                           ) -> None:
    """auto trains where torch can; asking for a GPU torch cannot see is a clear error,
    not a silent CPU run (and the CLI turns it into exit status 2)."""
    import torch

    from vidrec.cli import main as cli_main
    from vidrec.models.two_tower_task import device

    assert device("cpu").type == "cpu"
    assert device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="expected one of auto, cpu, cuda"):
        device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sees no CUDA GPU"):
            device("cuda")
        data = tmp_path / "data"
        assert cli_main(["data", "synth", "--out", str(data), "--users", "40", "--videos",
                         "30", "--interactions-per-user", "10"]) == 0
        assert cli_main(["train", "--data", str(data), "--out", str(tmp_path / "m"),
                         "--no-tune", "--quiet", "--device", "cuda"]) == 2
        assert "sees no CUDA GPU" in capsys.readouterr().err
        assert not (tmp_path / "m").exists()


def test_tuning_samples_validation_users_only_on_huge_catalogs() -> None:
    """Up to TUNE_CELLS (users x catalog) every validation user counts; past it a seeded
    sample of users, the same one every run, never below MIN_TUNE_USERS."""
    from vidrec.training.tune import MIN_TUNE_USERS, TUNE_CELLS, tune_sample

    users = [f"u{i:05d}" for i in range(5000)]
    assert tune_sample(users, 100_000, seed=1) == users
    cap = int(TUNE_CELLS // 1_000_000)
    got = tune_sample(users, 1_000_000, seed=1)
    assert len(got) == max(cap, MIN_TUNE_USERS) and set(got) <= set(users)
    assert got == sorted(got) == tune_sample(users, 1_000_000, seed=1)
    assert len(tune_sample(users, 10**9, seed=1)) == MIN_TUNE_USERS
