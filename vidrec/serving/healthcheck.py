"""`python -m vidrec.serving.healthcheck ADDR [SERVICE]`: exit 0 iff SERVING (compose probes);
`... --trainer [MAX_AGE_S]`: exit 0 iff the trainer's heartbeat is fresh and owns partitions;
`... --http URL`: exit 0 iff URL answers 200 (the web front door's /readyz; HTTPS verified
with VIDREC_TLS_CA)."""

from __future__ import annotations

import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from vidrec.security.client import ClientSecurity


def check(addr: str, service: str = "", timeout: float = 2.0,
          security: ClientSecurity | None = None) -> str:
    """The health status; over TLS (with this process's client certificate: the internal
    services require one) when `security`, or VIDREC_TLS_CA in the environment, says so."""
    sec = security if security is not None else ClientSecurity.from_env()
    with sec.with_bearer("").channel(addr) as ch:
        try:
            resp = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as exc:
            return f"UNREACHABLE ({exc.code().name})"
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)


def trainer_status(max_age_s: float = 30.0, redis_url: str = "", key_prefix: str = "") -> str:
    """The trainer's health from its progress: its heartbeat in Redis (written every 2 s
    by the consuming loop, with the partitions it owns) must be younger than `max_age_s`
    and name at least one partition. Redis comes from `redis_url` (`make run`'s
    stack.json), else from the environment's settings, as the trainer's own do. A replica
    of a trainer group (VIDREC_REPLICA_ID) is judged by its own heartbeat, and one without
    partitions is a healthy standby (the group has more replicas than partitions)."""
    from vidrec.store.features import FeatureStore

    replica = ""
    if not redis_url:
        from vidrec.config import TrainerSettings, load_settings
        from vidrec.security.stores import store_credentials

        s = load_settings(TrainerSettings)
        redis_url, key_prefix, replica = store_credentials(s), s.key_prefix, s.replica_id
    try:
        beat = FeatureStore.from_url(redis_url, key_prefix or "vidrec", 2.0).heartbeat(replica)
    except Exception as exc:  # Redis unreachable: the trainer cannot be applying events
        return f"UNREACHABLE (Redis: {type(exc).__name__})"
    if beat is None:
        return "NO_HEARTBEAT"
    age = time.time() - float(beat.get("t", 0))
    if age > max_age_s:
        return f"STALLED ({age:.0f}s since the last heartbeat)"
    if not beat.get("partitions"):
        if replica:
            print(f"trainer {replica}: standby (no partitions)", file=sys.stderr)
            return "SERVING"
        return "NO_PARTITIONS"
    lag = beat.get("lag", -1)
    if lag is not None and lag >= 0:
        print(f"trainer: heartbeat {age:.0f}s old, {beat['partitions']} partitions, "
              f"lag {lag} records", file=sys.stderr)
    return "SERVING"


def http_status(url: str, ca: str = "", timeout: float = 1.0) -> str:
    """SERVING when `url` answers 200, else what went wrong (readiness loops, probes)."""
    import ssl
    import urllib.error
    import urllib.request

    ctx = ssl.create_default_context(cafile=ca) if ca else None
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=ctx) as r:
            return "SERVING" if r.status == 200 else f"HTTP {r.status}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except Exception as exc:
        return f"UNREACHABLE ({type(exc).__name__})"


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--http":
        import os

        status = http_status(sys.argv[2], os.environ.get("VIDREC_TLS_CA", ""), timeout=5.0)
        print(status)
        return 0 if status == "SERVING" else 1
    if len(sys.argv) >= 2 and sys.argv[1] == "--trainer":
        max_age = float(sys.argv[2]) if len(sys.argv) > 2 else 30.0
        status = trainer_status(max_age)
        print(status)
        return 0 if status == "SERVING" else 1
    if len(sys.argv) < 2:
        print("usage: python -m vidrec.serving.healthcheck HOST:PORT [SERVICE]\n"
              "       python -m vidrec.serving.healthcheck --trainer [MAX_AGE_S]\n"
              "       python -m vidrec.serving.healthcheck --http URL")
        return 2
    status = check(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "")
    print(status)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
