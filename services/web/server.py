"""The HTTP server: one thread per connection (keep-alive), TLS when configured, each /v1
call forwarded to the gateway with the caller's own `Authorization` header, so the
gateway's keys, scopes, user tokens and rate limits apply unchanged."""

from __future__ import annotations

import json
import logging
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc

from services.web.api import BY_PATH, ROUTES, Answer, ApiError, openapi, parse_body, to_json
from vidrec.logs import request_id_var
from vidrec.serving.metrics import HTTP_SECONDS
from vidrec.v1 import gateway_pb2_grpc

log = logging.getLogger(__name__)

ConsoleHandler = Callable[[str, str, dict[str, list[str]], bytes, dict[str, str]], Answer]


class Door:
    """What every request handler shares: the gateway stub and settings."""

    def __init__(self, channel: grpc.Channel, call_timeout_s: float, max_body: int,
                 version: str, console: ConsoleHandler | None = None,
                 gateway_health: Callable[[], str] | None = None) -> None:
        self.stub = gateway_pb2_grpc.GatewayStub(channel)
        self.call_timeout_s = call_timeout_s
        self.max_body = max_body
        self.version = version
        self.console = console
        self.gateway_health = gateway_health
        self._openapi = json.dumps(openapi(version), indent=1).encode()

    def call(self, rpc: str, request: Any, authorization: str) -> Any:
        """One gateway call with the caller's credentials; an ApiError on any failure."""
        md = (("authorization", authorization),) if authorization else ()
        try:
            return getattr(self.stub, rpc)(request, timeout=self.call_timeout_s, metadata=md)
        except grpc.RpcError as exc:
            code = exc.code()  # type: ignore[attr-defined]
            headers = {}
            for k, v in exc.trailing_metadata() or ():  # type: ignore[attr-defined]
                if k == "retry-after-ms":
                    headers["Retry-After"] = str(max(1, -(-int(v) // 1000)))
            raise ApiError(code, exc.details() or code.name, headers) from None  # type: ignore[attr-defined]

    def answer(self, method: str, raw_path: str, body: bytes, headers: dict[str, str]
               ) -> Answer:
        url = urllib.parse.urlsplit(raw_path)
        path = url.path
        query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        if path == "/openapi.json" and method == "GET":
            return 200, {"Content-Type": "application/json"}, self._openapi
        if path in ("/healthz", "/readyz") and method == "GET":
            status = self.gateway_health() if self.gateway_health else "SERVING"
            code = 200 if status == "SERVING" or path == "/healthz" else 503
            return code, {"Content-Type": "application/json"}, json.dumps(
                {"status": "SERVING" if path == "/healthz" else status,
                 "gateway": status}).encode()
        if path == "/" and method == "GET":
            return 302, {"Location": "/console/" if self.console else "/openapi.json"}, b""
        if path.startswith("/console") and self.console is not None:
            return self.console(method, path, query, body, headers)
        route = BY_PATH.get((method, path))
        if route is None:
            if any(r.path == path for r in ROUTES):
                allowed = ", ".join(r.method for r in ROUTES if r.path == path)
                err = ApiError(grpc.StatusCode.UNIMPLEMENTED,
                               f"{method} is not allowed on {path}; use {allowed}",
                               http_status=405)
                return 405, {"Content-Type": "application/json", "Allow": allowed}, err.body()
            err = ApiError(grpc.StatusCode.NOT_FOUND,
                           f"no such endpoint: {method} {path} (see /openapi.json)")
            return err.status, {"Content-Type": "application/json"}, err.body()
        try:
            request = parse_body(route, body, query)
            resp = self.call(route.rpc, request, headers.get("authorization", ""))
        except ApiError as err:
            return err.status, {"Content-Type": "application/json", **err.headers}, err.body()
        out = {"Content-Type": "application/json"}
        if getattr(resp, "request_id", ""):
            out["X-Request-Id"] = resp.request_id
        return 200, out, to_json(resp)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a client reuses its connection
    server_version = "vidrec"
    sys_version = ""
    timeout = 30  # seconds a connection may sit idle or trickle a request
    door: Door  # set on the subclass by make_server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # one line per request in _serve instead (no client-controlled text)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        t0 = time.perf_counter()
        request_id_var.set("-")
        status = 500
        try:
            body = b""
            length = self.headers.get("Content-Length")
            if method in ("POST", "PUT"):
                if length is None:
                    raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                                   "Content-Length is required")
                n = int(length)
                if n < 0:
                    raise ApiError(grpc.StatusCode.INVALID_ARGUMENT, "bad Content-Length")
                if n > self.door.max_body:
                    self.close_connection = True
                    self._send(413, {"Content-Type": "application/json"}, ApiError(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"the body is {n} bytes; the limit is {self.door.max_body}",
                        http_status=413).body())
                    status = 413
                    return
                body = self.rfile.read(n)
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, out, payload = self.door.answer(method, self.path, body, headers)
            self._send(status, out, payload)
        except ApiError as err:
            status = err.status
            self._send(status, {"Content-Type": "application/json"}, err.body())
        except ValueError:
            status = 400
            self._send(400, {"Content-Type": "application/json"}, ApiError(
                grpc.StatusCode.INVALID_ARGUMENT, "bad Content-Length").body())
        except (BrokenPipeError, ConnectionResetError):
            return
        except Exception:
            log.exception("unexpected error on %s %s", method, self.path.split("?")[0][:100])
            status = 500
            self._send(500, {"Content-Type": "application/json"}, ApiError(
                grpc.StatusCode.INTERNAL, "internal error; the server log has the details"
            ).body())
        finally:
            took = time.perf_counter() - t0
            path = self.path.split("?")[0]
            # bounded label values: a known route, else its first segment
            route = path if (method, path) in BY_PATH or path in ("/openapi.json", "/healthz",
                                                                  "/readyz") else (
                "/console" if path.startswith("/console") else "other")
            HTTP_SECONDS.labels(route, str(status)).observe(took)
            log.info("%s %s -> %d in %.1f ms", method, path[:100], status, took * 1000)

    def setup(self) -> None:
        super().setup()
        # Answers go out at once: with Nagle's algorithm a small answer could wait for
        # the client's delayed ACK (40 ms on Linux) before leaving.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
        """Status line, headers and body in one write: sent in two (as end_headers and a
        body write do), a client's delayed ACK can hold the second segment 40 ms."""
        headers.setdefault("Cache-Control", "no-store")
        headers.setdefault("X-Content-Type-Options", "nosniff")
        reason = self.responses.get(status, ("",))[0]
        lines = [f"{self.protocol_version} {status} {reason}", f"Server: {self.server_version}",
                 f"Date: {self.date_time_string()}",
                 *(f"{k}: {v}" for k, v in headers.items()), f"Content-Length: {len(body)}"]
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.wfile.write(head + (body if self.command != "HEAD" else b""))


class _Server(ThreadingHTTPServer):
    """One thread per connection, at most `max_connections` at once: past it a new
    connection is answered 503 and closed, so a flood of idle connections cannot exhaust
    the process's threads."""

    daemon_threads = True
    allow_reuse_address = True
    max_connections = 256

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._slots = threading.BoundedSemaphore(self.max_connections)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            try:
                request.settimeout(1.0)
                request.sendall(BUSY_ANSWER)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


BUSY_BODY = json.dumps({"error": {"code": 503, "status": "UNAVAILABLE",
                                  "message": "too many connections; retry"}}).encode()
BUSY_ANSWER = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
               b"Connection: close\r\nRetry-After: 1\r\nContent-Length: "
               + str(len(BUSY_BODY)).encode() + b"\r\n\r\n" + BUSY_BODY)


def make_server(door: Door, addr: str, tls: ssl.SSLContext | None,
                max_connections: int = 256) -> ThreadingHTTPServer:
    host, _, port = addr.rpartition(":")
    handler = type("BoundHandler", (Handler,), {"door": door})
    server_class = type("BoundServer", (_Server,), {"max_connections": max_connections})
    server = server_class((host or "127.0.0.1", int(port)), handler)
    if tls is not None:
        # The handshake runs in the connection's own thread (on its first read), so one
        # slow client cannot hold the accept loop.
        server.socket = tls.wrap_socket(server.socket, server_side=True,
                                        do_handshake_on_connect=False)
    return server


def server_tls(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    return ctx
