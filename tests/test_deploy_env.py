"""docker-compose.yml, run as written: every vidrec process started with exactly the
environment compose gives it, with only what this machine cannot have mapped (service host
names -> 127.0.0.1 and free ports, /data and /secrets -> temp dirs, the Qdrant server ->
the embedded engine: no server here). The secrets come from the same `vidrec secrets init`
command compose's secrets-init runs; the topics from kafka-init's command; each process's
health from its compose healthcheck command. Then an event through the gateway must reach
the trainer. A setting that only works on a developer's machine fails here."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from vidrec.infra.embedded import KafkaBroker, RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("candidate", "ranker", "reranker", "gateway", "web", "trainer")
PORTS = {"candidate": 50052, "ranker": 50053, "reranker": 50054, "gateway": 50051,
         "web": 8080}


def _compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]


def _argv(svc: dict[str, Any]) -> list[str]:
    return [str(x) for x in svc["command"]]


@contextmanager
def _started(cmds: dict[str, tuple[list[str], dict[str, str]]], cwd: Path,
             logs: Path) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """Each (argv, env) as a process of its own, logging to logs/<name>.log; all stopped
    (SIGTERM, then SIGKILL) on exit."""
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, (argv, env) in cmds.items():
            procs[name] = subprocess.Popen(
                argv, env=env, cwd=cwd, stdout=(logs / f"{name}.log").open("wb"),
                stderr=subprocess.STDOUT, start_new_session=True)
        yield procs
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        for p in procs.values():
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()


def _wait_healthy(proc: subprocess.Popen[bytes], log: Path, probe: Callable[[], bool],
                  timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while not probe():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, (log.name, log.read_text()[-1500:])
        time.sleep(1)


def _like_reaches_trainer(sec: Any, gateway: str, redis_url: str, user: str,
                          trainer_log: Path) -> None:
    """A like sent through the gateway with `sec` lands in the user's history in Redis."""
    from vidrec.store.features import FeatureStore
    from vidrec.v1 import events_pb2, gateway_pb2, gateway_pb2_grpc

    store = FeatureStore.from_url(redis_url)
    video = store.popular_list(1)[0]
    with sec.channel(gateway) as ch:
        stub = gateway_pb2_grpc.GatewayStub(ch)
        assert stub.Recommend(gateway_pb2.RecommendRequest(user_id=user, k=5),
                              timeout=10).videos
        stub.LogEvents(gateway_pb2.LogEventsRequest(events=[events_pb2.Event(
            event_id=f"{user}-1", user_id=user, video_id=video,
            type=events_pb2.EVENT_TYPE_LIKE, timestamp=time.time())]), timeout=10)
    deadline = time.monotonic() + 60
    while video not in store.user(user).history:
        assert time.monotonic() < deadline, trainer_log.read_text()[-3000:]
        time.sleep(0.2)


