"""The gateway's door: who is calling (API key or user token), may they call this method
for this user, and are they within their rate.

- No `authorization: Bearer ...` -> UNAUTHENTICATED; an unknown, revoked or expired
  credential -> UNAUTHENTICATED (one message for all: no oracle).
- A key without the method's scope -> PERMISSION_DENIED. `admin` holds every scope.
- A user token acts for its own user only: Recommend's user_id and every event's user_id
  must be the token's user, else PERMISSION_DENIED; it can never read stats.
- Each caller (key id, or token user) has a token bucket per method: past it,
  RESOURCE_EXHAUSTED with the seconds to wait, before any work is done.
- Health is always open (probes carry no credentials).
Keys and tokens never reach a log line: only key ids and (optionally hashed) user ids.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from vidrec.security import tokens
from vidrec.security.keys import KeyFile
from vidrec.serving.interceptor import Handler, UnaryInterceptor

log = logging.getLogger(__name__)

HEALTH_PREFIX = "/grpc.health.v1.Health/"
REFLECTION_PREFIX = "/grpc.reflection."
RECOMMEND = "/vidrec.v1.Gateway/Recommend"
METHOD_SCOPES = {
    "/vidrec.v1.Gateway/Recommend": "recommend",
    "/vidrec.v1.Gateway/LogEvents": "events:write",
    "/vidrec.v1.Gateway/GetStats": "stats:read",
    "/vidrec.v1.Gateway/SimilarVideos": "recommend",
    "/vidrec.v1.Gateway/UpsertVideos": "catalog:write",
    "/vidrec.v1.Gateway/HideVideos": "catalog:write",
}


@dataclass(frozen=True)
class Limits:
    """Token buckets per caller and method: `rate` calls/s sustained, `burst` at once. A
    service key (a trusted back end serving many users) gets the key limits; a user token
    (one device) the much lower user limits."""

    key_rate: float = 2000.0
    key_burst: float = 4000.0
    user_rate: float = 20.0
    user_burst: float = 60.0

    def of(self, principal: Principal) -> tuple[float, float]:
        if principal.user is not None:
            return self.user_rate, self.user_burst
        return self.key_rate, self.key_burst


@dataclass(frozen=True)
class Principal:
    name: str  # for logs and buckets: "key:<id>" or "user:<hashed id>"
    user: str | None  # a token's user: the only user it may act for
    key_scopes: frozenset[str]


class _Buckets:
    def __init__(self, max_entries: int = 100_000) -> None:
        self._b: dict[tuple[str, str], tuple[float, float]] = {}
        self._lock = threading.Lock()
        self.max_entries = max_entries

    def take(self, who: str, scope: str, rate: float, burst: float) -> float:
        """0 if a call may go now, else the seconds until one may."""
        now = time.monotonic()
        with self._lock:
            if len(self._b) > self.max_entries:  # bound memory: forget idle callers
                self._b = {k: v for k, v in self._b.items() if now - v[1] < 60}
            tokens_, last = self._b.get((who, scope), (burst, now))
            tokens_ = min(burst, tokens_ + (now - last) * rate)
            if tokens_ >= 1:
                self._b[(who, scope)] = (tokens_ - 1, now)
                return 0.0
            self._b[(who, scope)] = (tokens_, now)
            return (1 - tokens_) / rate if rate > 0 else 60.0


def log_user(user_id: str, hashed: bool) -> str:
    return hashlib.sha256(user_id.encode()).hexdigest()[:12] if hashed else user_id


class Authenticator(UnaryInterceptor):
    skip_prefixes = (HEALTH_PREFIX,)

    def __init__(self, keys: KeyFile, token_secret: bytes | None = None,
                 limits: Limits | None = None, hash_user_ids: bool = False,
                 user_ids: dict[str, Callable[[Any], list[str]]] | None = None) -> None:
        self.keys = keys
        self.token_secret = token_secret
        self.limits = limits or Limits()
        self.hash_user_ids = hash_user_ids
        # Per method: the user ids a request acts for (a token may act for its user only).
        self.user_ids = user_ids or {
            "/vidrec.v1.Gateway/Recommend": lambda r: [r.user_id],
            "/vidrec.v1.Gateway/LogEvents": lambda r: [e.user_id for e in r.events],
            # "More like this" needs no user; with one, a token may name only its own.
            "/vidrec.v1.Gateway/SimilarVideos": lambda r: [r.user_id] if r.user_id else [],
        }
        self._buckets = _Buckets()

    def identify(self, metadata: Any) -> Principal | None:
        auth = ""
        for k, v in metadata or ():
            if k == "authorization":
                auth = v if isinstance(v, str) else v.decode("latin-1")
        if not auth.startswith("Bearer ") or len(auth) > 4096:
            return None
        cred = auth[len("Bearer "):].strip()
        key = self.keys.verify(cred)
        if key is not None:
            return Principal(f"key:{key.id}", None, frozenset(key.scopes))
        if self.token_secret and cred.count(".") == 2:
            try:
                user, scopes = tokens.verify(self.token_secret, cred)
            except tokens.InvalidToken:
                return None
            return Principal(f"user:{log_user(user, self.hash_user_ids)}", user,
                             frozenset(scopes))
        return None

    def wrap(self, inner: Handler, method: str, details: grpc.HandlerCallDetails) -> Handler:
        method_scope = METHOD_SCOPES.get(method, "admin")
        principal = self.identify(details.invocation_metadata)
        users_of = self.user_ids.get(method)

        def checked(request: Any, context: grpc.ServicerContext) -> Any:
            # An operator's preview of a user's list (no impressions) is a read of what
            # the system does, not a user's request: the stats scope, never a user token.
            scope = ("stats:read" if method == RECOMMEND and getattr(request, "preview", False)
                     else method_scope)
            if principal is None:
                context.abort(grpc.StatusCode.UNAUTHENTICATED,
                              "missing or invalid credentials: send 'authorization: Bearer "
                              "<API key or user token>'")
            assert principal is not None
            if not (scope in principal.key_scopes or "admin" in principal.key_scopes):
                context.abort(grpc.StatusCode.PERMISSION_DENIED,
                              f"this credential lacks the {scope!r} scope")
            if principal.user is not None:
                others = {u for u in (users_of(request) if users_of else [None])
                          if u != principal.user}
                if others:
                    context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                  "a user token may act for its own user only")
            rate, burst = self.limits.of(principal)
            wait = self._buckets.take(principal.name, scope, rate, burst)
            if wait > 0:
                context.set_trailing_metadata((("retry-after-ms", str(int(wait * 1000) + 1)),))
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"rate limit for {scope}: retry in {wait:.2f}s")
            return inner(request, context)

        return checked
