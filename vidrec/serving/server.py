"""gRPC server lifecycle shared by every service: TLS, health, admission, graceful shutdown.

Health starts NOT_SERVING and turns SERVING only when the service says it is ready (model
and index loaded). SIGTERM/SIGINT -> NOT_SERVING (load balancers stop sending) -> stop
accepting, let in-flight calls finish within `grace` -> exit.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from vidrec.logs import request_id_var
from vidrec.serving.interceptor import Handler, UnaryInterceptor

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
OVERALL = ""
HEALTH_PREFIX = "/grpc.health.v1.Health/"
# Workers kept free of requests, for health checks (see _Admission).
HEALTH_WORKERS = 2


class _Admission(UnaryInterceptor):
    """Refuse what the process cannot serve in time, at once, instead of queueing it.

    Past `limit` calls in flight a call is answered RESOURCE_EXHAUSTED without work (the
    caller degrades or retries elsewhere): a queue would only make every answer late and
    goodput collapse. A call whose deadline has already passed is answered
    DEADLINE_EXCEEDED without work. Health checks are never refused: the limit stays below
    the worker count, so a health check always finds a free worker and an overloaded pod
    is not mistaken for a dead one.
    """

    skip_prefixes = (HEALTH_PREFIX,)

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self.refused = 0
        self._in_flight = 0
        self._lock = threading.Lock()

    def wrap(self, inner: Handler, method: str, details: grpc.HandlerCallDetails) -> Handler:
        def admitted(request: object, context: grpc.ServicerContext) -> object:
            left = context.time_remaining()
            if left is not None and left <= 0:
                context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                              f"{self.name}: the deadline passed before the call started")
            with self._lock:
                full = self._in_flight >= self.limit
                if full:
                    self.refused += 1
                else:
                    self._in_flight += 1
            if full:
                if self.refused % 1000 == 1:
                    log.warning("%s at its limit of %d calls in flight: %d refused so far",
                                self.name, self.limit, self.refused)
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"{self.name} is at capacity; retry later")
            try:
                return inner(request, context)
            finally:
                with self._lock:
                    self._in_flight -= 1

        return admitted


class _Guard(UnaryInterceptor):
    """No exception reaches a client as a traceback or an exception message.

    A handler that aborted keeps its status. A store that cannot be reached (Redis, a
    socket) is UNAVAILABLE: expected, and callers degrade on it. Anything else is a bug:
    logged here with its traceback and the request id, INTERNAL with a generic message
    to the client.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def wrap(self, inner: Handler, method: str, details: grpc.HandlerCallDetails) -> Handler:
        def guarded(request: object, context: grpc.ServicerContext) -> object:
            try:
                return inner(request, context)
            except Exception as exc:
                if context.code() is not None:  # context.abort() was called: keep it
                    raise
                if _is_unavailable(exc):
                    log.warning("%s %s: store unavailable: %s", self.name, method, exc)
                    context.abort(grpc.StatusCode.UNAVAILABLE,
                                  f"{self.name}: a backing store is unavailable; retry")
                log.exception("%s %s failed", self.name, method)
                context.abort(grpc.StatusCode.INTERNAL,
                              f"{self.name}: internal error (request id "
                              f"{request_id_var.get()})")
                raise  # unreachable: abort raises

        return guarded


def _is_unavailable(exc: BaseException) -> bool:
    import redis

    return isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError |
                      ConnectionError | TimeoutError)


class InsecureListen(RuntimeError):
    """Plaintext on an address other machines can reach, without VIDREC_ALLOW_INSECURE."""


def server_credentials(settings: Any) -> grpc.ServerCredentials | None:
    """TLS from a service's settings (VIDREC_TLS_CERT/KEY, VIDREC_TLS_CA), mTLS when its
    VIDREC_REQUIRE_CLIENT_CERT is on (the internal services' default); None: plaintext."""
    cert = getattr(settings, "tls_cert", "")
    if not cert:
        return None
    from vidrec.security.tls import server_credentials as creds

    return creds(cert, settings.tls_key, settings.tls_ca,
                 bool(getattr(settings, "require_client_cert", False)))


