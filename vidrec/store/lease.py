"""One retrain at a time across trainer replicas: a lease in Redis with a fencing token.

A replica that wants to retrain takes the lease (SET NX PX under a token from an INCR:
every new holder gets a larger one) and renews it while it trains. A holder that stalled
past its lease (a long pause, a partition from Redis) may still believe it holds it; so
the publish step passes a fence first: its token must be the current holder's and at
least every token that passed the fence before, checked and recorded in one script. The
stale holder's publish is refused; it never replaces a newer model.

The three keys share the hash tag `{lease}`: one slot, so the scripts run on Redis
Cluster as on a single Redis. What is left: a holder that passed the fence and then
stalled before its publish completed can still publish late; the publish's own version
check (artifacts' ever-increasing ids) keeps the newest model in front.
"""

from __future__ import annotations

from typing import Any

from vidrec import schema

# KEYS: lease, token counter. ARGV: holder, ttl ms. The holder's token (new or renewed),
# or nil when another holds the lease.
_ACQUIRE = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local h, t = string.match(cur, '^(.*)|(%d+)$')
  if h == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return tonumber(t)
  end
  return false
end
local t = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. t, 'PX', ARGV[2])
return t
"""

# KEYS: lease. ARGV: holder|token, ttl ms (0: release). 1 if that is still the lease.
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if tonumber(ARGV[2]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2])
else redis.call('DEL', KEYS[1]) end
return 1
"""

# KEYS: lease, fence. ARGV: holder|token, token. 1 if the token may publish.
_FENCE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local seen = tonumber(redis.call('GET', KEYS[2]) or '0')
local t = tonumber(ARGV[2])
if t < seen then return 0 end
redis.call('SET', KEYS[2], ARGV[2])
return 1
"""


class LeaseLost(RuntimeError):
    """The lease is no longer this holder's: its work must not be published."""


class Lease:
    """The retrain lease as one holder sees it (FeatureStore.lease builds it)."""

    def __init__(self, client: Any, keys: schema.Keys, holder: str, ttl_s: float) -> None:
        if "|" in holder:
            raise ValueError("a lease holder's name cannot contain '|'")
        self.keys = keys
        self.holder = holder
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._fence = client.register_script(_FENCE)
        self.token: int | None = None

    def acquire(self) -> int | None:
        """Take (or extend) the lease; its fencing token, or None if another holds it."""
        t = self._acquire(keys=[self.keys.trainer_lease(), self.keys.trainer_lease_counter()],
                          args=[self.holder, self.ttl_ms])
        self.token = int(t) if t is not None else None
        return self.token

    def renew(self) -> bool:
        """Extend the lease if it is still ours (call every ttl/3 while working)."""
        return self.token is not None and self._call(self._renew, self.ttl_ms)

    def release(self) -> None:
        if self.token is not None:
            self._call(self._renew, 0)
        self.token = None

    def fence(self) -> None:
        """Raise LeaseLost unless this holder's token may publish now (the check and the
        record of the token are one script)."""
        if self.token is None or not int(self._fence(
                keys=[self.keys.trainer_lease(), self.keys.trainer_lease_fence()],
                args=[f"{self.holder}|{self.token}", self.token])):
            raise LeaseLost(f"retrain lease lost by {self.holder} (token {self.token})")

    def _call(self, script: Any, ttl_ms: int) -> bool:
        return bool(int(script(keys=[self.keys.trainer_lease()],
                               args=[f"{self.holder}|{self.token}", ttl_ms])))
