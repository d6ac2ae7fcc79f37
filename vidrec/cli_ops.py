"""`vidrec publish | rollback | serve | status | stats`: operating the online system.

Settings come from the same VIDREC_* environment variables the services read
(TrainerSettings covers Redis, Kafka, artifact root and index), so a command run next to
a stack talks to that stack.
"""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vidrec.security.stores import read_secret, store_credentials

if TYPE_CHECKING:
    from vidrec.infra.streams import RecordSink

SERVICES = ("gateway", "candidate", "ranker", "reranker", "trainer", "web")


def _ops_settings() -> Any:
    from vidrec.config import TrainerSettings, load_settings

    s = load_settings(TrainerSettings)
    store_credentials(s)  # Kafka clients made from here on use the configured SASL/TLS
    return s


def _producer(bootstrap: str) -> RecordSink | None:
    """The producer that announces a published model; None without Kafka."""
    if not bootstrap:
        return None
    from vidrec.infra.kafka import EventProducer

    return EventProducer(bootstrap)


def cmd_publish(a: argparse.Namespace) -> int:
    from vidrec.serving.publish import publish
    from vidrec.store.artifacts import ArtifactStore
    from vidrec.store.features import FeatureStore
    from vidrec.store.index import CollectionLayout, open_index

    s = _ops_settings()
    index = open_index(s.qdrant_url, s.index_root,
                       read_secret(getattr(s, "qdrant_api_key_file", "")),
                       CollectionLayout.from_settings(s))
    producer = _producer(s.kafka_bootstrap)
    try:
        version = publish(Path(a.model), ArtifactStore(s.artifact_root), index,
                          FeatureStore.from_url(store_credentials(s), s.key_prefix), producer,
                          overwrite_history=a.overwrite_history)
    finally:
        index.close()
        if producer is not None:
            producer.close()
    print(f"published {a.model} as {version}")
    return 0


def cmd_versions(a: argparse.Namespace) -> int:
    """`vidrec versions`: what was served when (the artifact store's HISTORY)."""
    import json
    import time

    from vidrec.store.artifacts import ArtifactStore

    store = ArtifactStore(_ops_settings().artifact_root)
    cur = store.latest()
    last: dict[str, tuple[float, str]] = {}
    for e in store.history():
        last[e.version] = (e.at, e.action)
    rows: list[dict[str, Any]] = [
        {"version": v, "serving": v == cur, "switched_at": last.get(v, (0.0, ""))[0],
         "action": last.get(v, (0.0, ""))[1]} for v in store.published()]
    if a.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["switched_at"])) \
            if r["switched_at"] else "-"
        print(f"{'*' if r['serving'] else ' '} {r['version']:8s} {at}  {r['action']}")
    return 0


def cmd_rollback(a: argparse.Namespace) -> int:
    """Back to the version that was LATEST before this one (or --to a served version)."""
    from vidrec.serving.publish import RollbackRefused, rollback
    from vidrec.store.artifacts import ArtifactStore
    from vidrec.store.index import open_index

    s = _ops_settings()
    try:
        cur, prev = rollback(ArtifactStore(s.artifact_root), lambda: open_index(
            s.qdrant_url, s.index_root, read_secret(getattr(s, "qdrant_api_key_file", ""))),
            getattr(a, "to", "") or "")
    except RollbackRefused as exc:
        print(str(exc), file=sys.stderr)
        return 1
    print(f"rolled back from {cur} to {prev}")
    return 0


def cmd_retrain(a: argparse.Namespace) -> int:
    from vidrec.store.artifacts import ArtifactStore
    from vidrec.store.eventlog import EventLog
    from vidrec.store.features import FeatureStore
    from vidrec.training.retrain import run_retrain

    s = _ops_settings()
    producer = _producer(s.kafka_bootstrap)
    try:
        res = run_retrain(s, EventLog(Path(s.events_dir)), Path(s.events_dir) / "videos.jsonl",
                          ArtifactStore(s.artifact_root),
                          FeatureStore.from_url(store_credentials(s), s.key_prefix), producer,
                          force=a.force)
    finally:
        if producer is not None:
            producer.close()
    gate = (f"serving NDCG@10 {res.serving_ndcg:.4f}, candidate {res.candidate_ndcg:.4f}"
            if res.serving_ndcg is not None and res.candidate_ndcg is not None else "no gate")
    print(f"retrain: {res.reason}; {gate}; published {res.published or '-'} "
          f"in {res.seconds:.1f}s")
    return 0 if res.published or not a.force else 1


