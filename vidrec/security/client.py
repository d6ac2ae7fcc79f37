"""The client side: how a tool, a test or the gateway opens a channel to a vidrec port.

`ClientSecurity.from_stack(var)` reads what `make run` recorded in var/run/stack.json
(API key, CA, client certificate); `from_env()` reads VIDREC_TLS_CA and
VIDREC_TLS_CLIENT_CERT/KEY; `connect(addr)` is what the tools use.
With a CA the channel is TLS (and mTLS with a client certificate); with a key or token
every call carries `authorization: Bearer ...`.
"""

from __future__ import annotations

import json
import os
from collections import namedtuple
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from vidrec.security.tls import channel_credentials


@dataclass(frozen=True)
class ClientSecurity:
    ca: str = ""
    cert: str = ""
    key: str = ""
    bearer: str = ""  # an API key or a user token

    @classmethod
    def from_stack(cls, var: str | os.PathLike[str] = "var") -> ClientSecurity:
        state = json.loads((Path(var) / "run" / "stack.json").read_text())
        return cls.from_state(state)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ClientSecurity:
        tls = state.get("tls") or {}
        return cls(tls.get("ca", ""), tls.get("client_cert", ""), tls.get("client_key", ""),
                   state.get("api_key", ""))

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ClientSecurity:
        e = os.environ if env is None else env
        return cls(e.get("VIDREC_TLS_CA", ""), e.get("VIDREC_TLS_CLIENT_CERT", ""),
                   e.get("VIDREC_TLS_CLIENT_KEY", ""))

    def with_bearer(self, bearer: str) -> ClientSecurity:
        return ClientSecurity(self.ca, self.cert, self.key, bearer)

    def channel(self, addr: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
        if not self.ca:
            if self.bearer:
                # Call credentials need a secure channel: a bearer on a plaintext channel
                # goes as plain metadata (loopback tests of an insecure gateway only).
                return grpc.intercept_channel(grpc.insecure_channel(addr, options=options),
                                              _Bearer(self.bearer))
            return grpc.insecure_channel(addr, options=options)
        creds = channel_credentials(self.ca, self.cert, self.key)
        if self.bearer:
            creds = grpc.composite_channel_credentials(
                creds, grpc.access_token_call_credentials(self.bearer))
        return grpc.secure_channel(addr, creds, options=options)


class CallDetails(namedtuple("CallDetails", ("method", "timeout", "metadata", "credentials",
                                       "wait_for_ready", "compression")),
               grpc.ClientCallDetails):
    pass


class _Bearer(grpc.UnaryUnaryClientInterceptor):
    def __init__(self, bearer: str) -> None:
        self.md = ("authorization", f"Bearer {bearer}")

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        md = list(details.metadata or []) + [self.md]
        return continuation(CallDetails(details.method, details.timeout, md, details.credentials,
                                     details.wait_for_ready, details.compression), request)


def connect(addr: str, var: str | os.PathLike[str] | None = None,
            options: Sequence[tuple[str, Any]] = ()) -> grpc.Channel:
    """A channel to `addr` with the credentials of the local stack: var/run/stack.json
    (`var` or $VIDREC_VAR, default ./var) when it exists, else plaintext without a key.
    `make run` records its admin key and TLS files there, so `vidrec simulate`, `vidrec
    stats` and the benchmarks reach it with no flags."""
    root = Path(var if var is not None else os.environ.get("VIDREC_STACK_VAR", "var"))
    path = root / "run" / "stack.json"
    sec = ClientSecurity()
    if path.exists():
        sec = ClientSecurity.from_state(json.loads(path.read_text()))
    return sec.channel(addr, options)
