"""Settings from the environment, and the command line a user types."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from vidrec.cli import main
from vidrec.config import (
    GatewaySettings,
    RankerSettings,
    SettingsError,
    known_keys,
    load_settings,
)

GW = {"VIDREC_CANDIDATE_ADDR": "a:1", "VIDREC_RANKER_ADDR": "b:2", "VIDREC_RERANKER_ADDR": "c:3"}


def test_required_address_missing_is_an_error() -> None:
    with pytest.raises(SettingsError, match="VIDREC_RANKER_ADDR"):
        load_settings(GatewaySettings, {"VIDREC_CANDIDATE_ADDR": "a:1",
                                        "VIDREC_RERANKER_ADDR": "c:3"})


def test_unknown_key_is_an_error() -> None:
    with pytest.raises(SettingsError, match="VIDREC_RANKR_ADDR"):
        load_settings(GatewaySettings, {**GW, "VIDREC_RANKR_ADDR": "x"})


def test_values_are_typed_and_bad_ones_rejected() -> None:
    s = load_settings(GatewaySettings, {**GW, "VIDREC_MAX_K": "50",
                                        "VIDREC_LOG_IMPRESSIONS": "false"})
    assert s.max_k == 50 and s.log_impressions is False and s.ranker_addr == "b:2"
    with pytest.raises(SettingsError, match="expected int"):
        load_settings(GatewaySettings, {**GW, "VIDREC_MAX_K": "many"})
    # a key another service knows is fine here (one shared ConfigMap for all services)
    assert "VIDREC_QDRANT_URL" in known_keys()
    assert load_settings(RankerSettings, {"VIDREC_QDRANT_URL": "http://q"}).top_m == 50


def test_train_recommend_evaluate_from_the_command_line(
        small_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = tmp_path / "model"
    assert main(["train", "--data", str(small_dataset), "--out", str(model), "--quiet",
                 "--no-tune", "--epochs", "2"]) == 0
    assert json.loads((model / "manifest.json").read_text())["schema_hash"]
    # known users from a text file: k videos each, never one they interacted with
    inter = pd.read_csv(small_dataset / "interactions.csv", dtype=str)
    users = ["u00000", "u00001", "u00002"]
    ids = tmp_path / "users.txt"
    ids.write_text("\n".join(users) + "\n")
    out = tmp_path / "recs.jsonl"
    assert main(["recommend", "--model", str(model), "--users", str(ids), "--k", "7",
                 "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["user_id"] for r in rows] == users
    for r in rows:
        assert len(r["videos"]) == 7 and len(set(r["videos"])) == 7
        seen = set(inter.loc[inter["user_id"] == r["user_id"], "video_id"])
        assert not seen & set(r["videos"])
    # new users known only by features (users.csv)
    out2 = tmp_path / "new.jsonl"
    assert main(["recommend", "--model", str(model), "--users",
                 str(small_dataset / "later" / "users.csv"), "--k", "5", "--out", str(out2)]) == 0
    new_rows = [json.loads(line) for line in out2.read_text().splitlines()]
    assert len(new_rows) == 20 and all(len(r["videos"]) == 5 for r in new_rows)
    # a malformed new-users file names its line and column; nothing is written for it
    bad = tmp_path / "bad_users.csv"
    bad.write_text("user_id,age,gender\nn1,31,F\nn2,thirty,M\n")
    out3 = tmp_path / "bad.jsonl"
    assert main(["recommend", "--model", str(model), "--users", str(bad), "--k", "5",
                 "--out", str(out3)]) == 2
    err = capsys.readouterr().err
    assert "bad_users.csv, line 3, column 'age'" in err and "'thirty'" in err
    assert not out3.exists()
    # "more like this": k videos, never the anchor, best first, mostly the same category
    sim = tmp_path / "similar.jsonl"
    vids = pd.read_csv(small_dataset / "videos.csv", dtype=str).set_index("video_id")
    anchors = list(vids.index[:20])
    assert main(["similar", "--model", str(model), "--video", *anchors, "--k", "5",
                 "--out", str(sim)]) == 0
    same = 0
    for row in map(json.loads, sim.read_text().splitlines()):
        got = [h["video_id"] for h in row["similar"]]
        scores = [h["score"] for h in row["similar"]]
        assert len(got) == 5 and row["video_id"] not in got and scores == sorted(scores)[::-1]
        same += sum(vids.at[g, "category"] == vids.at[row["video_id"], "category"] for g in got)
    base = (vids["category"].value_counts(normalize=True) ** 2).sum()
    assert same / 100 > 2 * base
    with pytest.raises(SystemExit, match="unknown video id"):
        main(["similar", "--model", str(model), "--video", "no-such-video"])
    # --k 0 is refused with a message, not a traceback
    with pytest.raises(SystemExit, match="--k must be positive"):
        main(["recommend", "--model", str(model), "--users", str(ids), "--k", "0",
              "--out", str(out)])


def test_bad_data_directory_names_file_line_and_column(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "videos.csv").write_text("video_id\nv1\n")
    (tmp_path / "users.csv").write_text("user_id\nu1\n")
    (tmp_path / "interactions.csv").write_text(
        "user_id,video_id,timestamp,event,value\nu1,v1,100,watch,1.7\n")
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "interactions.csv" in err and "line 2" in err and "'value'" in err


def test_python_m_vidrec_is_the_cli() -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "vidrec", "--version"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("vidrec "), out.stderr