def cmd_rebuild(a: argparse.Namespace) -> int:
    from vidrec.models.bundle import ModelBundle
    from vidrec.store.artifacts import ArtifactStore
    from vidrec.store.eventlog import EventLog
    from vidrec.store.features import FeatureStore
    from vidrec.training.rebuild import rebuild

    s = _ops_settings()
    artifacts = ArtifactStore(s.artifact_root)
    latest = artifacts.latest()
    bundle = (ModelBundle.load(artifacts.path(latest))
              if latest and artifacts.loadable(latest) else None)
    if bundle is None:
        print("no loadable published model: videos and trending are not reloaded",
              file=sys.stderr)
    res = rebuild(FeatureStore.from_url(store_credentials(s), s.key_prefix), Path(s.data_dir),
                  EventLog(Path(s.events_dir)), Path(s.events_dir) / "videos.jsonl", bundle)
    print(f"rebuilt {res.users} users from {s.data_dir} and {res.events} logged events "
          f"({res.videos} upserted videos); per-arm counters are not rebuilt")
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    sys.argv = [f"services.{a.name}"]
    runpy.run_module(f"services.{a.name}", run_name="__main__")
    return 0


def cmd_status(a: argparse.Namespace) -> int:
    import json
    import os

    from vidrec.serving.healthcheck import check

    addrs: dict[str, str] = {}
    state = Path(a.var) / "run" / "stack.json"
    if state.exists():
        addrs = json.loads(state.read_text()).get("services", {})
    else:
        # Any deployment: the addresses its gateway is configured with (VIDREC_*_ADDR),
        # and the trainer judged by its heartbeat (Redis settings from the environment).
        for name in ("candidate", "ranker", "reranker"):
            if os.environ.get(f"VIDREC_{name.upper()}_ADDR"):
                addrs[name] = os.environ[f"VIDREC_{name.upper()}_ADDR"]
        if addrs and os.environ.get("VIDREC_REDIS_URL"):
            addrs["trainer"] = ""
    for item in a.addr or []:
        name, _, addr = item.partition("=")
        addrs[name] = addr
    if not addrs:
        print(f"no running stack found ({state} missing); pass --addr name=host:port or "
              "set VIDREC_CANDIDATE_ADDR, VIDREC_RANKER_ADDR, VIDREC_RERANKER_ADDR (the "
              "gateway's settings; the gateway itself with --addr gateway=host:port)",
              file=sys.stderr)
        return 1
    from vidrec.store.artifacts import ArtifactStore

    root = os.environ.get("VIDREC_ARTIFACT_ROOT") if not state.exists() else None
    latest = ArtifactStore(Path(root or Path(a.var) / "artifacts")).latest() or "-"
    stack = json.loads(state.read_text()) if state.exists() else {}
    redis_url, prefix = stack.get("redis", ""), stack.get("key_prefix", "vidrec")
    from vidrec.security.client import ClientSecurity

    # The stack's CA and client certificate: its internal services require one.
    sec = ClientSecurity.from_state(stack) if stack else ClientSecurity.from_env()
    rows = []
    for name, addr in addrs.items():
        if addr and name == "web":  # HTTP: its readiness page (200 while the gateway is)
            from vidrec.serving.healthcheck import http_status

            status = http_status(f"{'https' if sec.ca else 'http'}://{addr}/readyz", sec.ca)
        elif addr:
            status = check(addr, security=sec)
        else:  # the trainer has no port: its heartbeat in Redis tells
            from vidrec.serving.healthcheck import trainer_status

            status = trainer_status(redis_url=redis_url, key_prefix=prefix)
        model = latest if name in ("candidate", "ranker", "gateway") else "-"
        rows.append({"service": name, "address": addr or "-", "health": status,
                     "model": model})
    worst = any(r["health"] != "SERVING" for r in rows)
    if a.json:
        print(json.dumps(rows, indent=2))
        return int(worst)
    print(f"{'service':10s} {'address':22s} {'health':14s} model")
    for r in rows:
        print(f"{r['service']:10s} {r['address']:22s} {r['health']:14s} {r['model']}")
    return int(worst)


