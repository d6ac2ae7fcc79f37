"""User-bound tokens: short-lived JWTs (HS256) naming one user, for calls from a device.

A trusted back end mints one per signed-in user (`mint`, or `vidrec keys token`) with the
deployment's token secret; the gateway accepts it for Recommend and LogEvents of that user
only. Standard format and library (PyJWT), so any back end can mint them.
"""

from __future__ import annotations

import time

import jwt

ISSUER = "vidrec"
USER_SCOPES = ("recommend", "events:write")
MAX_TTL_S = 24 * 3600.0


class InvalidToken(ValueError):
    """The token is malformed, expired, or not signed with this deployment's secret."""


def mint(secret: bytes, user_id: str, ttl_s: float = 900.0,
         scopes: tuple[str, ...] = USER_SCOPES) -> str:
    if not 0 < ttl_s <= MAX_TTL_S:
        raise ValueError(f"ttl must be in (0, {MAX_TTL_S:.0f}] seconds")
    bad = [s for s in scopes if s not in USER_SCOPES]
    if bad:
        raise ValueError(f"a user token may carry only {USER_SCOPES}, not {bad}")
    now = int(time.time())
    return jwt.encode({"iss": ISSUER, "sub": user_id, "iat": now, "exp": now + int(ttl_s),
                       "scope": " ".join(scopes)}, secret, algorithm="HS256")


def verify(secret: bytes, token: str) -> tuple[str, set[str]]:
    """(user_id, scopes) of a valid token; InvalidToken otherwise."""
    try:
        claims = jwt.decode(token, secret, algorithms=["HS256"], issuer=ISSUER,
                            options={"require": ["exp", "iat", "sub", "iss"]})
    except jwt.PyJWTError as exc:
        raise InvalidToken(str(exc)) from exc
    if claims["exp"] - claims["iat"] > MAX_TTL_S:
        raise InvalidToken("token lifetime exceeds the maximum")
    return str(claims["sub"]), set(str(claims.get("scope", "")).split()) & set(USER_SCOPES)
