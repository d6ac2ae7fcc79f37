"""`make run`: the whole system on this machine, from nothing to recommendations.

1. demo data from the synthetic generator   (var/data/demo, reused when present)
2. train                                     (var/models/initial, reused when present)
3. embedded Redis + Kafka (Tansu), publish the model (or reload the published one)
4. candidate, ranker, reranker, gateway, web (HTTP/JSON + console), trainer as child
   processes (logs in var/logs/)
5. sample recommendations, with reasons, for a known user and for a new user
Then it serves until Ctrl-C, which stops every process it started.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path

from vidrec.logs import setup_logging
from vidrec.security.client import ClientSecurity

log = logging.getLogger("vidrec.run")

# Later videos (uploaded after the window; `vidrec simulate` uploads them as simulated time
# passes) at the window's own pace: half of the 3,000 videos arrive during its 180 days,
# 8.3 a day, so 250 over the 30 later days.
DEMO = {"users": 2000, "videos": 3000, "seed": 7, "interactions_per_user": 150.0,
        "new_users": 200, "new_videos": 250}


def prepare(var: Path) -> tuple[Path, Path]:
    from vidrec.data.dataset import load_dataset
    from vidrec.data.synth import generate
    from vidrec.training.tune import train_tuned

    data, model = var / "data" / "demo", var / "models" / "initial"
    if not (data / "interactions.csv").exists():
        print(f"[1/4] generating demo data into {data} ...", flush=True)
        generate(data, **DEMO)  # type: ignore[arg-type]
    else:
        print(f"[1/4] demo data: reusing {data}", flush=True)
    if not (model / "manifest.json").exists():
        print(f"[2/4] training into {model} ...", flush=True)
        t0 = time.perf_counter()
        train_tuned(load_dataset(data)).save(model)
        print(f"      trained in {time.perf_counter() - t0:.1f}s", flush=True)
    else:
        print(f"[2/4] model: reusing {model}", flush=True)
    return data, model


def publish_or_reload(stack: object, model: Path) -> str:
    from vidrec.models.bundle import ModelBundle
    from vidrec.serving.publish import load_features, publish
    from vidrec.stack import Stack
    from vidrec.store.artifacts import ArtifactStore
    from vidrec.store.features import FeatureStore
    from vidrec.store.index import EdgeIndex

    assert isinstance(stack, Stack)
    artifacts = ArtifactStore(stack.artifact_root)
    store = FeatureStore.from_url(stack.redis_url)
    latest = artifacts.latest()
    if latest and artifacts.loadable(latest) and (stack.index_root / f"videos_{latest}").exists():
        # Restarted: Redis came back from its append-only file (var/redis) with every
        # user's live state, which the reload keeps; a Redis that lost it (var/redis
        # removed) gets the training state. The index is reused as it is.
        load_features(store, ModelBundle.load(artifacts.path(latest)), overwrite_history=False)
        store.set_serving_version(latest)
        return latest
    index = EdgeIndex(stack.index_root)
    try:
        return publish(model, artifacts, index, store)
    finally:
        index.close()


def show(addr: str, data: Path, security: ClientSecurity) -> None:
    from vidrec.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

    with security.channel(addr) as ch:
        stub = gateway_pb2_grpc.GatewayStub(ch)
        known = stub.Recommend(gateway_pb2.RecommendRequest(user_id="u00001", k=8), timeout=5)
        new = stub.Recommend(gateway_pb2.RecommendRequest(
            user_id="", k=8, profile=common_pb2.UserProfile(age=24, country="IN",
                                                            language="hi", gender="F")),
            timeout=5)
    import pandas as pd

    titles = pd.read_csv(data / "videos.csv", dtype=str, keep_default_na=False).set_index(
        "video_id")
    for label, resp in (("known user u00001", known),
                        ("new user (age 24, IN, hi), profile only", new)):
        print(f"\n  {label}: model {resp.model_version}, arm {resp.experiment_arm}"
              + (f", DEGRADED {list(resp.degraded_stages)}" if resp.degraded else ""))
        for i, v in enumerate(resp.videos, 1):
            t = titles.loc[v.video_id] if v.video_id in titles.index else None
            desc = f"{t['title'][:38]:38s} [{t['category']}]" if t is not None else ""
            print(f"   {i}. {v.video_id} {desc}  - {v.reason}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--var", default="var", help="working directory for data, models, logs")
    ap.add_argument("--gateway-port", type=int, default=50051)
    ap.add_argument("--http-port", type=int, default=8080,
                    help="the HTTP/JSON front door and the operator console")
    ap.add_argument("--no-wait", action="store_true", help="stop after the sample")
    a = ap.parse_args(argv)
    setup_logging("run", "WARNING")
    var = Path(a.var).resolve()
    data, model = prepare(var)

    from vidrec.infra.embedded import free_port
    from vidrec.stack import Stack

    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # Two experiment arms so `vidrec simulate` shows an online comparison: the full hybrid
    # funnel vs MF-only candidates.
    stack = Stack(var, durable=True, extra_env={"VIDREC_ARMS": "hybrid:1,mf_only:1",
                                  "VIDREC_RETRAIN_EVERY_EVENTS": "50000",
                                  "VIDREC_DATA_DIR": str(data),
                                  "VIDREC_EVENTS_DIR": str(var / "events")})
    try:
        print("[3/4] starting Redis and Kafka (embedded), publishing the model ...", flush=True)
        stack.start_stores()
        version = publish_or_reload(stack, model)
        print(f"      serving model {version}", flush=True)
        print("[4/4] starting candidate, ranker, reranker, gateway, web, trainer ...", flush=True)
        port = a.gateway_port
        from vidrec.infra.embedded import _port_open

        if _port_open(port):
            port = free_port()
        http_port = a.http_port if not _port_open(a.http_port) else free_port()
        stack.start_services(ports={"gateway": port, "web": http_port},
                             trainer=_has_trainer())
        gw = stack.services["gateway"].addr
        sec = stack.client_security
        show(gw, data, sec)
        print(f"\nvidrec is up. gateway listening on {gw}  (gRPC over TLS, package vidrec.v1)")
        print(f"  admin API key and TLS files: {stack.run_dir}/stack.json (keep it private)")
        print(f"  call it: grpcurl -cacert {sec.ca} -H \"authorization: Bearer $(cat "
              f"{stack.run_dir}/admin.key)\" -import-path protos -proto "
              f"vidrec/v1/gateway.proto -d '{{\"user_id\":\"u00001\",\"k\":5}}' {gw} "
              "vidrec.v1.Gateway/Recommend")
        print(f"  HTTP/JSON: {stack.http_url}/v1/recommend  (OpenAPI: {stack.http_url}"
              f"/openapi.json), e.g. curl --cacert {sec.ca} -H \"authorization: Bearer $(cat "
              f"{stack.run_dir}/admin.key)\" -d '{{\"user_id\":\"u00001\",\"k\":5}}' "
              f"{stack.http_url}/v1/recommend")
        print(f"  operator console: {stack.http_url}/console/  (sign in with the key in "
              f"{stack.run_dir}/admin.key; your browser will not know the local CA "
              f"{sec.ca})")
        print(f"  more keys: .venv/bin/vidrec keys --file {stack.run_dir}/api_keys.json "
              "create --name NAME --scopes recommend events:write")
        print(f"  logs: {stack.log_dir}/   status: .venv/bin/vidrec status --var {var}")
        print(f"  simulate users: .venv/bin/vidrec simulate --gateway {gw} --data {data} "
              f"--var {var}")
        print("  Ctrl-C stops everything.", flush=True)
        while not stop.is_set() and not a.no_wait:
            for name in stack.supervise():
                # Services and the embedded Redis/Kafka alike: one crash never takes the
                # stack (and the state it holds) down.
                print(f"{name} exited and was restarted; see {stack.log_dir}/",
                      file=sys.stderr, flush=True)
            stop.wait(1.0)
    finally:
        print("\nstopping ...", flush=True)
        stack.stop()
        print("stopped.", flush=True)
    return 0


def _has_trainer() -> bool:
    return Path(__file__).resolve().parent.parent.joinpath("services", "trainer",
                                                           "__main__.py").exists()


if __name__ == "__main__":
    sys.exit(main())