def cmd_stats(a: argparse.Namespace) -> int:
    from vidrec.abtest import Interval, compare_intervals
    from vidrec.security.client import connect
    from vidrec.v1 import gateway_pb2, gateway_pb2_grpc

    with connect(a.gateway, a.var) as ch:
        resp = gateway_pb2_grpc.GatewayStub(ch).GetStats(gateway_pb2.GetStatsRequest(),
                                                         timeout=5)
    if a.json:
        import json

        from google.protobuf.json_format import MessageToDict

        print(json.dumps([MessageToDict(r, preserving_proto_field_name=True,
                                        always_print_fields_with_no_presence=True)
                          for r in resp.stats], indent=2))
        return 0
    print(f"{'model':8s} {'arm':12s} {'users':>6s} {'impr':>8s} {'clicks':>7s} "
          f"{'CTR [95%]':>21s} {'watches':>8s} {'completion [95%]':>21s} {'watch h':>8s} "
          f"{'likes':>6s} {'dislikes':>8s}")
    ivs: dict[tuple[str, str], dict[str, Interval]] = {}
    for r in resp.stats:
        ctr = Interval(r.ctr, r.ctr_lo, r.ctr_hi)
        comp = Interval(r.completion_rate, r.completion_rate_lo, r.completion_rate_hi)
        ivs[r.model_version, r.experiment_arm] = {"ctr": ctr, "completion_rate": comp}
        print(f"{r.model_version:8s} {r.experiment_arm:12s} {r.users:6d} {r.impressions:8d} "
              f"{r.clicks:7d} {ctr.fmt():>21s} {r.watches:8d} {comp.fmt():>21s} "
              f"{r.watch_time_s / 3600:8.2f} {r.likes:6d} {r.dislikes:8d}")
    for (version, arm), d in sorted(ivs.items()):
        base = ivs.get((version, a.baseline))
        if arm == a.baseline or base is None:
            continue
        for metric, iv in d.items():
            c = compare_intervals(arm, a.baseline, metric, iv, base[metric])
            print(f"  model {version}: {arm} vs {a.baseline} {metric}: "
                  f"{c.relative.value:+.1%} [{c.relative.lo:+.1%}, {c.relative.hi:+.1%}] -> "
                  f"{c.verdict}")
    print("(95% intervals with users as the unit: delta method over per-user counts)")
    return 0


def cmd_simulate(a: argparse.Namespace) -> int:
    from vidrec.simulate import read_out, server_stats, simulate, write_report

    res = simulate(a.gateway, Path(a.data), a.steps, a.k, a.seed, a.new_users, a.window,
                   a.rate, var=a.var, days=a.days)
    try:
        stats = server_stats(a.gateway, a.var)
    except Exception:
        stats = []
    report = write_report(res, Path(a.out), stats, baseline=a.baseline)
    ro = read_out(res, a.baseline)
    for arm, w in sorted(res.totals.items()):
        r, iv = w.row(), ro.intervals.get(arm, {})
        ci = {m: iv[m].fmt() if m in iv else f"{r[m]:.3f}"
              for m in ("ctr", "true_precision", "completion_rate")}
        print(f"arm {arm:10s} requests {r['requests']:5.0f} users {ro.users.get(arm, 0):5d}  "
              f"CTR {ci['ctr']}  true precision {ci['true_precision']}  completion "
              f"{ci['completion_rate']}  watch {r['watch_min_per_request']:.2f} min/req  "
              f"new uploads {r['new_upload_share']:.1%} of shown")
    print(f"{res.uploaded} videos uploaded during the run ({a.days:g} simulated days)")
    for c in ro.comparisons:
        if c.metric in ("ctr", "true_precision", "completion_rate", "watch_min_per_request"):
            print(f"  {c.arm} vs {c.baseline} {c.metric}: {c.relative.value:+.1%} "
                  f"[{c.relative.lo:+.1%}, {c.relative.hi:+.1%}] -> {c.verdict} "
                  f"(detectable with 80% power: ±{c.mde:.1%})")
    print("(95% intervals: per-user bootstrap)")
    print(f"report: {report} (+ simulation.png)")
    return 0


def _dlq_records(bootstrap: str) -> list[Any]:
    """Every record on the dead-letter topic, read without a consumer group (reading
    commits nothing and moves no one's offsets)."""
    from kafka import TopicPartition

    from vidrec import schema
    from vidrec.infra.kafka import make_consumer

    consumer = make_consumer(bootstrap, None, [], consumer_timeout_ms=2000)
    try:
        parts = consumer.partitions_for_topic(schema.TOPIC_EVENTS_DLQ) or set()
        tps = [TopicPartition(schema.TOPIC_EVENTS_DLQ, p) for p in sorted(parts)]
        if not tps:
            return []
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        out: list[Any] = []
        while any(consumer.position(tp) < end[tp] for tp in tps):
            for recs in consumer.poll(timeout_ms=1000).values():
                out.extend(recs)
        return out
    finally:
        consumer.close()


