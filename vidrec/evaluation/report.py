"""Evaluation reports: one JSON for programs, one Markdown page and one plot for people.

The same `results` mapping ("model (split)" -> metrics) feeds all three, so the numbers a
reader sees in report.md are exactly the ones a later run diffs against in results.json.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # reports are written by headless jobs; never open a window

import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["CURVE_METRICS", "METRIC_ORDER", "metric_columns", "parse_metric", "write_report"]

# Metrics drawn as @k curves, one subplot each.
CURVE_METRICS: tuple[str, ...] = ("precision", "recall", "map", "ndcg")
# Column order in tables; metrics not listed follow, alphabetically.
METRIC_ORDER: tuple[str, ...] = CURVE_METRICS + ("coverage", "diversity", "novelty")

_METRIC_KEY = re.compile(r"^(?P<name>[A-Za-z_][\w.-]*)@(?P<k>\d+)$")


def parse_metric(key: str) -> tuple[str, int] | None:
    """Split "ndcg@10" into ("ndcg", 10); None for keys that are not "name@k"."""
    m = _METRIC_KEY.match(key)
    return (m.group("name"), int(m.group("k"))) if m else None


def metric_columns(results: Mapping[str, Mapping[str, float]]) -> list[str]:
    """Every metric key across models, "name@k" keys grouped by name then k, others last."""
    keys = {key for metrics in results.values() for key in metrics}
    rank = {name: i for i, name in enumerate(METRIC_ORDER)}

    def sort_key(key: str) -> tuple[int, int, str, int]:
        parsed = parse_metric(key)
        if parsed is None:
            return (1, 0, key, 0)
        name, k = parsed
        return (0, rank.get(name, len(rank)), name, k)

    return sorted(keys, key=sort_key)


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if value.is_integer() and abs(value) > 1:  # counts such as "users"
            return str(int(value))
        return f"{value:.4g}" if 0 < abs(value) < 1e-3 else f"{value:.4f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> list[str]:
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |")
    return lines


def _json_safe(value: Any) -> Any:
    """NaN / inf become null: JSON has no NaN and strict parsers reject it."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _json_safe(value.item())
    return value


def _plot(results: Mapping[str, Mapping[str, float]], title: str, path: Path) -> None:
    fig, axes = plt.subplots(1, len(CURVE_METRICS), figsize=(4 * len(CURVE_METRICS), 3.6))
    for ax, metric in zip(axes, CURVE_METRICS, strict=True):
        for model, metrics in results.items():
            points = sorted(
                (parsed[1], float(v))
                for key, v in metrics.items()
                if (parsed := parse_metric(key)) is not None and parsed[0] == metric
                and v is not None and not math.isnan(float(v))
            )
            if points:
                ks, values = zip(*points, strict=True)
                ax.plot(ks, values, marker="o", label=model)
        ax.set_title(f"{metric}@k")
        ax.set_xlabel("k")
        ax.grid(True, alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.12 if handles else 0, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(
    out_dir: Path,
    results: Mapping[str, Mapping[str, float]],
    title: str,
    tables: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    notes: Sequence[str] | None = None,
) -> dict[str, Path]:
    """Write results.json, report.md and metrics_at_k.png into out_dir; return their paths.

    results maps a model/split name such as "two_tower (warm)" to its metrics. tables are
    extra sections (title -> rows; the columns are the union of row keys, in first-seen
    order) for things that are not metrics, e.g. fit times or chosen hyperparameters.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = tables or {}
    notes = list(notes or [])

    json_path = out_dir / "results.json"
    payload = {"title": title, "results": results, "tables": tables, "notes": notes}
    json_path.write_text(json.dumps(_json_safe(payload), indent=2, sort_keys=False) + "\n")

    columns = metric_columns(results)
    lines = [f"# {title}", ""]
    rows = [{"model": model, **metrics} for model, metrics in results.items()]
    lines += _markdown_table(rows, ["model", *columns])
    for table_title, table_rows in tables.items():
        table_columns: list[str] = []
        for row in table_rows:
            table_columns += [c for c in row if c not in table_columns]
        lines += ["", f"## {table_title}", ""]
        lines += _markdown_table(table_rows, table_columns) if table_rows else ["(empty)"]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in notes]
    lines += ["", "![metrics at k](metrics_at_k.png)", ""]
    md_path = out_dir / "report.md"
    md_path.write_text("\n".join(lines))

    png_path = out_dir / "metrics_at_k.png"
    _plot(results, title, png_path)
    return {"json": json_path, "markdown": md_path, "plot": png_path}
