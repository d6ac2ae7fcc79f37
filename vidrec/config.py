"""One typed settings object per process, read from VIDREC_* environment variables.

Required addresses have no default: a gateway without VIDREC_RANKER_ADDR refuses to start
instead of failing on its first request. Any VIDREC_* variable that no settings class
knows is an error, so a typo cannot silently fall back to a default.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from vidrec.rerank import RerankConfig as _RC

PREFIX = "VIDREC_"


class SettingsError(ValueError):
    """Configuration is missing or malformed; the process must not start."""


@dataclass(frozen=True)
class CommonSettings:
    log_level: str = "INFO"
    # "text" or "json" (one object per line, with the request id: for log collectors).
    log_format: str = "text"
    # Redis URL, e.g. redis://127.0.0.1:6379/0.
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Prefix of every Redis key (schema.Keys); lets two deployments share one Redis.
    key_prefix: str = "vidrec"
    # Redis socket timeout in ms: how long a stalled Redis may hold a call. Serving
    # processes degrade past it (the user as new, lists empty); the trainer retries.
    redis_timeout_ms: float = 100.0
    # Kafka bootstrap servers, comma-separated; empty disables Kafka (offline use).
    kafka_bootstrap: str = ""
    # gRPC calls served at once before more are refused with RESOURCE_EXHAUSTED (0 = the
    # worker threads minus two kept for health checks; serving/server.py).
    max_in_flight: int = 0
    # TLS: this process's certificate and key (servers), the CA that signs every vidrec
    # certificate, and the client certificate presented to services requiring one (mTLS).
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    tls_client_cert: str = ""
    tls_client_key: str = ""
    # Plaintext on a non-loopback address is refused unless this is on.
    allow_insecure: bool = False
    # gRPC server reflection (a map of every method for whoever connects): off by default.
    reflection: bool = False
    # host:port for grpc.health.v1 alone, plaintext (Kubernetes' gRPC probes); "" = none.
    health_addr: str = ""
    # host:port of the Prometheus /metrics endpoint (vidrec/serving/metrics.py); "" = none.
    metrics_addr: str = ""
    # OpenTelemetry tracing (vidrec/serving/tracing.py): "" off, file:DIR, console, otlp.
    tracing: str = ""
    # Store credentials (vidrec/security/stores.py), secrets as mounted files: the Redis
    # password; Kafka SASL (SCRAM) and TLS; the Qdrant API key.
    redis_password_file: str = ""
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = ""
    kafka_username: str = ""
    kafka_password_file: str = ""
    kafka_ca_file: str = ""
    qdrant_api_key_file: str = ""


@dataclass(frozen=True)
class ModelServiceSettings(CommonSettings):
    """Settings shared by services that load a model version (candidate, ranker)."""

    listen_addr: str = "127.0.0.1:0"
    # With TLS on, only clients holding a certificate from VIDREC_TLS_CA get in (mTLS).
    require_client_cert: bool = True
    # Root of published artifacts: <root>/<version>/ with a LATEST pointer.
    artifact_root: str = "var/artifacts"
    # Seconds between checks of LATEST (hot swap: a new published version is picked up).
    reload_interval_s: float = 2.0
    # Number of model versions kept loaded so one request is served by one version.
    keep_versions: int = 2
    grace_s: float = 5.0


@dataclass(frozen=True)
class CandidateSettings(ModelServiceSettings):
    # Qdrant server URL; empty = the embedded qdrant-edge index under index_root.
    qdrant_url: str = ""
    index_root: str = "var/index"
    # Candidates returned per request (when the caller does not say; the gateway does).
    num_candidates: int = 200
    # HNSW search breadth of the two-tower ANN (0: the index's default, 768). Recall costs
    # latency, more so in a large catalog: 1M videos, quiet 2-core machine, recall@100
    # 0.87 at 768 (p50 1.9 ms), 0.92 at 1536 (2.8 ms), 0.96 at 3072 (5.0 ms); README.
    ann_ef: int = 0


@dataclass(frozen=True)
class RankerSettings(ModelServiceSettings):
    top_m: int = 50


@dataclass(frozen=True)
class RerankSettings(CommonSettings):
    """The rerank rules' knobs (vidrec.rerank.RerankConfig.from_settings). The reranker and
    the gateway both read them: when the reranker is down the gateway applies the same rules,
    so VIDREC_MAX_PER_CREATOR and the others must reach both processes."""

    # Defaults are RerankConfig's own (one place to change them). A cap of 0 or less
    # means no cap; mmr_lambda 1.0 = pure relevance order, 0.0 = pure diversity.
    max_per_creator: int = _RC.max_per_creator
    max_per_category: int = _RC.max_per_category
    mmr_lambda: float = _RC.mmr_lambda
    freshness_days: float = _RC.freshness_days
    freshness_boost: float = _RC.freshness_boost
    exploration_slots: int = _RC.exploration_slots
    exploration_pool: int = _RC.exploration_pool
    exploration_scope: str = _RC.exploration_scope
    # Enabled rules in order, comma-separated; empty = all (vidrec.rerank.RULES).
    rules: str = ""


@dataclass(frozen=True)
class RerankerSettings(RerankSettings):
    listen_addr: str = "127.0.0.1:0"
    # With TLS on, only clients holding a certificate from VIDREC_TLS_CA get in (mTLS).
    require_client_cert: bool = True
    grace_s: float = 5.0


@dataclass(frozen=True)
class GatewaySettings(RerankSettings):
    candidate_addr: str = field(default="", metadata={"required": True})
    ranker_addr: str = field(default="", metadata={"required": True})
    reranker_addr: str = field(default="", metadata={"required": True})
    listen_addr: str = "127.0.0.1:0"
    grace_s: float = 5.0
    # Deadline of one Recommend call when the client sets none.
    default_deadline_ms: float = 300.0
    # Share of the remaining deadline each stage may use.
    candidate_share: float = 0.4
    ranker_share: float = 0.6
    # Each stage's ceiling in ms, whatever the client's deadline (then the degraded path).
    candidate_timeout_ms: float = 300.0
    ranker_timeout_ms: float = 300.0
    reranker_timeout_ms: float = 200.0
    # Experiment arms "name:weight,name:weight"; a user is hashed to one arm.
    arms: str = "hybrid:1"
    max_k: int = 500
    log_impressions: bool = True
    # Callers: API keys (hashed, `vidrec keys`) and user tokens (JWT signed with the secret
    # in this file). Without a key file the gateway refuses to start unless auth is off.
    auth: bool = True
    api_keys_file: str = ""
    token_secret_file: str = ""
    # External clients authenticate with keys; a client certificate is optional here.
    require_client_cert: bool = False
    # Token buckets per caller and method, calls/s sustained and burst: per service key,
    # and per user token (one device).
    key_rate: float = 2000.0
    key_burst: float = 4000.0
    user_rate: float = 20.0
    user_burst: float = 60.0
    # Log user ids as a short SHA-256 prefix instead of the id.
    hash_user_ids_in_logs: bool = False


@dataclass(frozen=True)
class TrainerSettings(CommonSettings):
    artifact_root: str = "var/artifacts"
    data_dir: str = "var/data"
    qdrant_url: str = ""
    # A published collection's layout on a Qdrant server cluster (store/index.py
    # CollectionLayout; docs/qdrant.md sizes it): shards, copies of each, copies a write
    # waits for, original vectors on disk.
    qdrant_shards: int = 1
    qdrant_replicas: int = 1
    qdrant_write_consistency: int = 1
    qdrant_on_disk: bool = False
    index_root: str = "var/index"
    group_id: str = "vidrec-trainer"
    batch_size: int = 2000
    # Retrain after this many new events (0 = never) or seconds (0 = never).
    retrain_every_events: int = 0
    retrain_every_s: float = 0.0
    # Seconds between fold-in passes over users with new events.
    foldin_interval_s: float = 5.0
    # Where the trainer appends applied events and upserted videos (the retrain's input).
    events_dir: str = "var/events"
    # Retrain gate: the newest fraction of logged events both models are scored on.
    retrain_window: float = 0.2
    # Seconds an applied event id is remembered to catch a client resending it (Kafka
    # redeliveries are caught by offsets at any age); memory grows with traffic x horizon.
    dedupe_horizon_s: float = 3600.0
    # A user's likes move the trending ("popular") list only after they reacted to more
    # than this many videos: fresh fake accounts cannot lift a video for every new user.
    trending_min_seen: int = 5
    # This replica's name in a trainer group (one Kafka consumer group; each replica owns
    # some partitions of vidrec.events, so the partition count is the most replicas that
    # do work). Names its event log file and its hold on the retrain lease; empty: the
    # host name.
    replica_id: str = ""
    # How long the retrain lease lasts without renewal (renewed every third of it while
    # a retrain runs); one retrain at a time across replicas.
    retrain_lease_s: float = 60.0


@dataclass(frozen=True)
class WebSettings(CommonSettings):
    """The HTTP/JSON front door and the operator console (services/web)."""

    # host:port of the HTTPS (or, on loopback, HTTP) listener.
    listen_addr: str = "127.0.0.1:0"
    # The gateway every /v1 call is forwarded to, with the caller's credentials.
    gateway_addr: str = field(default="", metadata={"required": True})
    # Optional, for the console's service list and health (empty: not shown).
    candidate_addr: str = ""
    ranker_addr: str = ""
    reranker_addr: str = ""
    # Optional, for the console's publish history and rollback (empty: not shown).
    artifact_root: str = ""
    index_root: str = ""
    qdrant_url: str = ""
    # Deadline of one forwarded call, and the largest request body accepted.
    call_timeout_ms: float = 5000.0
    max_body_bytes: int = 2 * 1024 * 1024
    # Connections served at once (one thread each); past it a new one gets 503.
    max_connections: int = 256
    # The operator console at /console/: signed in with an API key from this file holding
    # the 'admin' or 'stats:read' scope (rollback needs 'admin'). Empty: no console.
    console: bool = True
    api_keys_file: str = ""
    # Seconds between samples of the per-arm online metrics the console plots.
    console_sample_s: float = 10.0
    grace_s: float = 5.0


ALL_SETTINGS: tuple[type, ...] = (
    CandidateSettings,
    RankerSettings,
    RerankerSettings,
    GatewaySettings,
    TrainerSettings,
    WebSettings,
)

T = TypeVar("T")

SERVICE_SETTINGS: dict[str, type] = {
    "candidate": CandidateSettings,
    "ranker": RankerSettings,
    "reranker": RerankerSettings,
    "gateway": GatewaySettings,
    "trainer": TrainerSettings,
    "web": WebSettings,
}


def settings_for(service: str) -> list[str]:
    """Field names of a service's settings class."""
    return [f.name for f in dataclasses.fields(SERVICE_SETTINGS[service])]