def cmd_dlq(a: argparse.Namespace) -> int:
    import base64
    import json

    from vidrec import schema
    from vidrec.events import event_problem
    from vidrec.infra.kafka import EventProducer
    from vidrec.v1 import events_pb2

    s = _ops_settings()
    if not s.kafka_bootstrap:
        print("VIDREC_KAFKA_BOOTSTRAP is not set", file=sys.stderr)
        return 2
    letters = []
    for r in _dlq_records(s.kafka_bootstrap):
        try:
            d = json.loads(r.value)
        except ValueError:
            continue
        if a.reason and a.reason not in d.get("reason", ""):
            continue
        letters.append((r, d))
    if a.action == "list":
        print(f"{'offset':>7s}  {'from':24s} {'key':14s} reason")
        for r, d in letters:
            src = f"{d.get('topic')}:{d.get('partition')}@{d.get('offset')}"
            print(f"{r.offset:7d}  {src:24s} {str(d.get('key'))[:14]:14s} {d.get('reason')}")
        print(f"{len(letters)} dead letter(s)")
        return 0
    # replay: events that decode and pass the contract go back to vidrec.events; the
    # trainer applies each once (a replayed id it already applied is a duplicate).
    good, skipped = [], 0
    for _, d in letters:
        e = events_pb2.Event()
        try:
            e.ParseFromString(base64.b64decode(d.get("value_b64", "")))
        except Exception:
            skipped += 1
            continue
        if d.get("topic") != schema.TOPIC_EVENTS or event_problem(e):
            skipped += 1
            continue
        good.append(e)
    if good:
        with EventProducer(s.kafka_bootstrap) as p:
            p.send_events(good)
    print(f"replayed {len(good)} event(s) to {schema.TOPIC_EVENTS}; {skipped} left "
          "(not a valid event)")
    return 0


def cmd_videos_upsert(a: argparse.Namespace) -> int:
    """`vidrec videos upsert FILE.csv`: videos.csv rows through Gateway.UpsertVideos, in
    batches; a refused row is named by file and line."""
    import csv
    import re

    import grpc

    from vidrec.client import Client

    path = Path(a.file)
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "video_id" not in reader.fieldnames:
            print(f"{path}:1: the header has no video_id column", file=sys.stderr)
            return 2
        rows = [(reader.line_num, r) for r in reader]

    def message(line: int, r: dict[str, str]) -> Any:
        from vidrec.v1 import events_pb2

        def num(col: str) -> float:
            raw = (r.get(col) or "").strip()
            try:
                return float(raw) if raw else 0.0
            except ValueError:
                raise ValueError(f"{path}:{line}: column {col}: {raw[:40]!r} is not a "
                                 "number") from None

        return events_pb2.VideoUpserted(
            video_id=(r.get("video_id") or "").strip(), title=r.get("title") or "",
            category=r.get("category") or "", creator_id=r.get("creator_id") or "",
            language=r.get("language") or "",
            tags=[t for t in (r.get("tags") or "").split("|") if t],
            duration_s=num("duration_s"), upload_ts=num("upload_ts"),
            hidden=(r.get("hidden") or "").lower() in ("1", "true"),
            age_restricted=(r.get("age_restricted") or "").lower() in ("1", "true"))

    msgs = [(line, message(line, r)) for line, r in rows]
    sent = 0
    with Client.connect(a.gateway, a.var, timeout_s=30.0) as c:
        for start in range(0, len(msgs), a.batch):
            batch = msgs[start:start + a.batch]
            try:
                sent += c.upsert_videos([m for _, m in batch])
            except grpc.RpcError as exc:
                detail = exc.details() or exc.code().name  # type: ignore[attr-defined]
                m = re.match(r"videos\[(\d+)\]: (.*)", detail)
                where = f"{path}:{batch[int(m.group(1))][0]}" if m else str(path)
                print(f"{where}: {m.group(2) if m else detail} ({sent} videos sent before "
                      "this batch; nothing of this batch was written)", file=sys.stderr)
                return 1
    print(f"upserted {sent} videos from {path}")
    return 0


