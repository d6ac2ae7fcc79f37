"""Open-loop gRPC load generator, run in its own process.

Requests are sent on a fixed schedule whatever the responses do (open loop), and each
latency is measured from the *scheduled* send time, so a stalled server cannot hide its
queueing (no coordinated omission).
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc

from vidrec.security.client import connect
from vidrec.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc


def paced(rate: float, n: int, t0: float) -> Iterator[float]:
    """The scheduled send times t0 + i/rate, sleeping until each (open loop)."""
    for i in range(n):
        due = t0 + i / rate
        now = time.perf_counter()
        if due > now:
            time.sleep(due - now)
        yield due


def request_fields(rng: random.Random, users: list[str], k: int, new_user_share: float
                   ) -> dict[str, Any]:
    """One Recommend request of the benchmark mix, as fields: a known user, or (with
    probability new_user_share) a new one known by age and country."""
    if rng.random() < new_user_share:
        return {"k": k, "profile": {"age": rng.randint(16, 70),
                                    "country": rng.choice(["US", "IN", "BR", "DE"])}}
    return {"user_id": rng.choice(users), "k": k}


def run(addr: str, rate: float, duration_s: float, users: list[str], k: int, seed: int,
        new_user_share: float = 0.1, var: str | None = None) -> dict:
    """`var`: the stack's directory, whose run/stack.json holds its key and TLS files."""
    rng = random.Random(seed)
    lat: list[float] = []
    refused: list[float] = []  # RESOURCE_EXHAUSTED answers: how fast the excess is told
    degraded = [0]
    errors: dict[str, int] = {}
    lock = threading.Lock()
    pending = threading.Semaphore(0)
    n = int(rate * duration_s)
    with connect(addr, var) as ch:
        stub = gateway_pb2_grpc.GatewayStub(ch)
        stub.Recommend(gateway_pb2.RecommendRequest(user_id=users[0], k=k), timeout=10)
        t0 = time.perf_counter() + 0.1
        for due in paced(rate, n, t0):
            f = request_fields(rng, users, k, new_user_share)
            req = gateway_pb2.RecommendRequest(
                user_id=f.get("user_id", ""), k=k,
                profile=common_pb2.UserProfile(**f["profile"]) if "profile" in f else None)
            fut = stub.Recommend.future(req, timeout=2.0)

            def done(f: grpc.Future, due: float = due) -> None:
                t = time.perf_counter() - due
                with lock:
                    exc = f.exception()
                    if exc is None:
                        lat.append(t * 1000)
                        degraded[0] += bool(f.result().degraded)
                    else:
                        code = exc.code().name if hasattr(exc, "code") else repr(exc)
                        errors[code] = errors.get(code, 0) + 1
                        if code == "RESOURCE_EXHAUSTED":
                            refused.append(t * 1000)
                pending.release()

            fut.add_done_callback(done)
        for _ in range(n):
            pending.acquire(timeout=10)
        wall = time.perf_counter() - t0
    lat.sort()
    refused.sort()

    def pct(p: float, xs: list[float] = lat) -> float:
        return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] if xs else float("nan")

    return {"rate": rate, "sent": n, "ok": len(lat), "errors": errors,
            "degraded": degraded[0],
            "achieved_rps": len(lat) / wall if wall > 0 else 0.0,
            "p50_ms": pct(50), "p90_ms": pct(90), "p99_ms": pct(99),
            "max_ms": lat[-1] if lat else float("nan"),
            "refused_p99_ms": pct(99, refused)}


if __name__ == "__main__":
    args = json.loads(sys.argv[1])
    print(json.dumps(run(**args)))
