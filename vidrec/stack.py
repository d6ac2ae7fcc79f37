"""The whole online system on one machine: embedded Redis + Kafka and the five services
as child processes, each logging to its own file. Used by `make run` and by the
end-to-end tests, so what the tests exercise is what a newcomer runs.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from vidrec import schema
from vidrec.infra.embedded import KafkaBroker, RedisServer, free_port
from vidrec.security.client import ClientSecurity
from vidrec.serving.healthcheck import check, http_status

log = logging.getLogger(__name__)

GRPC_SERVICES = ("candidate", "ranker", "reranker", "gateway")
# A service that crashes this often within the window is left down (a crash loop).
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0


@dataclass
class ServiceProcess:
    name: str
    env: dict[str, str]
    log_path: Path
    addr: str = ""
    proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None
    # grpc.health.v1 alone on a plaintext loopback port of its own (VIDREC_HEALTH_ADDR):
    # a probe never queues behind requests, nor is refused with them under overload.
    health_addr: str = ""
    # An HTTP service (the web front door): ready when GET <http_url>/readyz answers 200,
    # over TLS verified with `http_ca` when set.
    http_url: str = ""
    http_ca: str = ""

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", f"services.{self.name}"], env=self.env,
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.proc is not None
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def wait_serving(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        status = "?"
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited; see {self.log_path}:\n"
                                   + self.log_path.read_text()[-2000:])
            if self.http_url:
                status = http_status(self.http_url + "/readyz", self.http_ca)
            elif self.health_addr:
                status = check(self.health_addr, timeout=1.0, security=ClientSecurity())
            else:
                status = check(self.addr, timeout=1.0,
                               security=ClientSecurity.from_env(self.env))
            if status == "SERVING":
                return
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} at {self.addr} is {status} after {timeout_s:.0f}s; "
                           f"see {self.log_path}")

    def stop(self, grace_s: float = 10.0) -> None:
        if self.proc is not None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0fs; killing it", self.name, grace_s)
                self.signal(signal.SIGKILL)
                self.proc.wait(5)
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None


@dataclass
class Stack:
    var: Path
    redis_url: str = ""
    kafka_bootstrap: str = ""
    extra_env: dict[str, str] = field(default_factory=dict)
    services: dict[str, ServiceProcess] = field(default_factory=dict)
    redis: RedisServer | None = None
    kafka: KafkaBroker | None = None
    # make run's: Redis keeps an append-only file under var/redis (fsynced per write), so
    # a crashed or restarted stack comes back with every user's state; tests keep memory.
    durable: bool = False
    # Secure by default, like make run: TLS everywhere, mTLS to the internal services, API
    # keys at the gateway, a Redis password; material generated once under var/run/.
    secure: bool = True
    api_key: str = ""
    # Prometheus /metrics of each process on a loopback port (off: the overhead baseline).
    with_metrics: bool = True
    metrics: dict[str, str] = field(default_factory=dict)
    # The HTTP/JSON front door and operator console (services/web), after the gateway.
    with_web: bool = True
    _secrets: dict[str, str] = field(default_factory=dict)
    _restarts: dict[str, list[float]] = field(default_factory=dict)

    @property
    def artifact_root(self) -> Path:
        return self.var / "artifacts"

    @property
    def index_root(self) -> Path:
        return self.var / "index"

    @property
    def log_dir(self) -> Path:
        return self.var / "logs"

    @property
    def run_dir(self) -> Path:
        return self.var / "run"

    @property
    def http_url(self) -> str:
        """Base URL of the web front door ("" until it is started)."""
        sp = self.services.get("web")
        if sp is None:
            return ""
        return f"{'https' if self.secure else 'http'}://{sp.addr}"

    def prepare_security(self) -> None:
        """CA and certificates, an admin API key, the user-token secret and the Redis
        password under var/run/ (0600), created on first start and reused after."""
        if not self.secure or self._secrets:
            return
        from vidrec.security.keys import KeyFile
        from vidrec.security.tls import ensure_local_pki

        pki = ensure_local_pki(self.run_dir / "tls")
        keys = KeyFile(self.run_dir / "api_keys.json")
        admin = _private(self.run_dir / "admin.key", "")
        live = admin and keys.verify(admin) is not None
        if not live:
            keys.revoke("admin")
            _, admin = keys.create("admin", ["admin"])
            _private(self.run_dir / "admin.key", admin, overwrite=True)
        self.api_key = admin
        token_secret = self.run_dir / "token.secret"
        _private(token_secret, secrets.token_hex(32))
        self._secrets = {
            "redis_password": _private(self.run_dir / "redis.password",
                                       secrets.token_urlsafe(24)),
            "VIDREC_TLS_CA": str(pki.ca), "VIDREC_TLS_CERT": str(pki.server_cert),
            "VIDREC_TLS_KEY": str(pki.server_key),
            "VIDREC_TLS_CLIENT_CERT": str(pki.client_cert),
            "VIDREC_TLS_CLIENT_KEY": str(pki.client_key),
            "VIDREC_API_KEYS_FILE": str(keys.path),
            "VIDREC_TOKEN_SECRET_FILE": str(token_secret),
        }

    @property
    def client_security(self) -> ClientSecurity:
        """How a tool or test calls this stack (the admin key; internal ports too)."""
        e = self._secrets
        return ClientSecurity(e.get("VIDREC_TLS_CA", ""), e.get("VIDREC_TLS_CLIENT_CERT", ""),
                              e.get("VIDREC_TLS_CLIENT_KEY", ""), self.api_key)

    def start_stores(self, kafka: bool = True) -> None:
        self.prepare_security()
        if not self.redis_url:
            self.redis = RedisServer(data_dir=self.var / "redis", durable=self.durable,
                                     password=self._secrets.get("redis_password", "")).start()
            self.redis_url = self.redis.url
        if kafka and not self.kafka_bootstrap:
            from vidrec.infra.kafka import ALL_TOPICS, ensure_topics

            self.kafka = KafkaBroker(log_path=self.log_dir / "kafka.log").start()
            self.kafka_bootstrap = self.kafka.bootstrap
            ensure_topics(self.kafka_bootstrap, ALL_TOPICS)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VIDREC_")}
        env.update({
            "VIDREC_REDIS_URL": self.redis_url,
            "VIDREC_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
            "VIDREC_ARTIFACT_ROOT": str(self.artifact_root),
            "VIDREC_INDEX_ROOT": str(self.index_root),
            # The trainer's event log lives with the rest of this stack's state (its default,
            # a relative var/events, would land in whatever directory the stack runs from).
            "VIDREC_EVENTS_DIR": str(self.var / "events"),
            "PYTHONUNBUFFERED": "1",
        })
        if not self.secure:
            env["VIDREC_AUTH"] = "false"
        env.update({k: v for k, v in self._secrets.items() if k.startswith("VIDREC_")})
        env.update(self.extra_env)
        env.update(extra)
        return env

    def service_env(self, name: str, addr: str) -> dict[str, str]:
        """Only the VIDREC_* keys that service's settings class knows."""
        from vidrec.config import settings_for

        e = {"VIDREC_LISTEN_ADDR": addr}
        if name in ("gateway", "web"):
            e.update({"VIDREC_CANDIDATE_ADDR": self.services["candidate"].addr,
                      "VIDREC_RANKER_ADDR": self.services["ranker"].addr,
                      "VIDREC_RERANKER_ADDR": self.services["reranker"].addr})
        if name == "web":
            e["VIDREC_GATEWAY_ADDR"] = self.services["gateway"].addr
        known = {f"VIDREC_{f.upper()}" for f in settings_for(name)}
        return {k: v for k, v in self.env(**e).items()
                if not k.startswith("VIDREC_") or k in known}

    def start_service(self, name: str, port: int | None = None) -> ServiceProcess:
        addr = f"127.0.0.1:{port or free_port()}" if name != "trainer" else ""
        sp = ServiceProcess(name, {}, self.log_dir / f"{name}.log", addr)
        self.services[name] = sp
        sp.env = self.service_env(name, addr)
        if name == "web":
            sp.http_url = self.http_url
            sp.http_ca = self._secrets.get("VIDREC_TLS_CA", "")
        elif addr:
            sp.health_addr = f"127.0.0.1:{free_port()}"
            sp.env["VIDREC_HEALTH_ADDR"] = sp.health_addr
        if self.with_metrics:
            # Prometheus /metrics of each process, on loopback (recorded in stack.json).
            self.metrics[name] = f"127.0.0.1:{free_port()}"
            sp.env["VIDREC_METRICS_ADDR"] = self.metrics[name]
        sp.start()
        return sp

    def start_services(self, ports: dict[str, int] | None = None, timeout_s: float = 120.0,
                       trainer: bool = False) -> None:
        ports = ports or {}
        for name in GRPC_SERVICES:
            # The gateway is started last: it needs the other three addresses.
            self.start_service(name, ports.get(name))
        for name in GRPC_SERVICES:
            self.services[name].wait_serving(timeout_s)
        if self.with_web:
            # The HTTP/JSON front door and console, in front of the gateway.
            self.start_service("web", ports.get("web")).wait_serving(timeout_s)
        if trainer:
            self.start_service("trainer")
            self.wait_trainer(timeout_s)
        self.write_state()

    def wait_trainer(self, timeout_s: float) -> None:
        """Until the trainer's heartbeat says it owns partitions (events are applied from
        then on): a stack that says "up" keeps its freshness promise from the first event,
        however long the trainer took to start and join its consumer group."""
        from vidrec.store.features import FeatureStore

        sp = self.services["trainer"]
        store = FeatureStore.from_url(self.redis_url,
                                      self.extra_env.get("VIDREC_KEY_PREFIX", "vidrec"))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not sp.alive():
                raise RuntimeError(f"trainer exited; see {sp.log_path}:\n"
                                   + sp.log_path.read_text()[-2000:])
            try:
                beat = store.heartbeat()
            except Exception:  # Redis busy: try again
                beat = None
            if beat and beat.get("partitions"):
                return
            time.sleep(0.1)
        raise TimeoutError(f"trainer owns no partition after {timeout_s:.0f}s; see "
                           f"{sp.log_path}")

    def drain(self, timeout_s: float) -> int:
        """Wait until the trainer's group has committed every event in Kafka; return how
        many are left (0: drained)."""
        from vidrec.infra.kafka import consumer_lag

        group = self.extra_env.get("VIDREC_GROUP_ID", "vidrec-trainer")
        deadline = time.monotonic() + timeout_s
        left = -1
        while time.monotonic() < deadline:
            try:
                left = consumer_lag(self.kafka_bootstrap, group, schema.TOPIC_EVENTS)
            except Exception as exc:  # broker busy or gone: nothing more to wait for
                log.warning("cannot read the trainer's lag: %s", exc)
                return max(left, 0)
            if left == 0:
                return 0
            time.sleep(0.2)
        return left

    def write_state(self) -> None:
        state: dict[str, object] = {
            "services": {n: s.addr for n, s in self.services.items()},
            "redis": self.redis_url, "kafka": self.kafka_bootstrap, "pid": os.getpid(),
            "key_prefix": self.extra_env.get("VIDREC_KEY_PREFIX", "vidrec"),
            "metrics": dict(self.metrics)}
        if "web" in self.services:
            state["http"] = self.services["web"].addr
            state["http_url"] = self.http_url
            state["console"] = self.http_url + "/console/"
        if self.secure:
            c = self.client_security
            state["api_key"] = self.api_key
            state["tls"] = {"ca": c.ca, "client_cert": c.cert, "client_key": c.key}
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # It holds the admin key and the Redis password: readable by this user only.
        _private(self.run_dir / "stack.json", json.dumps(state, indent=2), overwrite=True)

    def supervise(self, now: float | None = None) -> list[str]:
        """Restart every service that exited (same address and environment) and return
        their names. A process that crashed MAX_RESTARTS times within RESTART_WINDOW_S is
        left down (a crash loop needs a person): it is named in the log each pass.

        Why: one process dying (a Redis timeout in the trainer, an OOM kill) must not take
        the whole stack down, and with it the embedded stores' in-memory state.
        """
        now = time.monotonic() if now is None else now
        restarted = []
        stores = {"redis": self.redis, "kafka": self.kafka}
        for name, store in stores.items():
            # The embedded stores come back on their own ports: Redis from its append-only
            # file when durable; the broker (memory storage) empty, its topics recreated,
            # and the trainer reads the new log from its start (services/trainer/loop.py).
            if store is None or store.running or not self._may_restart(name, now,
                                                                      store.log_path):
                continue
            log.warning("embedded %s exited; restarting it on port %d, see %s", name,
                        store.port, store.log_path)
            try:
                store.restart()
                if name == "kafka":
                    from vidrec.infra.kafka import ALL_TOPICS, ensure_topics

                    ensure_topics(self.kafka_bootstrap, ALL_TOPICS)
            except Exception:
                log.exception("embedded %s did not come back; retrying", name)
                continue
            restarted.append(name)
        for name, sp in self.services.items():
            if sp.alive():
                continue
            code = sp.proc.returncode if sp.proc is not None else None
            if not self._may_restart(name, now, sp.log_path, code):
                continue
            log.warning("%s exited (code %s); restarting it, see %s", name, code, sp.log_path)
            sp.stop()
            sp.start()
            restarted.append(name)
        return restarted

    def forget_restarts(self, name: str) -> None:
        """Forget `name`'s recent restarts: a deliberate kill (fault injection, an operator)
        is not a crash loop."""
        self._restarts.pop(name, None)

    def _may_restart(self, name: str, now: float, log_path: Path,
                     code: int | None = None) -> bool:
        """Count a restart of `name`; False (and say so) once it crashed MAX_RESTARTS times
        within RESTART_WINDOW_S."""
        recent = [t for t in self._restarts.get(name, []) if now - t < RESTART_WINDOW_S]
        self._restarts[name] = recent
        if len(recent) >= MAX_RESTARTS:
            log.error("%s keeps crashing (%d restarts in %.0fs, last exit %s); left down, "
                      "see %s", name, len(recent), RESTART_WINDOW_S, code, log_path)
            return False
        recent.append(now)
        return True

    def stop(self, drain_s: float = 15.0) -> None:
        """Stop everything, the gateway first: no new event is acknowledged, then the
        trainer gets up to `drain_s` to apply what Kafka holds (the embedded broker keeps
        it in memory only), then the rest."""
        for name in ("web", "gateway"):
            sp = self.services.pop(name, None)
            if sp is not None:
                sp.stop()
        trainer = self.services.get("trainer")
        if trainer is not None and trainer.alive() and self.kafka is not None:
            left = self.drain(drain_s)
            if left:
                log.warning("stopping with %d events not yet applied by the trainer", left)
        for name in ("trainer", "reranker", "ranker", "candidate"):
            sp = self.services.pop(name, None)
            if sp is not None:
                sp.stop()
        if self.kafka is not None:
            self.kafka.stop()
            self.kafka = None
        if self.redis is not None:
            self.redis.stop()
            self.redis = None
        (self.var / "run" / "stack.json").unlink(missing_ok=True)


def _private(path: Path, default: str, overwrite: bool = False) -> str:
    """The text of a 0600 file; writes `default` first when it is missing (or always with
    `overwrite`). Returns "" for a missing file and an empty default."""
    if path.exists() and not overwrite:
        return path.read_text().strip()
    if not default:
        return ""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(default)
    os.chmod(path, 0o600)
    return default
