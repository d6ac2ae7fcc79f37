"""`vidrec simulate`: synthetic users with known tastes use the live system.

Each step one simulated user (a known user, or a new one from the generator's `later/`
users, who arrives with profile features only) asks the gateway for k videos, reacts to
them the way the generator's hidden model says (GroundTruth.respond: clicks, watches with
fractions, likes, dislikes, skips, shares) and sends those events back through
Gateway.LogEvents, tagged with the request id, position, model version and arm. The
gateway logs the impressions itself. So online metrics move through the real path:
gateway -> Kafka -> trainer -> Redis -> the next Recommend.

Time passes and the catalogue grows, as on a real service: the run spans `days` of
simulated time after the generator's window, the generator's `later/` videos are uploaded
through Gateway.UpsertVideos when their upload time comes, and users react at the
simulated time (the generator's click model favours fresh videos). A frozen catalogue made
every metric fall from run to run on one stack: users clicked through their relevant
videos, the seen filter removed them and nothing replaced them.

Writes report.md, metrics.json and simulation.png (metrics over time, per arm).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pandas as pd
from tqdm import tqdm

from vidrec.abtest import Comparison, Interval, bootstrap, readout
from vidrec.client import Client
from vidrec.events import COMPLETE, TYPE_OF
from vidrec.v1 import common_pb2, events_pb2

log = logging.getLogger(__name__)



@dataclass
class Window:
    requests: int = 0
    shown: int = 0
    clicks: int = 0
    watches: int = 0
    completed: int = 0
    watch_time_s: float = 0.0
    likes: int = 0
    dislikes: int = 0
    relevant: int = 0
    degraded: int = 0
    errors: int = 0
    new_uploads: int = 0  # shown videos uploaded during the simulation

    def row(self) -> dict[str, float]:
        return {
            "requests": self.requests, "ctr": self.clicks / max(self.shown, 1),
            "completion_rate": self.completed / max(self.watches, 1),
            "watch_min_per_request": self.watch_time_s / 60 / max(self.requests, 1),
            "likes_per_request": self.likes / max(self.requests, 1),
            "dislikes_per_request": self.dislikes / max(self.requests, 1),
            "true_precision": self.relevant / max(self.shown, 1),
            "new_upload_share": self.new_uploads / max(self.shown, 1),
            "degraded": self.degraded, "errors": self.errors,
        }


# Ratio metrics read out with intervals: name -> (numerator, denominator) of a Window.
RATIOS: dict[str, tuple[str, str]] = {
    "ctr": ("clicks", "shown"),
    "true_precision": ("relevant", "shown"),
    "completion_rate": ("completed", "watches"),
    "watch_min_per_request": ("watch_min", "requests"),
    "likes_per_request": ("likes", "requests"),
}


def _part(w: Window, name: str) -> float:
    return w.watch_time_s / 60 if name == "watch_min" else float(getattr(w, name))


def per_user_ratios(users: dict[str, Window]
                    ) -> dict[str, tuple[list[float], list[float]]]:
    """Per metric, every user's numerator and denominator (users are the independent unit
    of the A/B readout, vidrec.abtest)."""
    ws = list(users.values())
    return {m: ([_part(w, a) for w in ws], [_part(w, b) for w in ws])
            for m, (a, b) in RATIOS.items()}


@dataclass
class SimResult:
    windows: list[dict[str, dict[str, float]]] = field(default_factory=list)  # per arm
    window_versions: list[list[str]] = field(default_factory=list)
    totals: dict[str, Window] = field(default_factory=dict)
    versions: set[str] = field(default_factory=set)
    uploaded: int = 0  # later videos uploaded during the run
    # arm -> user -> that user's totals (the readout's unit); and the same per window.
    users: dict[str, dict[str, Window]] = field(default_factory=dict)
    window_users: list[dict[str, dict[str, Window]]] = field(default_factory=list)


def _profile(row: dict[str, Any]) -> common_pb2.UserProfile:
    from vidrec.serving.convert import profile_proto

    return profile_proto({k: v for k, v in row.items() if k != "user_id"})


def _uploads(data: Path, truth: Any) -> tuple[pd.DataFrame, np.ndarray]:
    """The generator's later videos in upload order, and their upload times (unix s)."""
    path = data / "later" / "videos.csv"
    if not path.exists():
        return pd.DataFrame(), np.zeros(0)
    later = pd.read_csv(path, dtype={"video_id": str, "tags": str, "title": str},
                        keep_default_na=False)
    ts = truth.video_upload_ts[truth.video_index(later["video_id"].to_numpy())]
    order = np.argsort(ts, kind="stable")
    return later.iloc[order].reset_index(drop=True), ts[order]


