"""`vidrec` command line: data, train, recommend, evaluate, publish, serve and operate."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vidrec.logs import setup_logging

if TYPE_CHECKING:
    from vidrec.training.pipeline import PipelineConfig

log = logging.getLogger("vidrec.cli")

Handler = Callable[[argparse.Namespace], int]
_COMMANDS: dict[str, Handler] = {}


# --- data -----------------------------------------------------------------------------


def cmd_data_movielens(a: argparse.Namespace) -> int:
    from vidrec.data.movielens import import_movielens

    ds = import_movielens(Path(a.src), Path(a.out))
    print(f"wrote {a.out}: {len(ds.users)} users, {len(ds.videos)} videos, "
          f"{len(ds.interactions)} interactions")
    return 0


def cmd_data_synth(a: argparse.Namespace) -> int:
    from vidrec.data.synth import generate

    t0 = time.perf_counter()
    ds = generate(Path(a.out), users=a.users, videos=a.videos, seed=a.seed,
                  interactions_per_user=a.interactions_per_user, new_users=a.new_users,
                  new_videos=a.new_videos)
    print(f"wrote {a.out}: {len(ds.users)} users, {len(ds.videos)} videos, "
          f"{len(ds.interactions)} interactions in {time.perf_counter() - t0:.1f}s")
    return 0


def cmd_data_validate(a: argparse.Namespace) -> int:
    from vidrec.data.dataset import load_dataset

    ds = load_dataset(Path(a.dir), on_bad_rows=a.on_bad_rows)
    print(f"{a.dir}: {len(ds.users)} users, {len(ds.videos)} videos, "
          f"{len(ds.interactions)} interactions")
    if ds.bad_rows:
        print(ds.bad_rows.summary())
    return 0


# --- models ---------------------------------------------------------------------------


def offline_config(device: str = "auto") -> PipelineConfig:
    """The default PipelineConfig with torch on every core: nothing else runs beside an
    offline train or evaluation (the trainer service keeps half). `device`: where the
    two-tower trains (auto: a CUDA GPU when torch sees one)."""
    from dataclasses import replace

    from vidrec.training.pipeline import PipelineConfig

    cfg = PipelineConfig()
    cfg.train = replace(cfg.train, threads=os.cpu_count() or 1, device=device)
    return cfg


def cmd_train(a: argparse.Namespace) -> int:
    from vidrec.data.dataset import load_dataset
    from vidrec.training.pipeline import train_bundle
    from vidrec.training.tune import train_tuned

    t0 = time.perf_counter()
    ds = load_dataset(Path(a.data), on_bad_rows=a.on_bad_rows)
    if ds.bad_rows:
        print(ds.bad_rows.summary(), file=sys.stderr)
    cfg = offline_config(a.device)
    if a.epochs is not None:
        from dataclasses import replace

        cfg.train = replace(cfg.train, epochs=a.epochs)
    train = train_tuned if a.tune else train_bundle
    bundle = train(ds, cfg, progress=not a.quiet)
    bundle.save(Path(a.out))
    secs = bundle.manifest["train_seconds"]
    tuned = f", tuning {secs['tune']}s" if "tune" in secs else ""
    print(f"trained {bundle.version} in {time.perf_counter() - t0:.1f}s "
          f"(MF {secs['mf']}s, two-tower {secs['two_tower']}s{tuned}) -> {a.out}")
    return 0


def read_users_file(path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """A text file of user ids (one per line) or a users.csv of new users with features."""
    text = path.read_text()
    first = text.splitlines()[0].strip() if text.strip() else ""
    if "," in first and "user_id" in [c.strip() for c in first.split(",")]:
        from vidrec.data.dataset import load_users, user_profiles

        profiles = user_profiles(load_users(path))  # user_ids are checked unique
        return list(profiles), list(profiles.values())
    ids = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return ids, [{} for _ in ids]


def cmd_recommend(a: argparse.Namespace) -> int:
    from vidrec.models.bundle import BatchRecommender, ModelBundle

    if a.k <= 0:
        raise SystemExit("--k must be positive")
    bundle = ModelBundle.load(Path(a.model))
    users, profiles = read_users_file(Path(a.users))
    unknown = sum(1 for u in users if u not in bundle.users)
    if unknown:
        log.info("%d of %d users are new: recommending from profile features", unknown,
                 len(users))
    t0 = time.perf_counter()
    lists = BatchRecommender(bundle).recommend(users, a.k, mode=a.mode, profiles=profiles)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:
        for u, vids in zip(users, lists, strict=True):
            f.write(json.dumps({"user_id": u, "videos": vids}) + "\n")
    print(f"wrote {len(users)} users x {a.k} to {out} in {time.perf_counter() - t0:.2f}s")
    return 0


def cmd_similar(a: argparse.Namespace) -> int:
    from vidrec.models.bundle import ModelBundle
    from vidrec.models.content import similar

    if a.k <= 0:
        raise SystemExit("--k must be positive")
    bundle = ModelBundle.load(Path(a.model))
    index = {v: i for i, v in enumerate(bundle.video_ids)}
    unknown = [v for v in a.video if v not in index]
    if unknown:
        raise SystemExit(f"unknown video id(s) {', '.join(unknown)}: not in the catalog of "
                         f"{a.model}")
    vectors = bundle.content_vectors if a.by == "content" else bundle.video_vectors
    found = {v: [(bundle.video_ids[j], s) for j, s in similar(vectors, index[v], a.k)]
             for v in a.video}
    if a.out:
        with Path(a.out).open("w") as f:
            for v, hits in found.items():
                f.write(json.dumps({"video_id": v, "by": a.by, "similar": [
                    {"video_id": h, "score": round(s, 4)} for h, s in hits]}) + "\n")
        print(f"wrote {len(found)} videos x {a.k} to {a.out}")
        return 0
    rows = bundle.videos.set_index("video_id")
    for v, hits in found.items():
        print(f"similar to {v} ({_describe(rows, v)}) by {a.by}:")
        for n, (h, s) in enumerate(hits, 1):
            print(f"  {n:2d}. {h}  {s:6.3f}  {_describe(rows, h)}")
    return 0


def _describe(rows: Any, video_id: str) -> str:
    """'[category] title' of a catalog video, for people reading the terminal."""
    r = rows.loc[video_id]
    cat = r.get("category", "") or "-"
    return f"[{cat}] {str(r.get('title', ''))[:60]}"


def cmd_evaluate_events(a: argparse.Namespace) -> int:
    """Two models judged on a logged event stream by the off-policy estimator, not by
    scoring both on what the serving model chose to show."""
    from vidrec.evaluation.offpolicy import compare_models, report_lines
    from vidrec.models.bundle import ModelBundle
    from vidrec.store.eventlog import EventLog

    if not a.model or not a.candidate:
        raise ValueError("--events needs --model (the model that served the log) and "
                         "--candidate (the model to judge)")
    src = Path(a.events)
    log_ = EventLog(src) if src.is_dir() else EventLog(src.parent)
    if not src.is_dir():
        log_.path = src
    events = log_.read_logged()
    d = compare_models(events, ModelBundle.load(Path(a.model)),
                       ModelBundle.load(Path(a.candidate)), seed=a.seed)
    if d is None:
        print("no explored impressions with a propensity in the log: nothing to estimate "
              "(impressions logged before propensities were, or exploration off)")
        return 1
    lines = report_lines(d, f"model ({Path(a.model).name})",
                         f"candidate ({Path(a.candidate).name})")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "offpolicy.md").write_text("\n".join(["# vidrec off-policy evaluation", "",
                                                  *lines, ""]))
    (out / "offpolicy.json").write_text(json.dumps(d.as_dict(), indent=2))
    print("\n".join(lines))
    print(f"\nwrote {out / 'offpolicy.md'}, {out / 'offpolicy.json'}")
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    if a.events:
        return cmd_evaluate_events(a)
    if not a.data:
        raise ValueError("evaluate needs --data (offline) or --events (off-policy)")
    from vidrec.data.dataset import load_dataset
    from vidrec.evaluation.offline import evaluate_dataset
    from vidrec.evaluation.report import write_report

    ds = load_dataset(Path(a.data), on_bad_rows=a.on_bad_rows)
    ks = [int(k) for k in a.ks.split(",")]
    res = evaluate_dataset(ds, offline_config(a.device), ks=ks, seed=a.seed,
                           progress=not a.quiet,
                           tune_rules_on_validation=a.tune_rules)
    paths = write_report(Path(a.out), res.results, f"vidrec offline evaluation: {a.data}",
                         res.tables, res.notes)
    k = 10 if 10 in ks else ks[-1]
    cols = [f"precision@{k}", f"recall@{k}", f"map@{k}", f"ndcg@{k}", f"coverage@{k}",
            f"diversity@{k}", f"novelty@{k}"]
    cols.append(f"new_share@{k}")
    extra = {c for m in res.results.values() for c in m if c.startswith("true_")}
    cols += sorted(extra, key=lambda c: (c.split("@")[0], int(c.split("@")[1])))
    width = [max(12, len(c) + 2) for c in cols]
    print(f"{'model':28s}" + "".join(f"{c:>{w}s}" for c, w in zip(cols, width, strict=True)))
    for name, m in res.results.items():
        print(f"{name:28s}" + "".join(f"{m.get(c, float('nan')):{w}.4f}"
                                       for c, w in zip(cols, width, strict=True)))
    for title, rows in res.tables.items():
        print(f"\n{title}")
        for row in rows:
            print("  " + ", ".join(f"{k}={v}" for k, v in row.items()))
    print("\nwrote " + ", ".join(str(p) for p in paths.values()))
    return 0


# --- parser ---------------------------------------------------------------------------


def _add(sub: Any, name: str, fn: Handler, help_: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_, description=help_)
    p.set_defaults(fn=fn)
    return p


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vidrec")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vidrec",
        description="vidrec: video recommendations. Typical flow: `vidrec data synth` -> "
        "`vidrec train` -> `vidrec evaluate` / `vidrec recommend`; `make run` starts the "
        "whole online stack.")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--version", action="version", version=f"vidrec {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="create, import and validate data directories")
    dsub = data.add_subparsers(dest="data_command", required=True)
    m = _add(dsub, "movielens", cmd_data_movielens,
             "Import MovieLens-100K (u.data, u.item, u.user) into a data directory.")
    m.add_argument("--src", required=True, help="directory holding u.data, u.item, u.user")
    m.add_argument("--out", required=True, help="data directory to write")
    s = _add(dsub, "synth", cmd_data_synth,
             "Generate a synthetic data directory with a known ground truth.")
    s.add_argument("--out", required=True)
    s.add_argument("--users", type=int, default=2000)
    s.add_argument("--videos", type=int, default=3000)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--interactions-per-user", type=float, default=60.0,
                   help="mean event rows per user (impressions included)")
    s.add_argument("--new-users", type=int, default=0,
                   help="users that appear only later (written to OUT/later/users.csv)")
    s.add_argument("--new-videos", type=int, default=0,
                   help="videos uploaded only later (OUT/later/videos.csv)")
    v = _add(dsub, "validate", cmd_data_validate, "Load and validate a data directory.")
    v.add_argument("dir")
    v.add_argument("--on-bad-rows", choices=["fail", "skip"], default="fail")

    t = _add(sub, "train", cmd_train,
             "Train MF, the two-tower network and the content model; write a model directory.")
    t.add_argument("--data", required=True, help="data directory (DESIGN.md §7 contract)")
    t.add_argument("--out", required=True, help="model directory to write")
    t.add_argument("--on-bad-rows", choices=["fail", "skip"], default="fail",
                   help="fail on the first malformed row (default) or skip and report them")
    t.add_argument("--epochs", type=int, default=None, help="two-tower epochs")
    t.add_argument("--no-tune", dest="tune", action="store_false",
                   help="skip tuning the ranker weights, the MF recency boost and the "
                        "demographic prior's field weights on validation (faster)")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where the two-tower trains: auto (default) takes a CUDA GPU when "
                        "torch sees one, else the CPU")

    r = _add(sub, "recommend", cmd_recommend,
             "Batch recommendations: one JSON line per user, never a video seen in training.")
    r.add_argument("--model", required=True, help="model directory from `vidrec train`")
    r.add_argument("--users", required=True,
                   help="text file of user ids, or a users.csv of new users (features only)")
    r.add_argument("--k", type=int, default=10)
    r.add_argument("--out", required=True, help="output .jsonl")
    r.add_argument("--mode", default="hybrid", choices=["hybrid", "two_tower", "mf",
                                                         "popularity"])

    sm = _add(sub, "similar", cmd_similar,
              "Videos similar to a given video ('more like this'): by content features "
              "alone (works for a video nobody has watched yet) or by the two-tower "
              "vectors (content plus who watched it).")
    sm.add_argument("--model", required=True, help="model directory from `vidrec train`")
    sm.add_argument("--video", required=True, nargs="+", help="one or more video ids")
    sm.add_argument("--k", type=int, default=10)
    sm.add_argument("--by", choices=["content", "two_tower"], default="content")
    sm.add_argument("--out", help="write one JSON line per video here instead of a table")

    e = _add(sub, "evaluate", cmd_evaluate,
             "Offline evaluation: per-user temporal split and cold-start split; writes "
             "results.json, report.md and a PNG plot.")
    e.add_argument("--data", help="data directory (offline evaluation)")
    e.add_argument("--events", help="an event log (events.csv, or the trainer's events "
                   "directory): judge --candidate against --model, the model that served "
                   "it, off-policy (IPS/SNIPS on the explored impressions)")
    e.add_argument("--model", help="with --events: the model directory that served the log")
    e.add_argument("--candidate", help="with --events: the model directory to judge")
    e.add_argument("--out", default="var/eval", help="report directory")
    e.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where the two-tower trains (auto: a CUDA GPU when torch sees one)")
    e.add_argument("--ks", default="1,5,10,20")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--on-bad-rows", choices=["fail", "skip"], default="fail")
    e.add_argument("--tune-rules", action="store_true",
                   help="also choose the rerank rules' knobs on a validation split carved "
                        "from the warm training side (one more model trained) and score "
                        "them on test")
    e.add_argument("--quiet", action="store_true")

    for extra in _EXTRA_PARSERS:
        extra(sub)
    return p


# Later modules (serving, events, simulation) register their subcommands here.
_EXTRA_PARSERS: list[Callable[[Any], None]] = []


def _register_extras() -> None:
    from vidrec import cli_ops

    if cli_ops.register not in _EXTRA_PARSERS:
        _EXTRA_PARSERS.append(cli_ops.register)


def main(argv: Sequence[str] | None = None) -> int:
    _register_extras()
    args = build_parser().parse_args(argv)
    setup_logging("cli", args.log_level)
    from vidrec.data.dataset import DataError

    try:
        return int(args.fn(args) or 0)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