def cmd_videos_hide(a: argparse.Namespace) -> int:
    from vidrec.client import Client

    with Client.connect(a.gateway, a.var, timeout_s=30.0) as c:
        r = c.hide_videos(a.ids, unhide=a.unhide)
    print(f"{'unhid' if a.unhide else 'hid'} {r.changed} videos"
          + (f"; unknown: {', '.join(r.unknown_video_ids)}" if r.unknown_video_ids else ""))
    return 0 if not r.unknown_video_ids else 1


def register_videos(sub: Any) -> None:
    v = sub.add_parser("videos", help="the live catalog: add, update or hide videos",
                       description="Calls the gateway's catalog API (scope catalog:write). "
                       "Credentials: the local stack's var/run/stack.json, else "
                       "VIDREC_API_KEY and VIDREC_TLS_CA.")
    vs = v.add_subparsers(dest="videos_command", required=True)
    up = vs.add_parser("upsert", help="add or update the videos of a videos.csv file "
                       "(idempotent: sending a file twice changes nothing)")
    up.add_argument("file", help="CSV with videos.csv's columns (video_id, title, category, "
                    "tags as a|b, creator_id, language, duration_s, upload_ts, ...)")
    up.add_argument("--batch", type=int, default=500, help="videos per call")
    up.set_defaults(fn=cmd_videos_upsert)
    hd = vs.add_parser("hide", help="take videos out of every list (or --unhide)")
    hd.add_argument("ids", nargs="+", help="video ids")
    hd.add_argument("--unhide", action="store_true")
    hd.set_defaults(fn=cmd_videos_hide)
    for p in (up, hd):
        p.add_argument("--gateway", default="127.0.0.1:50051")
        p.add_argument("--var", default="var", help="the local stack's directory")


