"""The one-machine stack restarts what crashes, and gives up on a crash loop."""

from __future__ import annotations

import os
from pathlib import Path

from vidrec.stack import MAX_RESTARTS, ServiceProcess, Stack


def test_a_crash_loop_is_restarted_a_bounded_number_of_times(tmp_path: Path) -> None:
    stack = Stack(tmp_path)
    # `python -m services.no_such_service` exits at once with an error: a crash loop.
    sp = ServiceProcess("no_such_service", dict(os.environ), tmp_path / "x.log")
    stack.services["x"] = sp
    sp.start()
    restarts = 0
    for i in range(MAX_RESTARTS + 3):
        assert sp.proc is not None
        sp.proc.wait(30)
        restarts += len(stack.supervise(now=float(i)))
    assert restarts == MAX_RESTARTS  # then left down
    assert not sp.alive()
    # Out of the window, it gets another chance.
    assert stack.supervise(now=1000.0) == ["x"]
    sp.stop()


def test_a_killed_redis_is_restarted_with_everything_it_acknowledged(tmp_path: Path) -> None:
    """make run's Redis (durable) SIGKILLed: the supervisor brings it back on its port from
    the append-only file; the stack used to stop altogether, losing the memory-only state."""
    import signal

    from vidrec.store.features import FeatureStore, UserSeed

    stack = Stack(tmp_path, durable=True)
    stack.start_stores(kafka=False)
    try:
        assert stack.redis is not None
        store = FeatureStore.from_url(stack.redis_url)
        store.seed_users([UserSeed("u1", {}, history=["a", "b"], seen=["a", "b", "c"])])
        port = stack.redis.port
        assert stack.redis.pid is not None
        os.killpg(stack.redis.pid, signal.SIGKILL)  # no chance to save anything
        stack.redis._proc.wait(10)  # type: ignore[union-attr]
        assert stack.supervise() == ["redis"]
        assert stack.redis.port == port and stack.redis.running
        back = FeatureStore.from_url(stack.redis_url).user("u1")
        assert back.history == ["a", "b"] and back.seen == {"a", "b", "c"}
    finally:
        stack.stop()
    # And a whole new stack on the same var/ (make run again) finds it too.
    again = Stack(tmp_path, durable=True)
    again.start_stores(kafka=False)
    try:
        assert FeatureStore.from_url(again.redis_url).user("u1").history == ["a", "b"]
    finally:
        again.stop()


def test_the_trainer_probe_reads_its_progress(redis_server, key_prefix: str,  # type: ignore[no-untyped-def]
                                              monkeypatch) -> None:
    import json
    import time

    from vidrec.serving.healthcheck import trainer_status
    from vidrec.store.features import FeatureStore

    for k in [k for k in os.environ if k.startswith("VIDREC_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("VIDREC_REDIS_URL", redis_server.url)
    monkeypatch.setenv("VIDREC_KEY_PREFIX", key_prefix)
    store = FeatureStore.from_url(redis_server.url, key_prefix)
    assert trainer_status() == "NO_HEARTBEAT"
    store.beat({"partitions": 0})
    assert trainer_status() == "NO_PARTITIONS"
    store.beat({"partitions": 4})
    assert trainer_status() == "SERVING"
    store._r.set(store.keys.trainer_heartbeat(), json.dumps({"t": time.time() - 90,
                                                             "partitions": 4}))
    assert trainer_status(30).startswith("STALLED")
    monkeypatch.setenv("VIDREC_REDIS_URL", "redis://127.0.0.1:1/0")
    assert trainer_status().startswith("UNREACHABLE")
