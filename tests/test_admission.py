"""Admission control: past its limit a server refuses at once (RESOURCE_EXHAUSTED) instead
of queueing until every deadline is blown, and health checks are still answered."""

from __future__ import annotations

import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vidrec.serving.server import Server


def test_calls_past_the_limit_are_refused_and_health_still_answers() -> None:
    release = threading.Event()
    started = threading.Semaphore(0)

    def slow(request: bytes, context: grpc.ServicerContext) -> bytes:
        started.release()
        release.wait(30)
        return b"done"

    handler = grpc.method_handlers_generic_handler(
        "test.Slow", {"Call": grpc.unary_unary_rpc_method_handler(slow)})
    server = Server("slow", "127.0.0.1:0", ["test.Slow"],
                    lambda g: g.add_generic_rpc_handlers((handler,)), workers=4,
                    max_in_flight=2)
    server.start()
    server.set_serving(True)
    try:
        with grpc.insecure_channel(server.address) as ch:
            call = ch.unary_unary("/test.Slow/Call")
            pool = futures.ThreadPoolExecutor(8)
            held = [pool.submit(call, b"x", timeout=30) for _ in range(2)]
            for _ in range(2):
                assert started.acquire(timeout=30)
            # Both slots are taken: more calls are refused without waiting for them.
            codes = []
            for _ in range(5):
                try:
                    call(b"x", timeout=30)
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as exc:
                    codes.append(exc.code())
            assert codes == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 5
            health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(),
                                                          timeout=10)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            release.set()
            assert [f.result() for f in held] == [b"done", b"done"]
            assert call(b"x", timeout=30) == b"done"  # capacity is back
            assert server.admission.refused == 5
    finally:
        release.set()
        server.stop()