def register(sub: Any) -> None:
    register_keys(sub)
    register_videos(sub)
    p = sub.add_parser("publish", help="make a trained model directory live",
                       description="Copy a model directory into the artifact store as the "
                       "next version, load its video vectors into a new index collection and "
                       "its features into Redis, then switch the alias and LATEST atomically.")
    p.add_argument("--model", required=True)
    p.add_argument("--overwrite-history", action="store_true",
                   help="replace users' Redis history with the training history")
    p.set_defaults(fn=cmd_publish)
    r = sub.add_parser("rollback", help="serve the previous published version again")
    r.add_argument("--to", default="", help="a version served before (see `vidrec "
                   "versions`) instead of the previous one")
    r.set_defaults(fn=cmd_rollback)
    vs = sub.add_parser("versions", help="published versions and when each was switched to")
    vs.add_argument("--json", action="store_true")
    vs.set_defaults(fn=cmd_versions)
    rt = sub.add_parser("retrain", help="retrain on base data + the event log; publish if "
                        "not worse than serving (the trainer also does this periodically)")
    rt.add_argument("--force", action="store_true", help="publish even without enough "
                    "new evidence (the gate still refuses a worse model unless forced)")
    rt.set_defaults(fn=cmd_retrain)
    rb = sub.add_parser(
        "rebuild", help="rebuild users' Redis state from the base data and the event log",
        description="After Redis was lost: every user's history, negatives, feedback and "
        "seen set from the base data directory (VIDREC_DATA_DIR) and the trainer's event log "
        "(VIDREC_EVENTS_DIR), written over what Redis holds; videos, the fresh list and the "
        "trending seed from the serving model. Stop the trainer first, start it after.")
    rb.set_defaults(fn=cmd_rebuild)
    s = sub.add_parser("serve", help="run one service in the foreground")
    s.add_argument("name", choices=SERVICES)
    s.set_defaults(fn=cmd_serve)
    dq = sub.add_parser(
        "dlq", help="list or replay the dead-letter topic",
        description="Records the trainer could not apply go to vidrec.events.dlq with the "
        "reason. `list` prints them; `replay` sends those that are valid events back to "
        "vidrec.events (e.g. after the unknown video was upserted); the trainer applies each "
        "event id once. Reads VIDREC_KAFKA_BOOTSTRAP.")
    dq.add_argument("action", choices=("list", "replay"))
    dq.add_argument("--reason", default="", help="only letters whose reason contains this")
    dq.set_defaults(fn=cmd_dlq)
    st = sub.add_parser("status", help="health, address and model version of every service")
    st.add_argument("--var", default="var", help="the directory `make run` uses")
    st.add_argument("--addr", action="append", help="name=host:port (repeatable)")
    st.add_argument("--json", action="store_true")
    st.set_defaults(fn=cmd_status)
    sa = sub.add_parser("stats", help="online metrics per model version and experiment arm")
    sa.add_argument("--gateway", default="127.0.0.1:50051")
    sa.add_argument("--baseline", default="mf_only",
                    help="arm the others are compared with, within each model version")
    sa.add_argument("--var", default="var", help="the stack's directory: its "
                    "run/stack.json has the API key and TLS files")
    sa.add_argument("--json", action="store_true")
    sa.set_defaults(fn=cmd_stats)
    sm = sub.add_parser(
        "simulate", help="synthetic users with known tastes use the live system",
        description="Simulated users (ground truth of a `vidrec data synth` directory) ask the "
        "gateway for recommendations and react to them through the real event path; writes "
        "a Markdown report and a PNG of CTR, completion, watch time and true precision over "
        "time per experiment arm.")
    sm.add_argument("--gateway", default="127.0.0.1:50051")
    sm.add_argument("--var", default="var", help="the stack's directory: its "
                    "run/stack.json has the API key and TLS files")
    sm.add_argument("--data", default="var/data/demo", help="synthetic data directory")
    # Power: on the demo stack (2 arms, ~1,100 users each) the CTR difference detectable
    # with 80% power at 5% two-sided (per-user bootstrap standard error x 2.8) was
    # 5.6-5.9% relative at 10,000 requests and 5.1% at 16,000: slower than 1/sqrt(requests),
    # since the same users return and their differences in taste do not average out.
    sm.add_argument("--steps", type=int, default=20_000,
                    help="recommendation requests (default: enough to tell two arms whose "
                         "CTR differs by 5%% relative, at 80%% power)")
    sm.add_argument("--k", type=int, default=10)
    sm.add_argument("--seed", type=int, default=0)
    sm.add_argument("--new-users", type=float, default=0.2,
                    help="share of requests from new users (profile only)")
    sm.add_argument("--days", type=float, default=30.0,
                    help="simulated days the run spans after the data's window: the data's "
                         "later/ videos are uploaded as their time comes and users react at "
                         "the simulated time (0: a frozen catalogue)")
    sm.add_argument("--window", type=int, default=1000, help="requests per plotted point")
    sm.add_argument("--rate", type=float, default=0.0, help="requests/s (0 = as fast as "
                    "possible)")
    sm.add_argument("--baseline", default="mf_only",
                    help="arm the others are compared with (verdict better / worse / not "
                         "distinguishable at 95%%)")
    sm.add_argument("--out", default="var/simulation")
    sm.set_defaults(fn=cmd_simulate)


def cmd_keys(a: argparse.Namespace) -> int:
    """`vidrec keys`: API keys for the gateway (hashed at rest) and user tokens."""
    from vidrec.security import tokens
    from vidrec.security.keys import KeyFile

    keys = KeyFile(a.file)
    if a.action == "create":
        try:
            rec, plain = keys.create(a.name, [s for x in a.scopes for s in x.split(",") if s])
        except ValueError as exc:
            print(f"keys: {exc}", file=sys.stderr)
            return 2
        print(plain)
        print(f"# key {rec.id} ({rec.name}, scopes {' '.join(rec.scopes)}): shown once, "
              f"stored only as a hash in {keys.path}", file=sys.stderr)
    elif a.action == "list":
        print(f"{'id':14s} {'name':20s} {'scopes':40s} state")
        for k in keys.all():
            print(f"{k.id:14s} {k.name:20s} {' '.join(k.scopes):40s} "
                  f"{'revoked' if k.revoked else 'active'}")
    elif a.action == "revoke":
        gone = keys.revoke(a.key)
        if not gone:
            print(f"keys: no active key {a.key!r}", file=sys.stderr)
            return 1
        print(f"revoked {', '.join(k.id for k in gone)} (a running gateway stops accepting it "
              "within a second)")
    else:  # token
        secret = Path(a.secret_file).read_bytes().strip()
        print(tokens.mint(secret, a.user, a.ttl))
    return 0