def known_keys() -> set[str]:
    return {PREFIX + f.name.upper() for cls in ALL_SETTINGS for f in dataclasses.fields(cls)}


def _convert(name: str, raw: str, typ: Any) -> Any:
    if isinstance(typ, str):
        typ = {"str": str, "int": int, "float": float, "bool": bool}[typ]
    if typ is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{PREFIX}{name.upper()}={raw!r}: expected true/false")
    try:
        return typ(raw)
    except ValueError as exc:
        raise SettingsError(f"{PREFIX}{name.upper()}={raw!r}: expected {typ.__name__}") from exc


def load_settings(cls: type[T], env: Mapping[str, str] | None = None) -> T:
    """Build `cls` from VIDREC_* variables; raise SettingsError on unknown or missing keys."""
    env = os.environ if env is None else env
    unknown = sorted(k for k in env if k.startswith(PREFIX) and k not in known_keys())
    if unknown:
        raise SettingsError(f"unknown settings: {', '.join(unknown)}")
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    missing = []
    assert dataclasses.is_dataclass(cls)
    for f in dataclasses.fields(cls):
        key = PREFIX + f.name.upper()
        typ = hints[f.name]
        if isinstance(typ, types.UnionType):
            typ = str
        if key in env and env[key] != "":
            values[f.name] = _convert(f.name, env[key], typ)
        elif f.metadata.get("required"):
            missing.append(key)
    if missing:
        raise SettingsError(f"required settings not set: {', '.join(missing)}")
    return cls(**values)