def _upload_message(row: dict[str, Any]) -> events_pb2.VideoUpserted:
    """A later video as the service receives it: uploaded now, by the system's clock."""
    from vidrec.schema import TAG_SEPARATOR

    tags = [t for t in str(row.get("tags", "")).split(TAG_SEPARATOR) if t]
    return events_pb2.VideoUpserted(
        video_id=str(row["video_id"]), title=str(row.get("title", "")),
        category=str(row.get("category", "")), tags=tags,
        creator_id=str(row.get("creator_id", "")), language=str(row.get("language", "")),
        duration_s=float(row.get("duration_s", 0) or 0), upload_ts=time.time())


def simulate(gateway: str, data: Path, steps: int, k: int, seed: int, new_user_share: float,
             window: int, rate: float = 0.0, progress: bool = True,
             var: str | Path | None = None, days: float = 30.0) -> SimResult:
    """`var`: the stack's directory; its run/stack.json has the key and TLS files.
    `days`: simulated time the run spans after the generator's window (0: a frozen
    catalogue at the window's end, nothing uploaded)."""
    from vidrec.data.synth import DAY, GroundTruth

    truth = GroundTruth.load(data)
    t_end = float(truth.params.t_end)
    uploads, upload_ts = _uploads(data, truth) if days > 0 else (pd.DataFrame(), np.zeros(0))
    uploaded_ids = set(uploads["video_id"]) if len(uploads) else set()
    n_up = 0
    rng = np.random.default_rng(seed)
    known = pd.read_csv(data / "users.csv", dtype=str, keep_default_na=False)
    later_path = data / "later" / "users.csv"
    later = (pd.read_csv(later_path, dtype=str, keep_default_na=False)
             if later_path.exists() else known.iloc[:0])
    durations = pd.read_csv(data / "videos.csv", usecols=["video_id", "duration_s"],
                            dtype={"video_id": str}).set_index("video_id")["duration_s"]
    truth_videos = set(truth.video_ids)
    res = SimResult()
    cur: dict[str, Window] = defaultdict(Window)
    tot: dict[str, Window] = defaultdict(Window)
    by_user: dict[str, dict[str, Window]] = defaultdict(lambda: defaultdict(Window))
    cur_users: dict[str, dict[str, Window]] = defaultdict(lambda: defaultdict(Window))
    cur_versions: set[str] = set()
    with Client.connect(gateway, var, timeout_s=2.0, retries=1) as client:
        for step in tqdm(range(steps), desc="simulate", disable=not progress, mininterval=0.5):
            t_step = time.monotonic()
            sim_now = t_end + days * DAY * step / max(steps, 1)
            due = int(np.searchsorted(upload_ts, sim_now, side="right"))
            if due > n_up:
                try:
                    client.upsert_videos([_upload_message(r) for r in
                                          uploads.iloc[n_up:due].to_dict("records")])
                    res.uploaded += due - n_up
                    n_up = due
                except grpc.RpcError as exc:  # retried at the next step
                    log.warning("UpsertVideos failed: %s", exc.code().name)
            new = len(later) > 0 and rng.random() < new_user_share
            row = (later if new else known).iloc[int(rng.integers(len(later if new else known)))]
            uid = str(row["user_id"])
            try:
                resp = client.recommend(uid, k, profile=_profile(row.to_dict()) if new else None)
            except grpc.RpcError as exc:
                log.warning("Recommend failed: %s", exc.code().name)
                cur["?"].errors += 1
                continue
            arm = resp.experiment_arm
            res.versions.add(resp.model_version)
            cur_versions.add(resp.model_version)
            shown = [v.video_id for v in resp.videos if v.video_id in truth_videos]
            rel = truth.relevant_matrix([uid], video_ids=shown)[0] if shown else []
            events = []
            for vid, ev, value in truth.respond(uid, shown, rng, now=sim_now):
                if ev == "impression":
                    continue
                pos = shown.index(vid)
                wt = float(value or 0) * float(durations.get(vid, 0) or 0) if ev == "watch" else 0
                events.append(events_pb2.Event(
                    event_id=uuid.uuid4().hex, user_id=uid, video_id=vid, type=TYPE_OF[ev],
                    value=float(value or 0), timestamp=time.time(), request_id=resp.request_id,
                    position=pos, experiment_arm=arm, model_version=resp.model_version,
                    watch_time_s=wt))
            if events:
                try:
                    client.log_events(events)
                except grpc.RpcError as exc:
                    log.warning("LogEvents failed: %s", exc.code().name)
            # A new user's requests are hashed to arms one by one (no user id), so the
            # same profile may appear in both arms: the unit is the user within the arm.
            unit = uid if not new else f"new:{uid}"
            for w in (cur[arm], tot[arm], by_user[arm][unit], cur_users[arm][unit]):
                w.requests += 1
                w.shown += len(resp.videos)
                w.relevant += int(np.sum(rel))
                w.new_uploads += sum(v in uploaded_ids for v in shown)
                w.degraded += int(resp.degraded)
                for e in events:
                    w.clicks += e.type == events_pb2.EVENT_TYPE_CLICK
                    w.likes += e.type == events_pb2.EVENT_TYPE_LIKE
                    w.dislikes += e.type == events_pb2.EVENT_TYPE_DISLIKE
                    if e.type == events_pb2.EVENT_TYPE_WATCH:
                        w.watches += 1
                        w.completed += e.value >= COMPLETE
                        w.watch_time_s += e.watch_time_s
            if (step + 1) % window == 0:
                res.windows.append({a: w.row() for a, w in cur.items()})
                res.window_versions.append(sorted(cur_versions))
                res.window_users.append({a: dict(u) for a, u in cur_users.items()})
                cur, cur_versions = defaultdict(Window), set()
                cur_users = defaultdict(lambda: defaultdict(Window))
            if rate > 0:
                time.sleep(max(0.0, 1 / rate - (time.monotonic() - t_step)))
    if any(w.requests for w in cur.values()):
        res.windows.append({a: w.row() for a, w in cur.items()})
        res.window_versions.append(sorted(cur_versions))
        res.window_users.append({a: dict(u) for a, u in cur_users.items()})
    res.totals = dict(tot)
    res.users = {a: dict(u) for a, u in by_user.items() if a != "?"}
    return res