@pytest.mark.timeout(600)
def test_compose_services_start_with_their_own_environment(small_model: Path,
                                                           tmp_path: Path) -> None:
    services = _compose()
    data, secrets, app = tmp_path / "data", tmp_path / "secrets", tmp_path / "app"
    for d in (data, secrets, app):
        d.mkdir()
    py = sys.executable
    base = {k: v for k, v in os.environ.items() if not k.startswith("VIDREC_")}
    base["PYTHONPATH"] = str(ROOT)
    # secrets-init, as compose runs it (paths mapped).
    init = _argv(services["secrets-init"])
    init[init.index("/secrets")] = str(secrets)
    subprocess.run([py, *init], env=base, cwd=app, check=True, capture_output=True)
    password = (secrets / "redis.password").read_text().strip()
    ports = {name: free_port() for name in PORTS}
    metrics_ports = {name: free_port() for name in SERVICES}
    with RedisServer(password=password) as redis_srv, KafkaBroker() as kafka:
        def env_of(name: str) -> dict[str, str]:
            raw = {str(k): str(v) for k, v in services[name].get("environment", {}).items()}
            raw.pop("VIDREC_QDRANT_URL", None)  # no Qdrant server here: the embedded engine
            out = dict(base)
            for k, v in raw.items():
                v = v.replace("redis://redis:6379", f"redis://127.0.0.1:{redis_srv.port}")
                v = v.replace("kafka:9092", kafka.bootstrap)
                v = re.sub(r"^/data", str(data), v)
                v = re.sub(r"^/secrets", str(secrets), v)
                if k == "VIDREC_METRICS_ADDR":
                    v = f"127.0.0.1:{metrics_ports.get(name, free_port())}"
                for peer, port in PORTS.items():
                    v = v.replace(f"{peer}:{port}", f"127.0.0.1:{ports[peer]}")
                    v = v.replace(f"0.0.0.0:{port}", f"127.0.0.1:{ports[peer]}")
                out[k] = v
            return out

        subprocess.run([py, *_argv(services["kafka-init"])], env=env_of("kafka-init"),
                       cwd=app, check=True, capture_output=True, timeout=120)
        # The bootstrap's publish step with its own environment (training is the demo's).
        pub = subprocess.run([py, "-m", "vidrec.cli", "publish", "--model", str(small_model)],
                             env=env_of("bootstrap"), cwd=app, capture_output=True, text=True,
                             timeout=300)
        assert pub.returncode == 0, pub.stderr[-2000:]
        cmds = {name: ([py, *_argv(services[name])], env_of(name)) for name in SERVICES}
        with _started(cmds, app, tmp_path) as procs:
            for name in SERVICES:
                test = [str(x) for x in services[name]["healthcheck"]["test"]][1:]
                test[0] = py  # the image's python is this venv's
                test = [t.replace(f"127.0.0.1:{PORTS.get(name, 0)}",
                                  f"127.0.0.1:{ports.get(name, 0)}") for t in test]
                _wait_healthy(procs[name], tmp_path / f"{name}.log",
                              lambda t=test, n=name: subprocess.run(  # type: ignore[misc]
                                  t, env=env_of(n), cwd=app,
                                  capture_output=True).returncode == 0)
            # An event through the gateway, with the admin key secrets-init made, reaches the
            # trainer's state in Redis.
            from vidrec.security.client import ClientSecurity

            sec = ClientSecurity(str(secrets / "tls" / "ca.pem"),
                                 bearer=(secrets / "admin.key").read_text())
            _like_reaches_trainer(sec, f"127.0.0.1:{ports['gateway']}",
                                  f"redis://:{password}@127.0.0.1:{redis_srv.port}/0",
                                  "env-test", tmp_path / "trainer.log")
            # The event log is where compose's volume is: retrain and rebuild read it there.
            assert any((data / "events").iterdir())
            # And each process serves the metrics compose's Prometheus scrapes.
            import urllib.request

            for name in SERVICES:
                url = f"http://127.0.0.1:{metrics_ports[name]}/metrics"
                with urllib.request.urlopen(url, timeout=5) as r:
                    assert b"vidrec_" in r.read(), name


def _k8s_envs() -> dict[str, tuple[list[str], dict[str, str]]]:
    """Each Deployment's (args, environment) as deploy/base renders it: the ConfigMap
    under the container's own env."""
    docs = [d for p in sorted((ROOT / "deploy" / "base").glob("*.yaml"))
            if p.name != "kustomization.yaml" for d in yaml.safe_load_all(p.read_text()) if d]
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    out = {}
    for d in docs:
        if d["kind"] != "Deployment":
            continue
        c = d["spec"]["template"]["spec"]["containers"][0]
        env = {str(k): str(v) for k, v in config.items()}
        env.update({e["name"]: str(e.get("value", "")) for e in c.get("env", [])})
        out[d["metadata"]["name"]] = ([str(a) for a in c["args"]], env)
    return out


