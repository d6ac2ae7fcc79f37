"""The report writer produces the three files with the numbers it was given."""

from __future__ import annotations

import json
from pathlib import Path

from vidrec.evaluation.report import metric_columns, parse_metric, write_report

RESULTS = {
    "two_tower (warm)": {"precision@5": 0.2, "ndcg@10": 0.15, "ndcg@5": 0.1, "map@10": 0.07,
                         "coverage@10": 0.5, "users": 943.0, "fit_s": 1.25},
    "mf (warm)": {"precision@5": 0.25, "ndcg@10": float("nan"), "ndcg@5": 0.12},
}


def test_parse_and_order_metric_keys() -> None:
    assert parse_metric("ndcg@10") == ("ndcg", 10)
    assert parse_metric("users") is None and parse_metric("a@b") is None
    assert metric_columns(RESULTS) == [
        "precision@5", "map@10", "ndcg@5", "ndcg@10", "coverage@10", "fit_s", "users",
    ]


def test_write_report_files_and_content(tmp_path: Path) -> None:
    out = tmp_path / "report"
    paths = write_report(
        out,
        RESULTS,
        title="Peers on ML-100K",
        tables={"Fit time": [{"model": "mf", "fit_s": 0.5, "l2": 1e-05},
                             {"model": "x|y", "note": "n"}]},
        notes=["relevant = rating >= 4"],
    )
    assert set(paths) == {"json", "markdown", "plot"}
    assert all(p.parent == out and p.exists() for p in paths.values())

    payload = json.loads(paths["json"].read_text())
    assert payload["title"] == "Peers on ML-100K"
    assert payload["results"]["two_tower (warm)"]["ndcg@10"] == 0.15
    assert payload["results"]["mf (warm)"]["ndcg@10"] is None  # NaN is not JSON
    assert payload["notes"] == ["relevant = rating >= 4"]

    md = paths["markdown"].read_text()
    lines = md.splitlines()
    assert lines[0] == "# Peers on ML-100K"
    header = "| model | precision@5 | map@10 | ndcg@5 | ndcg@10 | coverage@10 | fit_s | users |"
    assert header in lines
    row = "| two_tower (warm) | 0.2000 | 0.0700 | 0.1000 | 0.1500 | 0.5000 | 1.2500 | 943 |"
    assert row in lines
    assert "| mf (warm) | 0.2500 |  | 0.1200 | n/a |  |  |  |" in lines
    assert "## Fit time" in md and "| model | fit_s | l2 | note |" in lines
    assert "| mf | 0.5000 | 1e-05 |  |" in lines
    assert "| x\\|y |  |  | n |" in lines
    assert "- relevant = rating >= 4" in lines

    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths["plot"].stat().st_size > 5000


def test_write_report_without_curves(tmp_path: Path) -> None:
    paths = write_report(tmp_path, {"pop": {"users": 3.0}}, title="t")
    assert paths["plot"].exists()
    assert "## Notes" not in paths["markdown"].read_text()


def _result(mf_train: float, tt_train: float, mf_ms: float, tt_ms: float):  # type: ignore[no-untyped-def]
    from vidrec.evaluation.offline import EvalResult

    r = EvalResult()
    r.tables["MF vs two-tower: cost and speed"] = [
        {"model": "mf", "parameters": 100, "train_s": mf_train, "ms_per_user": mf_ms},
        {"model": "two_tower", "parameters": 200, "train_s": tt_train, "ms_per_user": tt_ms}]
    r.results = {"mf (warm)": {"ndcg@10": 0.2}, "two_tower (warm)": {"ndcg@10": 0.1},
                 "hybrid (warm)": {"ndcg@10": 0.25}, "two_tower (cold)": {"ndcg@10": 0.3},
                 "popularity (cold)": {"ndcg@10": 0.2}}
    return r


def test_claim_verdict_follows_the_figures() -> None:
    from vidrec.evaluation.offline import claim_verdict

    assert "cheaper and faster: supported" in claim_verdict(_result(1.0, 10.0, 0.1, 0.3))
    # A training-time tie and slower scoring is not support (the synthetic run: 4.32 s vs
    # 4.33 s, 0.59 vs 0.33 ms per user).
    tie = claim_verdict(_result(4.324, 4.331, 0.593, 0.329))
    assert "cheaper and faster: NOT supported here" in tie
    assert "cheaper: supported; faster: NOT" in claim_verdict(_result(1.0, 10.0, 0.5, 0.3))
    assert "two-tower better: NOT supported" in tie and "better than the fallback" in tie