@dataclass
class Readout:
    """Per-arm 95% intervals (per-user bootstrap) and each arm against the baseline."""

    intervals: dict[str, dict[str, Interval]]
    comparisons: list[Comparison]
    users: dict[str, int]


def read_out(res: SimResult, baseline: str = "mf_only", replicates: int = 2000,
             seed: int = 0) -> Readout:
    per = {a: per_user_ratios(u) for a, u in res.users.items()}
    ints, comps = readout(per, baseline, replicates, seed)
    return Readout(ints, comps, {a: len(u) for a, u in res.users.items()})


def _window_interval(users: dict[str, Window], metric: str, seed: int) -> Interval:
    x, y = per_user_ratios(users)[metric]
    return bootstrap(x, y, replicates=400, seed=seed)[0]


def write_report(res: SimResult, out: Path, stats: list[dict[str, Any]] | None = None,
                 baseline: str = "mf_only") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    ro = read_out(res, baseline)
    metrics = ("ctr", "completion_rate", "watch_min_per_request", "true_precision")
    arms = sorted({a for w in res.windows for a in w} - {"?"})
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6))
    for ax, m in zip(axes, metrics, strict=True):
        for j, a in enumerate(arms):
            # Per window, the per-user bootstrap's 95% interval as an error bar; the whole
            # run's interval as a band (what the verdict is read from).
            idx = [i for i, w in enumerate(res.window_users) if a in w]
            ivs = [_window_interval(res.window_users[i][a], m, 7 * i + j) for i in idx]
            xs = np.array([i + 1 for i in idx], dtype=float) + (j - 0.5) * 0.15
            ys = np.array([iv.value for iv in ivs])
            err = np.array([[iv.value - iv.lo for iv in ivs], [iv.hi - iv.value for iv in ivs]])
            line = ax.errorbar(xs, ys, yerr=np.nan_to_num(err), marker="o", ms=3, capsize=2,
                               lw=1, label=a)
            tot = ro.intervals.get(a, {}).get(m)
            if tot is not None and len(xs):
                ax.axhspan(tot.lo, tot.hi, color=line[0].get_color(), alpha=0.15)
        prev: list[str] = []
        for i, vs in enumerate(res.window_versions):
            # One mark where the newest version first serves (a window spanning a swap
            # lists both versions; the next one only the new one).
            if prev and vs and vs[-1] != prev[-1]:
                ax.axvline(i + 0.5, color="grey", ls="--", lw=0.8)
                ax.annotate(f"model {vs[-1]}", (i + 0.6, ax.get_ylim()[1]), fontsize=7,
                            va="top", color="grey")
            prev = vs
        ax.set_title(m.replace("_", " "))
        ax.set_xlabel("window")
        ax.grid(alpha=0.3)
    axes[0].legend(title="arm", fontsize=8)
    fig.suptitle("vidrec simulation: online metrics per window, per experiment arm "
                 "(bars: 95% per-user bootstrap intervals; bands: whole run)", fontsize=10)
    fig.tight_layout()
    png = out / "simulation.png"
    fig.savefig(png, dpi=110)
    plt.close(fig)
    totals = {a: w.row() for a, w in res.totals.items()}
    (out / "metrics.json").write_text(json.dumps(
        {"totals": totals, "windows": res.windows, "window_versions": res.window_versions,
         "intervals": {a: {m: [iv.value, iv.lo, iv.hi] for m, iv in d.items()}
                       for a, d in ro.intervals.items()},
         "comparisons": [{"arm": c.arm, "baseline": c.baseline, "metric": c.metric,
                          "relative": [c.relative.value, c.relative.lo, c.relative.hi],
                          "verdict": c.verdict} for c in ro.comparisons],
         "users": ro.users, "mde": {f"{c.arm} vs {c.baseline} {c.metric}": c.mde
                                     for c in ro.comparisons},
         "server_stats": stats or [],
         "model_versions": sorted(res.versions), "uploaded": res.uploaded}, indent=2))
    lines = ["# vidrec simulation", "", "![metrics over time](simulation.png)", "",
             "## Totals per arm (client side)", "",
             "| arm | requests | CTR | completion | watch min/request | likes/req | "
             "dislikes/req | true precision | new uploads shown |",
             "|---|---|---|---|---|---|---|---|---|"]
    for a, r in sorted(totals.items()):
        lines.append(f"| {a} | {r['requests']:.0f} | {r['ctr']:.3f} | {r['completion_rate']:.3f}"
                     f" | {r['watch_min_per_request']:.2f} | {r['likes_per_request']:.3f} | "
                     f"{r['dislikes_per_request']:.3f} | {r['true_precision']:.3f} | "
                     f"{r['new_upload_share']:.1%} |")
    lines += ["", f"{res.uploaded} videos were uploaded during the run (the data's later/ "
              "videos, each when its upload time came in simulated time)."]
    lines += ["", *readout_lines(ro)]
    if stats:
        lines += ["", "## Server side (Gateway.GetStats, from the event stream)", "",
                  "| model | arm | impressions | CTR | completion | watch h |",
                  "|---|---|---|---|---|---|"]
        for s in stats:
            lines.append(f"| {s['model_version']} | {s['experiment_arm']} | {s['impressions']} |"
                         f" {s['ctr']:.3f} | {s['completion_rate']:.3f} | "
                         f"{s['watch_time_s'] / 3600:.2f} |")
    lines += ["", f"Model versions seen: {', '.join(sorted(res.versions))}", ""]
    (out / "report.md").write_text("\n".join(lines))
    return out / "report.md"


