"""The web front door's server alone (no stack): the connection cap and the error model
for requests that never reach the gateway."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator

import grpc
import pytest

from services.web.server import Door, make_server


@pytest.fixture
def door_server() -> Iterator[tuple[str, int]]:
    channel = grpc.insecure_channel("127.0.0.1:1")  # no gateway: only local answers here
    server = make_server(Door(channel, 0.5, 1024, "test"), "127.0.0.1:0", None,
                         max_connections=2)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield str(server.server_address[0]), int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        channel.close()


def _get(host: str, port: int, path: str) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(host, port, timeout=5)
    conn.request("GET", path)
    r = conn.getresponse()
    body = json.loads(r.read() or b"null")
    conn.close()
    return r.status, body


def test_connections_past_the_cap_get_503_and_the_server_recovers(door_server) -> None:  # type: ignore[no-untyped-def]
    host, port = door_server
    idle = [socket.create_connection((host, port)) for _ in range(2)]  # hold both slots
    time.sleep(0.2)
    try:
        status, body = _get(host, port, "/healthz")
        assert status == 503 and body["error"]["status"] == "UNAVAILABLE"
    finally:
        for s in idle:
            s.close()
    deadline = time.monotonic() + 10
    status = 0
    while time.monotonic() < deadline and status != 200:
        status, body = _get(host, port, "/healthz")
        time.sleep(0.05)
    assert status == 200 and body["status"] == "SERVING"


def test_gateway_down_is_503_with_a_json_reason(door_server) -> None:  # type: ignore[no-untyped-def]
    host, port = door_server
    conn = http.client.HTTPConnection(host, port, timeout=5)
    conn.request("POST", "/v1/recommend", body=b'{"user_id": "u1", "k": 3}',
                 headers={"Authorization": "Bearer x", "Content-Type": "application/json"})
    r = conn.getresponse()
    err = json.loads(r.read())
    conn.close()
    assert r.status in (503, 504) and err["error"]["status"] in ("UNAVAILABLE",
                                                                 "DEADLINE_EXCEEDED")
    assert "Traceback" not in json.dumps(err)
