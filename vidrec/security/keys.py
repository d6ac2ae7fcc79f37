"""API keys: random secrets shown once, stored only as SHA-256 hashes in a JSON file.

A key reads `vrk_<id>_<secret>`: the id finds the record without scanning, the hash of the
whole key is compared in constant time. The secret has 256 bits, so a plain SHA-256 (no
salt, no slow hash) cannot be brute-forced from the file: the same reasoning as GitHub's
and Stripe's tokens. The file is written atomically with mode 0600 and re-read when it
changes, so `vidrec keys revoke` takes effect in a running gateway within a second.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

SCOPES = ("recommend", "events:write", "stats:read", "catalog:write", "admin")
PREFIX = "vrk"


@dataclass
class ApiKey:
    id: str
    name: str
    scopes: list[str]
    hash: str
    created: float = field(default_factory=time.time)
    revoked: bool = False

    def allows(self, scope: str) -> bool:
        return not self.revoked and (scope in self.scopes or "admin" in self.scopes)


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyFile:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._keys: dict[str, ApiKey] = {}
        self._stamp: tuple[float, int] | None = None
        self._checked = 0.0
        self._lock = threading.Lock()

    # --- management (CLI) --------------------------------------------------------------

    def create(self, name: str, scopes: list[str]) -> tuple[ApiKey, str]:
        """A new key; returns its record and the key itself (never stored)."""
        bad = [s for s in scopes if s not in SCOPES]
        if bad or not scopes:
            raise ValueError(f"unknown scope(s) {bad or scopes}; choose from {', '.join(SCOPES)}")
        if not name or len(name) > 64:
            raise ValueError("a key needs a name of 1..64 characters")
        keys = self._read()
        if any(k.name == name and not k.revoked for k in keys.values()):
            raise ValueError(f"a key named {name!r} exists; revoke it first")
        kid = secrets.token_hex(6)
        plain = f"{PREFIX}_{kid}_{secrets.token_urlsafe(32)}"
        rec = ApiKey(kid, name, sorted(set(scopes)), _digest(plain))
        keys[kid] = rec
        self._write(keys)
        return rec, plain

    def all(self) -> list[ApiKey]:
        return sorted(self._read().values(), key=lambda k: k.created)

    def revoke(self, id_or_name: str) -> list[ApiKey]:
        keys = self._read()
        hit = [k for k in keys.values() if id_or_name in (k.id, k.name) and not k.revoked]
        for k in hit:
            k.revoked = True
        if hit:
            self._write(keys)
        return hit

    # --- checking (gateway) ------------------------------------------------------------

    def verify(self, presented: str) -> ApiKey | None:
        """The live key `presented` is, else None."""
        parts = presented.split("_", 2)
        if len(parts) != 3 or parts[0] != PREFIX:
            return None
        self._refresh()
        rec = self._keys.get(parts[1])
        if rec is None or rec.revoked:
            return None
        return rec if hmac.compare_digest(rec.hash, _digest(presented)) else None

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < 1.0:
            return
        with self._lock:
            self._checked = now
            try:
                st = self.path.stat()
            except FileNotFoundError:
                self._keys, self._stamp = {}, None
                return
            stamp = (st.st_mtime, st.st_size)
            if stamp != self._stamp:
                self._keys, self._stamp = self._read(), stamp

    # --- file --------------------------------------------------------------------------

    def _read(self) -> dict[str, ApiKey]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ValueError(f"{self.path}: not a vidrec key file: {exc}") from exc
        return {k["id"]: ApiKey(**k) for k in raw.get("keys", [])}

    def _write(self, keys: dict[str, ApiKey]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".keys-")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump({"keys": [asdict(k) for k in keys.values()]}, f, indent=2)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