@pytest.mark.timeout(600)
def test_k8s_deployments_start_with_their_own_environment(small_model: Path,
                                                          tmp_path: Path) -> None:
    """deploy/base's Deployments, run with their rendered environment (ConfigMap + env),
    the Secret's files flattened into /secrets as `kubectl create secret --from-file` does,
    hosts and volumes mapped: every gRPC service answers its probe port (plaintext health),
    the trainer passes its exec probe, and an event reaches the trainer."""
    from vidrec.security.client import ClientSecurity
    from vidrec.serving.healthcheck import check, http_status

    deployments = _k8s_envs()
    assert set(deployments) == set(SERVICES)
    data, made, secrets, app = (tmp_path / x for x in ("data", "made", "secrets", "app"))
    for d in (data, secrets, app):
        d.mkdir()
    py = sys.executable
    base = {k: v for k, v in os.environ.items() if not k.startswith("VIDREC_")}
    base["PYTHONPATH"] = str(ROOT)
    subprocess.run([py, "-m", "vidrec.cli", "secrets", "init", "--dir", str(made), "--hosts",
                    "candidate,ranker,reranker,gateway"], env=base, check=True,
                   capture_output=True)
    for f in [*made.glob("*"), *(made / "tls").glob("*")]:  # --from-file=secrets/ and tls/
        if f.is_file():
            (secrets / f.name).write_bytes(f.read_bytes())
    password = (secrets / "redis.password").read_text().strip()
    grpc_ports = {name: free_port() for name in PORTS}
    health_ports = {name: free_port() for name in PORTS}
    with RedisServer(password=password) as redis_srv, KafkaBroker() as kafka:
        def env_of(name: str) -> dict[str, str]:
            out = dict(base)
            for k, v in deployments[name][1].items():
                if k == "VIDREC_QDRANT_URL":
                    continue  # no Qdrant server here: the embedded engine
                v = re.sub(r"redis://[^/]+:6379", f"redis://127.0.0.1:{redis_srv.port}", v)
                v = re.sub(r"^[\w.-]+:9092$", kafka.bootstrap, v)
                v = re.sub(r"^/data", str(data), v)
                v = re.sub(r"^/secrets", str(secrets), v)
                if k == "VIDREC_METRICS_ADDR":
                    v = f"127.0.0.1:{free_port()}"
                if k == "VIDREC_HEALTH_ADDR":
                    v = f"127.0.0.1:{health_ports[name]}"
                for peer, port in PORTS.items():
                    v = v.replace(f"{peer}:{port}", f"127.0.0.1:{grpc_ports[peer]}")
                    v = v.replace(f"0.0.0.0:{port}", f"127.0.0.1:{grpc_ports[peer]}")
                out[k] = v
            return out

        pub = subprocess.run([py, "-m", "vidrec.cli", "publish", "--model", str(small_model)],
                             env=env_of("trainer"), cwd=app, capture_output=True, text=True,
                             timeout=300)
        assert pub.returncode == 0, pub.stderr[-2000:]
        cmds = {name: ([py, *deployments[name][0]], env_of(name)) for name in SERVICES}
        with _started(cmds, app, tmp_path) as procs:
            for name in SERVICES:
                if name == "trainer":  # its exec probe
                    probe = lambda: subprocess.run(  # noqa: E731
                        [py, "-m", "vidrec.serving.healthcheck", "--trainer", "30"],
                        env=env_of("trainer"), cwd=app, capture_output=True).returncode == 0
                elif name == "web":  # the kubelet's HTTPS readiness probe
                    probe = lambda: http_status(  # noqa: E731
                        f"https://127.0.0.1:{grpc_ports['web']}/readyz",
                        str(secrets / "ca.pem")) == "SERVING"
                else:  # the kubelet's gRPC probe: plaintext, health port
                    probe = lambda n=name: check(  # type: ignore[misc]  # noqa: E731
                        f"127.0.0.1:{health_ports[n]}", security=ClientSecurity()) == "SERVING"
                _wait_healthy(procs[name], tmp_path / f"{name}.log", probe)
            sec = ClientSecurity(str(secrets / "ca.pem"),
                                 bearer=(secrets / "admin.key").read_text())
            _like_reaches_trainer(sec, f"127.0.0.1:{grpc_ports['gateway']}",
                                  f"redis://:{password}@127.0.0.1:{redis_srv.port}/0",
                                  "k8s-test", tmp_path / "trainer.log")