def cmd_secrets(a: argparse.Namespace) -> int:
    """`vidrec secrets init`: everything a deployment needs to be secure, made once."""
    import os
    import secrets as sec

    from vidrec.security.keys import KeyFile
    from vidrec.security.tls import ensure_local_pki

    root = Path(a.dir)
    root.mkdir(parents=True, exist_ok=True)
    hosts = tuple(h for h in a.hosts.split(",") if h)
    pki = ensure_local_pki(root / "tls", hosts=hosts)

    def once(name: str, value: str) -> bool:
        path = root / name
        if path.exists():
            return False
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        with os.fdopen(fd, "w") as f:
            f.write(value)
        return True

    for name in ("redis.password", "qdrant.key", "token.secret"):
        once(name, sec.token_urlsafe(32))
    keys = KeyFile(root / "api_keys.json")
    if not (root / "admin.key").exists():
        _, plain = keys.create(f"admin-{sec.token_hex(3)}", ["admin"])
        once("admin.key", plain)
    for p in root.rglob("*"):  # the services run as another user: group-readable
        if p.is_file():
            p.chmod(0o640 if p.suffix in ("", ".key", ".secret", ".password", ".json")
                    else 0o644)
    print(f"secrets in {root}: CA {pki.ca}, admin key in {root / 'admin.key'}")
    return 0


def cmd_topics(a: argparse.Namespace) -> int:
    """`vidrec topics ensure`: the one place topics and partition counts come from."""
    from vidrec.infra.kafka import ALL_TOPICS, ensure_topics

    s = _ops_settings()
    if not s.kafka_bootstrap:
        print("topics: VIDREC_KAFKA_BOOTSTRAP is empty", file=sys.stderr)
        return 2
    created = ensure_topics(s.kafka_bootstrap, ALL_TOPICS, timeout_s=a.timeout)
    for name, parts in ALL_TOPICS.items():
        print(f"{name:20s} {parts} partition(s){'  (created)' if name in created else ''}")
    return 0


def register_keys(sub: Any) -> None:
    tp = sub.add_parser("topics", help="create vidrec's Kafka topics (idempotent)",
                        description="Create every topic vidrec uses with its partition count "
                        "(vidrec/infra/kafka.py ALL_TOPICS); existing topics are left alone.")
    tps = tp.add_subparsers(dest="action", required=True)
    te = tps.add_parser("ensure")
    te.add_argument("--timeout", type=float, default=60.0)
    tp.set_defaults(fn=cmd_topics)
    sc = sub.add_parser("secrets", help="create a deployment's CA, certificates, admin key, "
                        "token secret and store passwords (once)",
                        description="Writes, only where missing: tls/ (CA, server certificate "
                        "for localhost, 127.0.0.1 and --hosts; client certificate), "
                        "api_keys.json with an admin key (the key itself in admin.key), "
                        "token.secret, redis.password, qdrant.key. docker-compose runs it "
                        "first; for Kubernetes, load the directory into a Secret.")
    scs = sc.add_subparsers(dest="action", required=True)
    si = scs.add_parser("init")
    si.add_argument("--dir", default="var/secrets")
    si.add_argument("--hosts", default="candidate,ranker,reranker,gateway,web",
                    help="comma-separated service names the server certificate must name")
    sc.set_defaults(fn=cmd_secrets)
    k = sub.add_parser("keys", help="API keys for the gateway, and user tokens",
                       description="Manage the gateway's API keys (stored hashed in a JSON "
                       "file; the key itself is printed once) and mint user-bound tokens. "
                       "make run keeps its files under var/run/.")
    k.add_argument("--file", default="var/run/api_keys.json", help="the key file "
                   "(VIDREC_API_KEYS_FILE of the gateway)")
    ks = k.add_subparsers(dest="action", required=True)
    c = ks.add_parser("create", help="create a key; prints it once")
    c.add_argument("--name", required=True)
    c.add_argument("--scopes", nargs="+", required=True,
                   help="recommend, events:write, stats:read, catalog:write, admin")
    ks.add_parser("list", help="ids, names, scopes, state (never the keys)")
    r = ks.add_parser("revoke", help="revoke a key by id or name")
    r.add_argument("key")
    t = ks.add_parser("token", help="mint a user-bound token (JWT) for one user")
    t.add_argument("--user", required=True)
    t.add_argument("--ttl", type=float, default=900.0, help="seconds (max 86400)")
    t.add_argument("--secret-file", default="var/run/token.secret",
                   help="VIDREC_TOKEN_SECRET_FILE of the gateway")
    k.set_defaults(fn=cmd_keys)
