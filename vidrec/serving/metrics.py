"""Prometheus metrics of every process, on a port of its own (VIDREC_METRICS_ADDR).

Names follow Prometheus conventions (units in names, `_total` counters) and every label
has a bounded set of values (service, method, status code, stage, outcome): no user or
video ids. One registry per process; `serve(addr)` starts the HTTP endpoint.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import grpc
from prometheus_client import Counter, Gauge, Histogram, start_http_server

from vidrec.serving.interceptor import Handler, UnaryInterceptor

log = logging.getLogger(__name__)

RPC_SECONDS = Histogram(
    "vidrec_rpc_duration_seconds", "gRPC calls served, by method and status code",
    ["service", "method", "code"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0))
HTTP_SECONDS = Histogram(
    "vidrec_http_request_duration_seconds", "HTTP requests to the web front door, by route "
    "and status", ["route", "status"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0))
DEGRADED = Counter("vidrec_degraded_answers_total",
                   "Recommend answers that skipped a stage, by stage", ["stage"])
EVENTS = Counter("vidrec_trainer_events_total",
                 "Events the trainer handled, by outcome", ["outcome"])
IMPRESSIONS_DROPPED = Counter("vidrec_impressions_dropped_total",
                              "Impression events dropped by the gateway's bounded queue")
MODEL_VERSION = Gauge("vidrec_serving_model_version",
                      "The model version (N of vN) a process serves", ["service"])
BATCH_SECONDS = Histogram("vidrec_trainer_batch_seconds",
                          "Time to apply one batch of events (log, Redis script, commit)",
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
HEARTBEAT = Gauge("vidrec_trainer_last_batch_timestamp_seconds",
                  "Unix time of the trainer's last applied batch")
LAG = Gauge("vidrec_trainer_consumer_lag_records",
            "Records in the trainer's partitions not consumed yet (from the last fetch)")
ARM_EVENTS = Counter("vidrec_arm_events_total",
                     "Applied events per experiment arm and type (online metrics)",
                     ["arm", "type"])
ARM_WATCH_SECONDS = Counter("vidrec_arm_watch_time_seconds_total",
                            "Watch time per experiment arm", ["arm"])
FOLDIN_SECONDS = Histogram("vidrec_trainer_foldin_seconds",
                           "One fold-in pass over the users whose events changed",
                           buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
PUBLISH_SECONDS = Histogram("vidrec_publish_seconds", "One publish of a model version",
                            buckets=(1, 5, 10, 30, 60, 120, 300, 600, 1200))


def serve(addr: str) -> int:
    """Start the /metrics HTTP endpoint on `addr` (host:port); returns the port."""
    host, _, port = addr.rpartition(":")
    server, _thread = start_http_server(int(port), addr=host or "127.0.0.1")
    bound = int(server.server_address[1])
    log.info("metrics on http://%s:%d/metrics", host or "127.0.0.1", bound)
    return bound


def set_model_version(service: str, version: str | None) -> None:
    if version and version[1:].isdigit():
        MODEL_VERSION.labels(service).set(int(version[1:]))


class MetricsInterceptor(UnaryInterceptor):
    """Latency and status code of every call, refused and failed ones included (it runs
    first, outside authentication and admission)."""

    def __init__(self, service: str) -> None:
        self.service = service

    def wrap(self, inner: Handler, method: str, details: grpc.HandlerCallDetails) -> Handler:
        name = method.rsplit("/", 1)[-1]

        def timed(request: Any, context: grpc.ServicerContext) -> Any:
            t0 = time.perf_counter()
            code = "OK"
            try:
                return inner(request, context)
            except Exception:
                c = context.code() if hasattr(context, "code") else None
                code = c.name if isinstance(c, grpc.StatusCode) else "UNKNOWN"
                raise
            finally:
                RPC_SECONDS.labels(self.service, name, code).observe(
                    time.perf_counter() - t0)

        return timed
