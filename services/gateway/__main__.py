"""python -m services.gateway: wire settings, channels, Redis, Kafka and the gRPC server."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import grpc

from services.gateway.arms import parse_arms
from services.gateway.funnel import Budget, Stubs
from services.gateway.servicer import GatewayServicer
from vidrec.config import GatewaySettings, SettingsError, load_settings
from vidrec.logs import setup_logging
from vidrec.rerank import RerankConfig
from vidrec.security.auth import Authenticator, Limits
from vidrec.security.client import ClientSecurity
from vidrec.security.keys import KeyFile
from vidrec.security.stores import store_credentials
from vidrec.serving.server import Server
from vidrec.store.features import FeatureStore
from vidrec.v1 import (
    candidate_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    ranker_pb2_grpc,
    reranker_pb2_grpc,
)

log = logging.getLogger("services.gateway")

# Round-robin over every address DNS returns: replicas behind a headless Service share load.
# The internal calls are idempotent reads: one retry on UNAVAILABLE (a replica restarting,
# a connection reset) within the stage's ceiling, instead of a degraded answer. Reconnect
# backoff capped at 1 s so a restarted backend is used again within about a second
# (gRPC's default grows to 120 s); keepalive notices a dead peer without traffic.
_RETRY = json.dumps({"methodConfig": [{
    "name": [{"service": "vidrec.v1.Candidate"}, {"service": "vidrec.v1.Ranker"},
             {"service": "vidrec.v1.Reranker"}],
    "retryPolicy": {"maxAttempts": 2, "initialBackoff": "0.01s", "maxBackoff": "0.05s",
                    "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]})
CHANNEL_OPTIONS = [("grpc.lb_policy_name", "round_robin"),
                   ("grpc.max_receive_message_length", 4 * 1024 * 1024),
                   ("grpc.enable_retries", 1), ("grpc.service_config", _RETRY),
                   ("grpc.initial_reconnect_backoff_ms", 100),
                   ("grpc.min_reconnect_backoff_ms", 100),
                   ("grpc.max_reconnect_backoff_ms", 1000),
                   ("grpc.keepalive_time_ms", 20_000), ("grpc.keepalive_timeout_ms", 5_000)]


IMPRESSION_LINGER_MS = 100


def main() -> int:
    try:
        s = load_settings(GatewaySettings)
        arms = parse_arms(s.arms)
        # The rules the degraded path applies when the reranker is down: the reranker's knobs.
        rules = RerankConfig.from_settings(s)
    except (SettingsError, ValueError) as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    if s.auth and not s.api_keys_file:
        print("gateway: VIDREC_API_KEYS_FILE is required (create keys with `vidrec keys "
              "create`), or VIDREC_AUTH=false to let anyone call", file=sys.stderr)
        return 2
    setup_logging("gateway", s.log_level, s.log_format)
    # The internal services require this process's client certificate when TLS is on.
    internal = ClientSecurity(s.tls_ca, s.tls_client_cert, s.tls_client_key)
    channels = [internal.channel(a, CHANNEL_OPTIONS)
                for a in (s.candidate_addr, s.ranker_addr, s.reranker_addr)]
    if s.tracing:  # the stages' spans join the gateway's trace
        from vidrec.serving.tracing import ClientTracing

        channels = [grpc.intercept_channel(ch, ClientTracing()) for ch in channels]
    stubs = Stubs(candidate_pb2_grpc.CandidateStub(channels[0]),
                  ranker_pb2_grpc.RankerStub(channels[1]),
                  reranker_pb2_grpc.RerankerStub(channels[2]))
    store = FeatureStore.from_url(store_credentials(s), s.key_prefix, s.redis_timeout_ms / 1000)
    producer = None
    if s.kafka_bootstrap:
        from vidrec.infra.kafka import EventProducer

        # Impressions are fire-and-forget, so they may wait for a full batch: at 90 req/s
        # (10 records each) the producer cost 1.85 ms of CPU per request at linger 5 ms and
        # 0.56 ms at 100 ms. LogEvents flushes, so its records never wait for the linger.
        # Acknowledged events are kept 60 s and sent again if the broker comes back as a
        # new, empty log (the embedded one keeps records in memory): the trainer drops
        # those it applied already by event id.
        producer = EventProducer(s.kafka_bootstrap, ack_timeout_s=5.0,
                                 linger_ms=IMPRESSION_LINGER_MS, replay_window_s=60.0)
    servicer = GatewayServicer(stubs, store, producer, arms,
                               Budget(s.candidate_share, s.ranker_share,
                                      s.candidate_timeout_ms / 1000, s.ranker_timeout_ms / 1000,
                                      s.reranker_timeout_ms / 1000), rules,
                               s.max_k, s.default_deadline_ms / 1000, s.log_impressions,
                               s.hash_user_ids_in_logs)
    door = []
    if s.auth:
        secret = Path(s.token_secret_file).read_bytes().strip() if s.token_secret_file else None
        door.append(Authenticator(KeyFile(s.api_keys_file), secret,
                                  Limits(s.key_rate, s.key_burst, s.user_rate, s.user_burst),
                                  s.hash_user_ids_in_logs))
    else:
        log.warning("VIDREC_AUTH=false: anyone who reaches %s may call every method",
                    s.listen_addr)
    server = Server("gateway", s.listen_addr,
                    [gateway_pb2.DESCRIPTOR.services_by_name["Gateway"].full_name],
                    lambda g: gateway_pb2_grpc.add_GatewayServicer_to_server(servicer, g),
                    workers=32, grace_s=s.grace_s, max_in_flight=s.max_in_flight,
                    settings=s, interceptors=door)
    server.start()
    server.set_serving(True)
    server.run_until_signal()
    if servicer.impressions is not None:
        servicer.impressions.close()
    if producer is not None:
        producer.close()
    for ch in channels:
        ch.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
