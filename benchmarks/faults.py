"""Fault injection against the real processes under open-loop load.

    python -m benchmarks.faults [--rate 50] [--seconds 16] [--out var/bench/faults]

A supervised one-machine stack (embedded Redis and Kafka, every service, the trainer) on a
small synthetic catalog. Each row runs the load generator (Recommend at --rate, open loop)
and an event producer (likes through Gateway.LogEvents, each with its own id and a
row-specific model version, retried on any error like a real client) while one fault
happens from second 4 to second 14. After the row it waits for the trainer to drain and
reports:

  requests, errors, degraded share, p99 of the answers, seconds until an answer is
  personalised again after the fault, and events acknowledged / applied / applied twice
  (applied = the row's like counter in Redis, which the apply script increments once per
  applied event: more than acknowledged means a double, fewer a loss).

Faults: SIGKILL of candidate, ranker, reranker (the supervisor restarts them); SIGSTOP
(10 s) of each of them; SIGSTOP (10 s) of Redis; Redis SIGKILLed and restarted from its
append-only file (the stack is durable, as `make run`'s); the broker stopped (SIGSTOP)
for 20 s; the broker SIGKILLed and restarted (memory storage: it comes back empty); the
trainer SIGKILLed 20 times mid-stream; a publish SIGKILLed midway (then one that
completes); 2x and 3x --capacity for --overload-seconds (goodput, how fast the excess is
refused, and how fast health answers meanwhile).

`--only` picks rows; tests/test_faults.py runs a short version of some rows.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import grpc

from vidrec.security.client import ClientSecurity, connect
from vidrec.stack import Stack
from vidrec.store.artifacts import ArtifactStore
from vidrec.store.features import FeatureStore
from vidrec.store.index import EdgeIndex
from vidrec.v1 import events_pb2, gateway_pb2, gateway_pb2_grpc

FAULT_AT, FAULT_FOR, BROKER_STALL_S = 4.0, 10.0, 20.0
STACK_VAR = "var"  # the stack's directory: its run/stack.json has the key and TLS files


def events_client(addr: str, row: str, users: list[str], videos: list[str], stop: threading.Event,
                  acked: list[str]) -> None:
    """Likes at ~40/s, one per call; a call that fails is retried with the same id until
    acknowledged (at-least-once from the client's side)."""
    with connect(addr, STACK_VAR) as ch:
        stub = gateway_pb2_grpc.GatewayStub(ch)
        i = 0
        while not stop.is_set():
            e = events_pb2.Event(event_id=f"{row}-{i}", user_id=users[i % len(users)],
                                 video_id=videos[(i * 7) % len(videos)],
                                 type=events_pb2.EVENT_TYPE_LIKE, timestamp=time.time(),
                                 model_version=row, experiment_arm="hybrid")
            while True:
                try:
                    stub.LogEvents(gateway_pb2.LogEventsRequest(events=[e]), timeout=2.0)
                    acked.append(e.event_id)
                    break
                except grpc.RpcError:
                    if stop.is_set():
                        return
                    time.sleep(0.2)
            i += 1
            time.sleep(0.025)


def personalised_again(addr: str, user: str, since: float, limit_s: float = 60.0) -> float:
    """Seconds from `since` until a Recommend is answered without a degraded stage."""
    with connect(addr, STACK_VAR) as ch:
        stub = gateway_pb2_grpc.GatewayStub(ch)
        while time.monotonic() - since < limit_s:
            try:
                r = stub.Recommend(gateway_pb2.RecommendRequest(user_id=user, k=10), timeout=2)
                if not r.degraded:
                    return round(max(0.0, time.monotonic() - since), 2)
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    global FAULT_AT, FAULT_FOR, BROKER_STALL_S, STACK_VAR
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=50.0)
    ap.add_argument("--seconds", type=float, default=18.0)
    ap.add_argument("--capacity", type=float, default=250.0,
                    help="req/s this stack answers at most (measured: overload rows offer 2x "
                    "and 3x of it)")
    ap.add_argument("--overload-seconds", type=float, default=30.0)
    ap.add_argument("--trainer-kills", type=int, default=20)
    ap.add_argument("--only", default="", help="comma-separated row names")
    ap.add_argument("--out", default="var/bench/faults")
    ap.add_argument("--fault-at", type=float, default=FAULT_AT, help="seconds into a row")
    ap.add_argument("--fault-for", type=float, default=FAULT_FOR,
                    help="seconds a process stays stopped (SIGSTOP rows)")
    ap.add_argument("--broker-stall", type=float, default=BROKER_STALL_S)
    a = ap.parse_args(argv)
    FAULT_AT, FAULT_FOR, BROKER_STALL_S = a.fault_at, a.fault_for, a.broker_stall
    if threading.current_thread() is threading.main_thread():
        # A SIGTERM (timeout, pkill) must still stop the stack below: its services run in
        # sessions of their own and would outlive this process.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    var = Path(tempfile.mkdtemp(prefix="vidrec-faults-"))
    STACK_VAR = str(var)
    data, model = var / "data", var / "model"
    py = sys.executable
    subprocess.run([py, "-m", "vidrec.cli", "data", "synth", "--out", str(data), "--users",
                    "1000", "--videos", "2000", "--seed", "3"], check=True,
                   capture_output=True)
    subprocess.run([py, "-m", "vidrec.cli", "train", "--data", str(data), "--out", str(model),
                    "--quiet", "--no-tune", "--epochs", "3"], check=True, capture_output=True)
    stack = Stack(var, durable=True, extra_env={"VIDREC_EVENTS_DIR": str(var / "events"),
                                  "VIDREC_DATA_DIR": str(data)})
    rows = []
    watching = threading.Event()
    try:
        from vidrec.models.bundle import ModelBundle
        from vidrec.serving.publish import publish

        stack.start_stores()
        index = EdgeIndex(stack.index_root)
        version = publish(model, ArtifactStore(stack.artifact_root), index,
                          FeatureStore.from_url(stack.redis_url))
        index.close()
        bundle = ModelBundle.load(stack.artifact_root / version)
        users, videos = list(bundle.users)[:500], bundle.video_ids[:1500]
        stack.start_services(trainer=True, timeout_s=300)
        gw = stack.services["gateway"].addr
        store = FeatureStore.from_url(stack.redis_url)

        def supervise() -> None:
            while not watching.is_set():
                stack.supervise()
                time.sleep(0.25)

        threading.Thread(target=supervise, daemon=True).start()

        def pause(pid: int | None, seconds: float | None = None) -> None:
            assert pid is not None
            os.killpg(pid, signal.SIGSTOP)
            time.sleep(FAULT_FOR if seconds is None else seconds)
            os.killpg(pid, signal.SIGCONT)

        def kill_store(server: object) -> None:
            """SIGKILL an embedded store; the supervisor thread restarts it."""
            pid = getattr(server, "pid", None)
            assert pid is not None
            os.killpg(pid, signal.SIGKILL)
            deadline = time.monotonic() + 60
            time.sleep(0.5)
            while not getattr(server, "running", False) and time.monotonic() < deadline:
                time.sleep(0.1)

        publishes: list[str] = []
        health_ms: list[float] = []

        def probe_health() -> None:
            """Under overload: the gateway's health answers (a probe never waits behind
            requests: workers are kept for it). The slowest of 10 checks, 0.5 s apart."""
            from vidrec.serving.healthcheck import check

            worst = 0.0
            for _ in range(10):
                t = time.perf_counter()
                hp = stack.services["gateway"].health_addr  # what an orchestrator probes
                status = check(hp, timeout=5.0, security=ClientSecurity()) if hp else \
                    check(gw, timeout=5.0, security=stack.client_security)
                ms = (time.perf_counter() - t) * 1000
                worst = max(worst, ms if status == "SERVING" else float("inf"))
                time.sleep(0.5)
            health_ms.append(round(worst, 1))

        def kill_publish() -> None:
            """A publish SIGKILLed midway (staged, not switched), then one that completes:
            serving must go on from the old version, and the next publish must work."""
            argv = [py, "-m", "vidrec.cli", "publish", "--model", str(model)]
            before = FeatureStore.from_url(stack.redis_url).serving_version()
            p = subprocess.Popen(argv, env=stack.env(), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, start_new_session=True)
            time.sleep(FAULT_FOR / 5)
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            mid = FeatureStore.from_url(stack.redis_url).serving_version()
            done = subprocess.run(argv, env=stack.env(), capture_output=True, text=True)
            after = FeatureStore.from_url(stack.redis_url).serving_version()
            latest = ArtifactStore(stack.artifact_root).latest()
            publishes.append(f"serving {before} -> killed publish -> {mid} -> publish rc "
                             f"{done.returncode} -> {after} (LATEST {latest})")

        def kill(name: str) -> None:
            stack.services[name].signal(signal.SIGKILL)

        def kill_trainer_often() -> None:
            """SIGKILLs, each once the restarted trainer owns partitions again (mid-batch:
            events arrive at ~40/s, batches every 0.1 s)."""
            for _ in range(a.trainer_kills):
                stack.forget_restarts("trainer")  # deliberate kills, not a crash loop
                kill("trainer")
                deadline = time.monotonic() + 30
                time.sleep(0.3)
                while not stack.services["trainer"].alive():  # the supervisor restarts it
                    if time.monotonic() > deadline:
                        raise RuntimeError("the supervisor did not restart the trainer")
                    time.sleep(0.05)
                stack.wait_trainer(60)
                time.sleep(0.2)

        faults = {
            "kill candidate": lambda: kill("candidate"),
            "kill ranker": lambda: kill("ranker"),
            "kill reranker": lambda: kill("reranker"),
            **{f"stop {n} 10s": (lambda n=n: pause(stack.services[n].proc.pid  # type: ignore[union-attr]
                                                  if stack.services[n].proc else None))
               for n in ("candidate", "ranker", "reranker")},
            "stop redis 10s": lambda: pause(stack.redis.pid if stack.redis else None),
            "restart redis (AOF)": lambda: kill_store(stack.redis),
            "stop broker 20s": lambda: pause(stack.kafka.pid if stack.kafka else None,
                                             BROKER_STALL_S),
            "restart broker": lambda: kill_store(stack.kafka),
            f"kill trainer x{a.trainer_kills}": kill_trainer_often,
            "kill publish": kill_publish,
            "overload 2x": probe_health,
            "overload 3x": probe_health,
        }
        only = {x.strip() for x in a.only.split(",") if x.strip()}
        for name, fault in faults.items():
            if only and name not in only:
                continue
            # A version name of its own per row (the gateway accepts only v<N> names): the
            # row's likes are counted apart from everything else.
            row = f"v9{uuid.uuid4().int % 10**8:08d}"
            rate = a.capacity * (3 if name == "overload 3x" else 2) \
                if name.startswith("overload") else a.rate
            seconds = a.overload_seconds if name.startswith("overload") else a.seconds
            stop = threading.Event()
            acked: list[str] = []
            producer = threading.Thread(target=events_client, daemon=True,
                                        args=(gw, row, users, videos, stop, acked))
            arg = json.dumps({"addr": gw, "rate": rate, "duration_s": seconds,
                              "users": users, "k": 10, "seed": 1, "var": str(var)})
            load = subprocess.Popen([py, "-m", "benchmarks.loadgen", arg],
                                    stdout=subprocess.PIPE, text=True)
            producer.start()
            time.sleep(FAULT_AT)
            try:
                fault()
            except BaseException:
                stop.set()  # the event client must not keep the process alive
                load.kill()
                raise
            fault_end = time.monotonic()
            acked_at_fault_end = len(acked)
            recovery = personalised_again(gw, users[0], fault_end)
            stdout, _ = load.communicate(timeout=seconds * 4 + 120)
            stop.set()
            producer.join(30)
            r = json.loads(stdout.strip().splitlines()[-1])
            applied = -1
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    applied = int(store.stats_counters(row, "hybrid").get("likes", 0))
                except Exception:
                    applied = -1
                if applied >= len(acked):
                    time.sleep(3)  # a late double would show now
                    applied = int(store.stats_counters(row, "hybrid").get("likes", 0))
                    break
                time.sleep(0.5)
            res = {"fault": name, "rate": rate, "requests": r["sent"], "answered": r["ok"],
                   "errors": sum(r["errors"].values()), "error_codes": r["errors"],
                   "degraded_share": round(r["degraded"] / max(r["ok"], 1), 3),
                   "p99_ms": round(r["p99_ms"], 1), "recovery_s": recovery,
                   "events_acked": len(acked),
                   "acked_after_fault": len(acked) - acked_at_fault_end,
                   "events_applied": applied,
                   "lost": max(0, len(acked) - applied), "doubled": max(0, applied - len(acked))}
            if name == "kill publish" and publishes:
                res["publish"] = publishes[-1]
            if name.startswith("overload"):
                res["goodput_rps"] = round(r["ok"] / seconds, 1)
                res["refused_p99_ms"] = round(r["refused_p99_ms"], 1)
                res["health_ms_max"] = health_ms[-1] if health_ms else None
            rows.append(res)
            print(json.dumps(res), flush=True)
            for sp in stack.services.values():  # the next row starts from a healthy stack
                if sp.addr:
                    sp.wait_serving(120)
    finally:
        watching.set()
        stack.stop()
        shutil.rmtree(var, ignore_errors=True)
    (out / "faults.json").write_text(json.dumps(rows, indent=2))
    lines = ["| fault | req/s | requests | errors | degraded | p99 ms | personalised again s "
             "| events acked | applied | lost | doubled |", "|" + "---|" * 11]
    for x in rows:
        lines.append(f"| {x['fault']} | {x['rate']:.0f} | {x['requests']} | {x['errors']} | "
                     f"{x['degraded_share']:.1%} | {x['p99_ms']} | {x['recovery_s']} | "
                     f"{x['events_acked']} | {x['events_applied']} | {x['lost']} | "
                     f"{x['doubled']} |")
    (out / "faults.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
