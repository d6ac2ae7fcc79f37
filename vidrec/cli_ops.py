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
from typing import Any

SERVICES = ("gateway", "candidate", "ranker", "reranker", "trainer")


def _ops_settings() -> Any:
    from vidrec.config import TrainerSettings, load_settings

    return load_settings(TrainerSettings)


def _producer(bootstrap: str) -> Any:
    if not bootstrap:
        return None
    from vidrec.infra.kafka import make_producer

    return make_producer(bootstrap)


def cmd_publish(a: argparse.Namespace) -> int:
    from vidrec.serving.publish import publish
    from vidrec.store.artifacts import ArtifactStore
    from vidrec.store.features import FeatureStore
    from vidrec.store.index import open_index

    s = _ops_settings()
    index = open_index(s.qdrant_url, s.index_root)
    producer = _producer(s.kafka_bootstrap)
    try:
        version = publish(Path(a.model), ArtifactStore(s.artifact_root), index,
                          FeatureStore.from_url(s.redis_url, s.key_prefix), producer,
                          overwrite_history=a.overwrite_history)
    finally:
        index.close()
        if producer is not None:
            producer.close()
    print(f"published {a.model} as {version}")
    return 0


def cmd_rollback(a: argparse.Namespace) -> int:
    from vidrec.serving.publish import collection_name
    from vidrec.store.artifacts import ArtifactStore
    from vidrec.store.index import open_index

    s = _ops_settings()
    store = ArtifactStore(s.artifact_root)
    cur, prev = store.latest(), store.previous()
    if prev is None:
        print(f"nothing to roll back to (serving {cur}, no older version kept)", file=sys.stderr)
        return 1
    index = open_index(s.qdrant_url, s.index_root)
    try:
        index.set_alias(collection_name(prev))
    finally:
        index.close()
    store.set_latest(prev)
    print(f"rolled back from {cur} to {prev}")
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    sys.argv = [f"services.{a.name}"]
    runpy.run_module(f"services.{a.name}", run_name="__main__")
    return 0


def cmd_status(a: argparse.Namespace) -> int:
    import json

    from vidrec.serving.healthcheck import check

    addrs: dict[str, str] = {}
    state = Path(a.var) / "run" / "stack.json"
    if state.exists():
        addrs = json.loads(state.read_text()).get("services", {})
    for item in a.addr or []:
        name, _, addr = item.partition("=")
        addrs[name] = addr
    if not addrs:
        print(f"no running stack found ({state} missing); pass --addr name=host:port",
              file=sys.stderr)
        return 1
    from vidrec.store.artifacts import ArtifactStore

    latest = ArtifactStore(Path(a.var) / "artifacts").latest() or "-"
    print(f"{'service':10s} {'address':22s} {'health':14s} model")
    worst = 0
    for name, addr in addrs.items():
        status = check(addr) if addr else "n/a"
        worst |= status not in ("SERVING", "n/a")
        model = latest if name in ("candidate", "ranker", "gateway") else "-"
        print(f"{name:10s} {addr or '-':22s} {status:14s} {model}")
    return int(worst)


def cmd_stats(a: argparse.Namespace) -> int:
    import grpc

    from vidrec.v1 import gateway_pb2, gateway_pb2_grpc

    with grpc.insecure_channel(a.gateway) as ch:
        resp = gateway_pb2_grpc.GatewayStub(ch).GetStats(gateway_pb2.GetStatsRequest(),
                                                         timeout=5)
    print(f"{'model':8s} {'arm':12s} {'impr':>8s} {'clicks':>7s} {'CTR':>6s} {'watches':>8s}"
          f" {'complete':>9s} {'watch h':>8s} {'likes':>6s} {'dislikes':>8s}")
    for r in resp.stats:
        print(f"{r.model_version:8s} {r.experiment_arm:12s} {r.impressions:8d} {r.clicks:7d} "
              f"{r.ctr:6.3f} {r.watches:8d} {r.completion_rate:9.3f} "
              f"{r.watch_time_s / 3600:8.2f} {r.likes:6d} {r.dislikes:8d}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("publish", help="make a trained model directory live",
                       description="Copy a model directory into the artifact store as the "
                       "next version, load its video vectors into a new index collection and "
                       "its features into Redis, then switch the alias and LATEST atomically.")
    p.add_argument("--model", required=True)
    p.add_argument("--data", help="data directory the model was trained on (optional: the "
                   "model directory carries its catalog and users)")
    p.add_argument("--overwrite-history", action="store_true",
                   help="replace users' Redis history with the training history")
    p.set_defaults(fn=cmd_publish)
    r = sub.add_parser("rollback", help="serve the previous published version again")
    r.set_defaults(fn=cmd_rollback)
    s = sub.add_parser("serve", help="run one service in the foreground")
    s.add_argument("name", choices=SERVICES)
    s.set_defaults(fn=cmd_serve)
    st = sub.add_parser("status", help="health, address and model version of every service")
    st.add_argument("--var", default="var", help="the directory `make run` uses")
    st.add_argument("--addr", action="append", help="name=host:port (repeatable)")
    st.set_defaults(fn=cmd_status)
    sa = sub.add_parser("stats", help="online metrics per model version and experiment arm")
    sa.add_argument("--gateway", default="127.0.0.1:50051")
    sa.set_defaults(fn=cmd_stats)
