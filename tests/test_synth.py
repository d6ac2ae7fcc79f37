"""Synthetic generator: determinism, contract, event mix, and that the hidden truth shows."""

from __future__ import annotations

import filecmp
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vidrec import schema
from vidrec.data.dataset import Dataset, load_dataset
from vidrec.data.synth import GroundTruth, generate

USERS, VIDEOS, SEED, PER_USER = 400, 300, 7, 40.0
CSVS = ("videos.csv", "users.csv", "interactions.csv")


@pytest.fixture(scope="module")
def gen(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Dataset, GroundTruth]:
    out = tmp_path_factory.mktemp("synth")
    ds = generate(out, users=USERS, videos=VIDEOS, seed=SEED, interactions_per_user=PER_USER,
                  new_users=30, new_videos=20)
    return out, ds, GroundTruth.load(out)


def test_layout_and_clean_load(gen) -> None:
    out, ds, _ = gen
    for name in (*CSVS, "ground_truth.npz", "later/users.csv", "later/videos.csv"):
        assert (out / name).is_file(), name
    again = load_dataset(out)  # fail policy: a bad row would raise
    assert not again.bad_rows
    assert len(ds.users) == USERS and len(ds.videos) == VIDEOS
    assert ds.interactions["user_id"].isin(ds.users["user_id"]).all()


def test_features_present(gen) -> None:
    _, ds, _ = gen
    v, u = ds.videos, ds.users
    for c in ("title", "category", "tags", "creator_id", "language"):
        assert (v[c] != "").all(), c
    assert v["duration_s"].gt(0).all() and v["upload_ts"].notna().all()
    assert v["creator_id"].nunique() < len(v)  # creators upload several videos
    assert v["tags"].str.contains("|", regex=False).any()
    for c in ("country", "language", "gender"):
        assert (u[c] != "").all(), c
    assert u["age"].between(13, 80).all()


def test_deterministic_per_seed(gen, tmp_path: Path) -> None:
    out, _, gt = gen
    generate(tmp_path / "a", users=USERS, videos=VIDEOS, seed=SEED,
             interactions_per_user=PER_USER, new_users=30, new_videos=20)
    for name in (*CSVS, "later/users.csv", "later/videos.csv"):
        assert filecmp.cmp(out / name, tmp_path / "a" / name, shallow=False), name
    gt2 = GroundTruth.load(tmp_path / "a")
    np.testing.assert_array_equal(gt.user_vec, gt2.user_vec)
    assert gt.relevance_threshold == gt2.relevance_threshold
    generate(tmp_path / "b", users=USERS, videos=VIDEOS, seed=SEED + 1,
             interactions_per_user=PER_USER)
    assert not filecmp.cmp(out / "interactions.csv", tmp_path / "b" / "interactions.csv",
                           shallow=False)


def test_main_data_ignores_number_of_later_entities(gen, tmp_path: Path) -> None:
    out, _, _ = gen
    generate(tmp_path / "c", users=USERS, videos=VIDEOS, seed=SEED,
             interactions_per_user=PER_USER)
    for name in CSVS:
        assert filecmp.cmp(out / name, tmp_path / "c" / name, shallow=False), name
    assert not (tmp_path / "c" / "later").exists()


def test_event_mix(gen) -> None:
    _, ds, _ = gen
    i = ds.interactions
    counts = i["event"].value_counts()
    assert set(counts.index) <= set(schema.EVENT_TYPES) - {"rating"}
    assert counts["impression"] > 0.6 * len(i)
    assert 0.02 < counts["click"] / counts["impression"] < 0.4
    assert counts["watch"] == counts["click"]  # every click leads to a watch
    for e in ("like", "dislike", "share", "skip"):
        assert 0 < counts.get(e, 0) < counts["click"], e
    w = i.loc[i["event"] == "watch", "value"]
    assert w.between(0, 1).all() and w.std() > 0.1
    assert i.loc[i["event"] != "watch", "value"].isna().all()
    per_user = len(i) / USERS
    assert 0.75 * PER_USER < per_user < 1.25 * PER_USER


def test_time_window_and_uploads(gen) -> None:
    _, ds, gt = gen
    i = ds.interactions
    span_days = (i["timestamp"].max() - i["timestamp"].min()) / 86_400
    assert span_days > 150
    assert i["timestamp"].is_monotonic_increasing
    upload = ds.videos.set_index("video_id")["upload_ts"]
    assert (i["timestamp"].to_numpy() >= upload.loc[i["video_id"]].to_numpy()).all()
    assert (ds.videos["upload_ts"] > i["timestamp"].min()).any()  # fresh uploads mid-window
    later_v = pd.read_csv(Path(ds.root or ".") / "later/videos.csv", dtype={"video_id": str})
    assert (later_v["upload_ts"] > i["timestamp"].max()).all()
    assert not later_v["video_id"].isin(i["video_id"]).any()
    later_u = pd.read_csv(Path(ds.root or ".") / "later/users.csv", dtype={"user_id": str})
    assert len(later_u) == 30 and not later_u["user_id"].isin(i["user_id"]).any()
    assert gt.user_is_later.sum() == 30 and gt.video_is_later.sum() == 20
    gt.affinity(later_u["user_id"].to_numpy(), later_v["video_id"].to_numpy()[:1])