def readout_lines(ro: Readout) -> list[str]:
    """The A/B readout as Markdown: intervals per arm, then each arm against the baseline."""
    lines = ["## A/B readout (95% intervals, users resampled: per-user bootstrap)", "",
             "| arm | users | " + " | ".join(RATIOS) + " |",
             "|---|---|" + "---|" * len(RATIOS)]
    for a, d in sorted(ro.intervals.items()):
        lines.append(f"| {a} | {ro.users.get(a, 0)} | "
                     + " | ".join(d[m].fmt() if m in d else "" for m in RATIOS) + " |")
    if ro.comparisons:
        lines += ["", "| arm vs baseline | metric | relative difference [95%] | verdict | "
                  "detectable at 80% power |", "|---|---|---|---|---|"]
        for c in ro.comparisons:
            lines.append(f"| {c.arm} vs {c.baseline} | {c.metric} | "
                         f"{c.relative.value:+.1%} [{c.relative.lo:+.1%}, "
                         f"{c.relative.hi:+.1%}] | {c.verdict} | ±{c.mde:.1%} |")
    return lines


def server_stats(gateway: str, var: str | Path | None = None) -> list[dict[str, Any]]:
    from google.protobuf.json_format import MessageToDict

    with Client.connect(gateway, var, timeout_s=5.0) as client:
        stats = client.stats()
    return [MessageToDict(s, preserving_proto_field_name=True,
                          always_print_fields_with_no_presence=True) for s in stats]
