"""OpenTelemetry tracing, off by default (VIDREC_TRACING): one trace per request across
gateway -> candidate -> ranker -> reranker, its context carried in gRPC metadata (W3C
`traceparent`), every span tagged with the request id.

VIDREC_TRACING:
  ""            off (no tracer, no cost)
  "file:DIR"    spans as JSON lines in DIR/<service>.jsonl (written as they end)
  "console"     spans as JSON lines on stderr
  "otlp"        the OTLP exporter, if `opentelemetry-exporter-otlp` is installed; it reads
                OTEL_EXPORTER_OTLP_ENDPOINT and friends
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)

from vidrec.serving.interceptor import Handler, UnaryInterceptor

_tracer: trace.Tracer | None = None


class _JsonLines(SpanExporter):
    """One span per line, compact: trace and span ids, parent, name, attributes, times."""

    def __init__(self, out: Any) -> None:
        self.out = out
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = []
        for s in spans:
            ctx = s.get_span_context()
            lines.append(json.dumps({
                "trace_id": format(ctx.trace_id, "032x") if ctx else "",
                "span_id": format(ctx.span_id, "016x") if ctx else "",
                "parent_id": format(s.parent.span_id, "016x") if s.parent else "",
                "name": s.name, "service": s.resource.attributes.get("service.name", ""),
                "start": s.start_time, "end": s.end_time,
                "status": s.status.status_code.name,
                "attributes": dict(s.attributes or {})}))
        with self._lock:
            self.out.write("\n".join(lines) + "\n")
            self.out.flush()
        return SpanExportResult.SUCCESS


def setup(service: str, spec: str) -> trace.Tracer | None:
    """Configure this process's tracer from VIDREC_TRACING; None when tracing is off."""
    global _tracer
    if not spec:
        return None
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if spec.startswith("file:"):
        d = Path(spec[len("file:"):])
        d.mkdir(parents=True, exist_ok=True)
        provider.add_span_processor(SimpleSpanProcessor(_JsonLines(
            (d / f"{service}.jsonl").open("a"))))
    elif spec == "console":
        provider.add_span_processor(SimpleSpanProcessor(_JsonLines(sys.stderr)))
    elif spec == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found]
                OTLPSpanExporter,
            )
        except ImportError as exc:
            raise ValueError("VIDREC_TRACING=otlp needs `pip install "
                             "opentelemetry-exporter-otlp`") from exc
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    else:
        raise ValueError(f"VIDREC_TRACING must be '', file:DIR, console or otlp, not {spec!r}")
    trace.set_tracer_provider(provider)
    _tracer = trace.get_tracer("vidrec")
    return _tracer


def trace_id() -> str:
    """The current trace id (hex), "" outside a traced call."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx and ctx.is_valid else ""


def tag_request(request_id: str) -> None:
    """Put the request id on the current span (the gateway makes the id inside the call)."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute("vidrec.request_id", request_id)


class ServerTracing(UnaryInterceptor):
    """A SERVER span per call, child of the caller's span when the metadata carries one."""

    def __init__(self, service: str, tracer: trace.Tracer) -> None:
        self.service = service
        self.tracer = tracer

    def wrap(self, inner: Handler, method: str, details: grpc.HandlerCallDetails) -> Handler:
        carrier = {k: v for k, v in (details.invocation_metadata or ())
                   if isinstance(v, str)}

        def traced(request: Any, context_: grpc.ServicerContext) -> Any:
            parent = propagate.extract(carrier)
            with self.tracer.start_as_current_span(
                    f"{self.service} {method.rsplit('/', 1)[-1]}", context=parent,
                    kind=trace.SpanKind.SERVER,
                    attributes={"rpc.system": "grpc", "rpc.method": method}) as span:
                rid = getattr(request, "request_id", "")
                if rid:
                    span.set_attribute("vidrec.request_id", str(rid)[:64])
                return inner(request, context_)

        return traced


class ClientTracing(grpc.UnaryUnaryClientInterceptor):
    """Carries the current span's context to the callee (W3C traceparent metadata)."""

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        from vidrec.security.client import CallDetails

        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=context.get_current())
        md = list(details.metadata or []) + list(carrier.items())
        return continuation(CallDetails(details.method, details.timeout, md, details.credentials,
                                     details.wait_for_ready, details.compression), request)
