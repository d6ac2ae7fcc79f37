"""What a client sees when a service fails: a status and a sentence, never a traceback."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from services.ranker.servicer import RankerServicer
from services.reranker.servicer import RerankerServicer
from vidrec.infra.embedded import free_port
from vidrec.rerank import RerankConfig
from vidrec.serving.server import Server
from vidrec.store.features import FeatureStore
from vidrec.v1 import (
    common_pb2,
    ranker_pb2,
    ranker_pb2_grpc,
    reranker_pb2,
    reranker_pb2_grpc,
)


class BrokenHolder:
    """A model holder with a bug in it."""

    def current(self) -> None:
        raise RuntimeError("secret internal detail")


@pytest.fixture
def servers() -> Iterator[tuple[str, str]]:
    dead_redis = FeatureStore.from_url(f"redis://127.0.0.1:{free_port()}/0")
    rr = RerankerServicer(dead_redis, RerankConfig())
    rk = RankerServicer(BrokenHolder(), None, 10)  # type: ignore[arg-type]
    a = Server("reranker", "127.0.0.1:0", ["vidrec.v1.Reranker"],
               lambda g: reranker_pb2_grpc.add_RerankerServicer_to_server(rr, g))
    b = Server("ranker", "127.0.0.1:0", ["vidrec.v1.Ranker"],
               lambda g: ranker_pb2_grpc.add_RankerServicer_to_server(rk, g))
    a.start()
    b.start()
    try:
        yield a.address, b.address
    finally:
        a.grpc.stop(0)
        b.grpc.stop(0)


def test_store_down_is_unavailable(servers: tuple[str, str]) -> None:
    with grpc.insecure_channel(servers[0]) as ch:
        with pytest.raises(grpc.RpcError) as err:
            reranker_pb2_grpc.RerankerStub(ch).Rerank(reranker_pb2.RerankRequest(
                k=3, videos=[common_pb2.ScoredVideo(video_id="v1", score=1.0)]), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "store is unavailable" in (err.value.details() or "")
    assert "Traceback" not in (err.value.details() or "")


def test_bad_input_keeps_its_status(servers: tuple[str, str]) -> None:
    with grpc.insecure_channel(servers[0]) as ch:
        with pytest.raises(grpc.RpcError) as err:
            reranker_pb2_grpc.RerankerStub(ch).Rerank(reranker_pb2.RerankRequest(k=0),
                                                      timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_bug_is_internal_without_its_message(servers: tuple[str, str]) -> None:
    with grpc.insecure_channel(servers[1]) as ch:
        with pytest.raises(grpc.RpcError) as err:
            ranker_pb2_grpc.RankerStub(ch).Score(ranker_pb2.ScoreRequest(), timeout=10)
    assert err.value.code() == grpc.StatusCode.INTERNAL
    details = err.value.details() or ""
    assert "internal error" in details and "secret internal detail" not in details


def test_a_request_id_cannot_forge_log_lines() -> None:
    from vidrec.logs import request_id_var, set_request_id

    set_request_id("abc\r\n2026-01-01 INFO gateway [-] forged: admin logged in")
    got = request_id_var.get()
    assert "\n" not in got and "\r" not in got and " " not in got and len(got) <= 64
    set_request_id("")
    assert request_id_var.get() == "-"
    set_request_id("0123abcd-ef:9.x")
    assert request_id_var.get() == "0123abcd-ef:9.x"


def test_json_logs_carry_the_request_id_and_tracebacks(capsys) -> None:  # type: ignore[no-untyped-def]
    import json
    import logging

    from vidrec.logs import set_request_id, setup_logging

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    setup_logging("gateway", "INFO", "json")
    try:
        set_request_id("req-42")
        logging.getLogger("t").info("hello %s", "world")
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("t").exception("failed")
        lines = [json.loads(x) for x in capsys.readouterr().err.splitlines()]
        assert lines[0]["msg"] == "hello world" and lines[0]["request_id"] == "req-42"
        assert lines[0]["service"] == "gateway" and lines[0]["level"] == "INFO"
        assert "ValueError: boom" in lines[1]["exc"]
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])


def test_json_logs_name_the_trace_when_tracing_is_on(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    import json
    import logging

    from opentelemetry import trace

    from vidrec.logs import setup_logging
    from vidrec.serving import tracing

    tracer = tracing.setup("gateway", f"file:{tmp_path}") or trace.get_tracer("t")
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    setup_logging("gateway", "INFO", "json")
    try:
        with tracer.start_as_current_span("call") as span:
            logging.getLogger("t").info("inside")
            want = format(span.get_span_context().trace_id, "032x")
        line = json.loads(capsys.readouterr().err.splitlines()[-1])
        assert line["trace_id"] == want
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])
