"""Open-loop HTTPS load generator for the web front door (POST /v1/recommend), run in its
own process: the same schedule, request mix and latency definition as benchmarks.loadgen
(measured from the scheduled send time), over keep-alive connections.
"""

from __future__ import annotations

import http.client
import json
import queue
import random
import ssl
import sys
import threading
import time
import urllib.parse

from benchmarks.loadgen import paced, request_fields


def run(url: str, rate: float, duration_s: float, users: list[str], k: int, seed: int,
        api_key: str, ca: str = "", new_user_share: float = 0.1, workers: int = 16) -> dict:
    rng = random.Random(seed)
    parts = urllib.parse.urlsplit(url)
    ctx = ssl.create_default_context(cafile=ca) if parts.scheme == "https" else None
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    lat: list[float] = []
    errors: dict[str, int] = {}
    degraded = [0]
    lock = threading.Lock()
    jobs: queue.Queue[tuple[float, bytes] | None] = queue.Queue()

    def connection() -> http.client.HTTPConnection:
        host, port = parts.hostname or "127.0.0.1", parts.port
        if ctx is not None:
            return http.client.HTTPSConnection(host, port, timeout=5, context=ctx)
        return http.client.HTTPConnection(host, port, timeout=5)

    ready = threading.Barrier(workers + 1)
    warm = json.dumps({"user_id": users[0], "k": k}).encode()

    def worker() -> None:
        conn = connection()
        # Connect and handshake before the schedule starts (not measured).
        conn.request("POST", "/v1/recommend", body=warm, headers=headers)
        conn.getresponse().read()
        ready.wait()
        while (job := jobs.get()) is not None:
            due, body = job
            try:
                conn.request("POST", "/v1/recommend", body=body, headers=headers)
                r = conn.getresponse()
                payload = r.read()
                t = (time.perf_counter() - due) * 1000
                with lock:
                    if r.status == 200:
                        lat.append(t)
                        degraded[0] += bool(json.loads(payload).get("degraded"))
                    else:
                        errors[str(r.status)] = errors.get(str(r.status), 0) + 1
            except Exception as exc:
                with lock:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                conn.close()
                conn = connection()
        conn.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    ready.wait()  # every connection open and warm
    n = int(rate * duration_s)
    t0 = time.perf_counter() + 0.1
    for due in paced(rate, n, t0):
        jobs.put((due, json.dumps(request_fields(rng, users, k, new_user_share)).encode()))
    for _ in threads:
        jobs.put(None)
    for t in threads:
        t.join(30)
    wall = time.perf_counter() - t0
    lat.sort()

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p / 100 * len(lat)))] if lat else float("nan")

    return {"rate": rate, "sent": n, "ok": len(lat), "errors": errors, "degraded": degraded[0],
            "achieved_rps": len(lat) / wall if wall > 0 else 0.0, "p50_ms": pct(50),
            "p90_ms": pct(90), "p99_ms": pct(99)}


if __name__ == "__main__":
    print(json.dumps(run(**json.loads(sys.argv[1]))))