class Server:
    def __init__(self, name: str, listen_addr: str, service_names: Sequence[str],
                 register: Callable[[grpc.Server], None], workers: int = 16,
                 grace_s: float = 5.0, max_in_flight: int | None = None,
                 settings: Any = None, interceptors: Sequence[grpc.ServerInterceptor] = ()
                 ) -> None:
        """`max_in_flight` calls at once (default: workers - HEALTH_WORKERS); beyond it a
        call is refused at once with RESOURCE_EXHAUSTED (_Admission). `settings` brings
        TLS (server_credentials), VIDREC_ALLOW_INSECURE and VIDREC_REFLECTION;
        `interceptors` run first (the gateway's Authenticator: a caller without
        credentials never takes an admission slot)."""
        from vidrec.security.tls import is_loopback

        tls = server_credentials(settings)
        if tls is None and not is_loopback(listen_addr) and not getattr(
                settings, "allow_insecure", False):
            raise InsecureListen(
                f"{name}: refusing plaintext on {listen_addr}, reachable from other machines: "
                "set VIDREC_TLS_CERT/VIDREC_TLS_KEY (and VIDREC_TLS_CA), or "
                "VIDREC_ALLOW_INSECURE=true on a network you trust")
        self.name = name
        self.grace_s = grace_s
        opts = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0)]
        limit = max_in_flight if max_in_flight else max(1, workers - HEALTH_WORKERS)
        workers = max(workers, limit + HEALTH_WORKERS)
        self.admission = _Admission(name, limit)
        from vidrec.serving.metrics import MetricsInterceptor, serve

        self.metrics_port = 0
        metrics_addr = getattr(settings, "metrics_addr", "")
        if metrics_addr:
            self.metrics_port = serve(metrics_addr)
        from vidrec.serving import tracing

        tracer = tracing.setup(name, getattr(settings, "tracing", ""))
        traced = [tracing.ServerTracing(name, tracer)] if tracer is not None else []
        # maximum_concurrent_rpcs: gRPC's core refuses a call past `workers` in the server
        # (RESOURCE_EXHAUSTED) before Python sees it, so under overload the excess is told
        # at once instead of queueing for a worker thread only to be refused by _Admission.
        self.grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=opts,
                                interceptors=[*traced, MetricsInterceptor(name), *interceptors,
                                              self.admission, _Guard(name)],
                                maximum_concurrent_rpcs=workers)
        register(self.grpc)
        self.health = health.HealthServicer(experimental_non_blocking=True)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        self._services = list(service_names)
        if getattr(settings, "reflection", False):  # off by default: a map for attackers
            reflection.enable_server_reflection(
                [*self._services, health.SERVICE_NAME, reflection.SERVICE_NAME], self.grpc)
        self.tls = tls is not None
        self.port = (self.grpc.add_secure_port(listen_addr, tls) if tls is not None
                     else self.grpc.add_insecure_port(listen_addr))
        if self.port == 0:
            raise RuntimeError(f"{name}: cannot listen on {listen_addr}")
        host = listen_addr.rsplit(":", 1)[0]
        self.address = f"{host}:{self.port}"
        # VIDREC_HEALTH_ADDR: grpc.health.v1 alone on a plaintext port of its own, with its
        # own threads: Kubernetes' native gRPC probes speak no TLS, and a saturated request
        # pool never delays a probe. It says SERVING or not, nothing else.
        self.health_server: grpc.Server | None = None
        health_addr = getattr(settings, "health_addr", "")
        if health_addr:
            self.health_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.health_server)
            self.health_port = self.health_server.add_insecure_port(health_addr)
            if self.health_port == 0:
                raise RuntimeError(f"{name}: cannot listen on {health_addr} (health)")
        self.set_serving(False)
        self._stopped = threading.Event()

    def set_serving(self, serving: bool) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for svc in [OVERALL, *self._services]:
            self.health.set(svc, status)

    def start(self) -> None:
        from vidrec.serving.holder import freeze_heap

        freeze_heap()  # what start-up built (modules, stubs, caches) stays out of GC walks
        self.grpc.start()
        if self.health_server is not None:
            self.health_server.start()
        log.info("%s listening on %s%s", self.name, self.address, " (TLS)" if self.tls else "")

    def stop(self) -> None:
        """NOT_SERVING, then drain in-flight calls for up to grace_s."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.set_serving(False)
        log.info("%s stopping: draining for up to %.1fs", self.name, self.grace_s)
        self.grpc.stop(self.grace_s).wait()
        if self.health_server is not None:
            self.health_server.stop(0)
        log.info("%s stopped", self.name)

    def run_until_signal(self) -> None:
        """Block until SIGTERM/SIGINT, then stop gracefully (main thread only)."""
        done = threading.Event()

        def _handler(signum: int, _frame: object) -> None:
            log.info("%s got signal %d", self.name, signum)
            done.set()

        signal.signal(signal.SIGTERM, _handler)
        signal.signal(signal.SIGINT, _handler)
        done.wait()
        self.stop()