def test_high_affinity_pairs_get_more_positive_events(gen) -> None:
    _, ds, gt = gen
    i = ds.interactions
    imp = i[i["event"] == "impression"]
    aff = gt.affinity(imp["user_id"].to_numpy(), imp["video_id"].to_numpy())
    positive = i[i["event"].isin(["click", "like", "share"])]
    pos_pairs = pd.MultiIndex.from_frame(positive[["user_id", "video_id"]])
    hit = pd.MultiIndex.from_frame(imp[["user_id", "video_id"]]).isin(pos_pairs)
    lo, hi = np.quantile(aff, [0.25, 0.75])
    assert hit[aff >= hi].mean() > 3 * hit[aff <= lo].mean()
    watch = i[i["event"] == "watch"]
    w_aff = gt.affinity(watch["user_id"].to_numpy(), watch["video_id"].to_numpy())
    assert np.corrcoef(w_aff, watch["value"])[0, 1] > 0.2


def test_profile_features_predict_taste(gen) -> None:
    """Cold start must be learnable: country, language, age and gender explain taste."""
    _, ds, gt = gen
    u = ds.users
    bucket = pd.cut(u["age"], [0, 18, 25, 35, 45, 55, 200], right=False).astype(str)
    x = pd.get_dummies(pd.DataFrame({"c": u["country"], "l": u["language"],
                                     "g": u["gender"], "a": bucket})).to_numpy(float)
    y = gt.user_vec[gt.user_index(u["user_id"].to_numpy())]
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    r2 = 1 - ((y - x @ coef) ** 2).sum() / ((y - y.mean(axis=0)) ** 2).sum()
    assert 0.3 < r2 < 0.95  # informative, but history still adds something


def test_ground_truth_api(gen) -> None:
    _, ds, gt = gen
    users = ds.users["user_id"].to_numpy()[:5]
    vids = ds.videos["video_id"].to_numpy()[:7]
    m = gt.affinity_matrix(users, vids)
    assert m.shape == (5, 7)
    np.testing.assert_allclose(gt.affinity(users[2], vids), m[2])
    np.testing.assert_allclose(gt.affinity(users, vids[3]), m[:, 3])
    rel = gt.relevant(users[0])
    full = gt.affinity_matrix([users[0]])[0]
    assert rel == set(gt.video_ids[full >= gt.relevance_threshold])
    assert gt.relevant(users[0], threshold=-1e9) == set(gt.video_ids)
    assert gt.relevant(users[0], video_ids=vids) <= set(vids)
    share = gt.relevant_matrix(ds.users["user_id"].to_numpy()).mean()
    assert 0.01 < share < 0.15  # default threshold: the 95th percentile of all pairs
    with pytest.raises(KeyError):
        gt.affinity("nobody", vids[0])


def test_respond(gen) -> None:
    _, ds, gt = gen
    user = ds.users["user_id"].iloc[0]
    vids = list(ds.videos["video_id"].iloc[:10])
    a = gt.respond(user, vids, np.random.default_rng(3))
    assert a == gt.respond(user, vids, np.random.default_rng(3))
    assert [x[:2] for x in a[:10]] == [(v, "impression") for v in vids]
    for vid, event, value in a[10:]:
        assert vid in vids and event in schema.EVENT_TYPES
        assert (value is not None) == (event == "watch")
        if event == "watch":
            assert value is not None and 0 < value <= 1
    assert gt.respond(user, [], np.random.default_rng(0)) == []
    # The same model as the data: the user's best videos get clicked far more often.
    aff = gt.affinity_matrix([user])[0]
    order = gt.video_ids[np.argsort(aff)]
    rng = np.random.default_rng(0)

    def clicks(shown: list[str]) -> int:
        return sum(e == "click" for _ in range(200) for _, e, _ in gt.respond(user, shown, rng))

    assert clicks(list(order[-5:][::-1])) > 3 * clicks(list(order[:5])) + 5


def test_respond_has_position_bias(gen) -> None:
    _, ds, gt = gen
    user = ds.users["user_id"].iloc[0]
    vids = list(gt.video_ids[np.argsort(gt.affinity_matrix([user])[0])[-10:]])
    rng = np.random.default_rng(1)
    by_pos = np.zeros(10)
    for k in range(300):
        shown = vids if k % 2 == 0 else vids[::-1]  # every video equally often top and bottom
        for vid, event, _ in gt.respond(user, shown, rng):
            if event == "click":
                by_pos[shown.index(vid)] += 1
    assert by_pos[0] > 1.5 * by_pos[9]
