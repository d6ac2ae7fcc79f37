"""`python -m vidrec.serving.healthcheck ADDR [SERVICE]`: exit 0 iff SERVING (compose probes)."""

from __future__ import annotations

import sys

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


def main() -> int:
    if len(sys.argv) < 2:
        print("usage: python -m vidrec.serving.healthcheck HOST:PORT [SERVICE]")
        return 2
    status = check(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "")
    print(status)
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())
