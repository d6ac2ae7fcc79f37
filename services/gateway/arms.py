"""Experiment arms: each user is hashed to one arm, the same one on every request."""

from __future__ import annotations

import hashlib


def parse_arms(spec: str) -> list[tuple[str, float]]:
    """"two_tower:1,mf_only:1" -> [("two_tower", 1.0), ("mf_only", 1.0)]."""
    arms = []
    for part in spec.split(","):
        if not part.strip():
            continue
        name, _, w = part.partition(":")
        weight = float(w) if w else 1.0
        if weight <= 0 or not name.strip():
            raise ValueError(f"bad arm {part!r}: want name:positive_weight")
        arms.append((name.strip(), weight))
    if not arms:
        raise ValueError("no experiment arms configured")
    return arms


def assign(user_key: str, arms: list[tuple[str, float]]) -> str:
    h = int.from_bytes(hashlib.sha256(user_key.encode()).digest()[:8], "big") / 2**64
    total = sum(w for _, w in arms)
    acc = 0.0
    for name, w in arms:
        acc += w / total
        if h < acc:
            return name
    return arms[-1][0]
