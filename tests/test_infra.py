"""The embedded stores and the Kafka helpers against real servers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections import defaultdict
from pathlib import Path

import pytest
import redis
from kafka import KafkaAdminClient

from vidrec.infra.embedded import KafkaBroker, RedisServer, free_port
from vidrec.infra.kafka import (
    EventProducer,
    PublishError,
    ensure_topics,
    make_consumer,
    poll_records,
    wait_for_assignment,
)
from vidrec.schema import Keys
from vidrec.v1 import events_pb2

embedded_only = pytest.mark.skipif(
    os.environ.get("TEST_CONTAINERS", "") == "1", reason="checks the embedded processes"
)


def _unique(name: str) -> str:
    return f"test.{name}.{uuid.uuid4().hex[:8]}"


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _events(n: int, users: int = 37) -> list[events_pb2.Event]:
    # Per user, `position` counts that user's events: lets the test check per-user order.
    seen: dict[str, int] = defaultdict(int)
    out = []
    for i in range(n):
        user = f"u{i % users}"
        out.append(
            events_pb2.Event(
                event_id=f"e{i}",
                user_id=user,
                video_id=f"v{i % 101}",
                type=events_pb2.EVENT_TYPE_WATCH,
                value=0.5,
                timestamp=1_700_000_000 + i,
                position=seen[user],
            )
        )
        seen[user] += 1
    return out


def test_redis_set_get(redis_client: redis.Redis, key_prefix: str) -> None:
    keys = Keys(key_prefix)
    redis_client.set(keys.serving_version(), "v7")
    redis_client.lpush(keys.user_history("u1"), "a", "b")
    assert redis_client.get(keys.serving_version()) == b"v7"
    assert redis_client.lrange(keys.user_history("u1"), 0, -1) == [b"b", b"a"]


def test_ensure_topics_is_idempotent(kafka_broker: KafkaBroker) -> None:
    topics = {_unique("a"): 3, _unique("b"): 1}
    assert sorted(ensure_topics(kafka_broker.bootstrap, topics)) == sorted(topics)
    assert ensure_topics(kafka_broker.bootstrap, topics) == []
    admin = KafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
    try:
        described = {t["name"]: len(t["partitions"]) for t in admin.describe_topics(list(topics))}
    finally:
        admin.close()
    assert described == topics


def test_events_round_trip_through_a_consumer_group(kafka_broker: KafkaBroker) -> None:
    topic, group = _unique("events"), _unique("group")
    ensure_topics(kafka_broker.bootstrap, {topic: 4})
    sent = _events(1000)
    with EventProducer(kafka_broker.bootstrap, topic=topic) as producer:
        producer.send_events(sent)

        consumer = make_consumer(kafka_broker.bootstrap, group, [topic])
        try:
            records = poll_records(consumer, len(sent), timeout_s=20)
            assert len(records) == len(sent)
            assert len(consumer.assignment()) == 4
            consumer.commit()
        finally:
            consumer.close()

        by_id = {e.event_id: e for e in sent}
        last_position: dict[str, int] = {}
        for rec in records:
            event = events_pb2.Event.FromString(rec.value)
            assert rec.key == event.user_id.encode()
            assert event == by_id.pop(event.event_id)
            # Keyed by user: one user's events share a partition and keep their order.
            assert event.position == last_position.get(event.user_id, -1) + 1
            last_position[event.user_id] = event.position
        assert not by_id

        # Same group after the commit: nothing old is delivered again, only what is new.
        producer.send_events(_events(5, users=5))
        again = make_consumer(kafka_broker.bootstrap, group, [topic])
        try:
            assigned = wait_for_assignment(again, timeout_s=20)
            committed = {tp: again.committed(tp) for tp in assigned}
            assert sum(committed.values()) == len(sent)
            fresh = poll_records(again, 6, timeout_s=1.0)
        finally:
            again.close()
        assert sorted(events_pb2.Event.FromString(r.value).event_id for r in fresh) == [
            f"e{i}" for i in range(5)
        ]


def test_send_events_rejects_an_event_without_user(kafka_broker: KafkaBroker) -> None:
    with EventProducer(kafka_broker.bootstrap) as producer:
        with pytest.raises(ValueError, match="user_id"):
            producer.send_events([events_pb2.Event(event_id="e1", video_id="v1")])


@embedded_only
def test_send_events_raises_when_kafka_does_not_ack() -> None:
    broker = KafkaBroker().start()
    topic = _unique("events")
    ensure_topics(broker.bootstrap, {topic: 1})
    producer = EventProducer(broker.bootstrap, topic=topic, ack_timeout_s=1.5)
    try:
        producer.send_events(_events(3))
        broker.stop()
        assert not _port_open(broker.port)
        with pytest.raises(PublishError, match="not"):
            producer.send_events(_events(3))
    finally:
        producer.close(timeout_s=0.5)
        broker.stop()


@embedded_only
def test_redis_stop_kills_the_server_and_frees_the_port() -> None:
    server = RedisServer().start()
    client = redis.Redis.from_url(server.url)
    redis_pid = int(client.info("server")["process_id"])
    client.close()
    data_dir = server.data_dir
    assert data_dir is not None and data_dir.is_dir()

    server.stop()

    with pytest.raises(ProcessLookupError):
        os.kill(redis_pid, 0)
    assert not _port_open(server.port)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", server.port))  # free again
    assert not data_dir.exists()
    server.stop()  # idempotent


@embedded_only
def test_fixed_port_in_use_is_a_clear_error() -> None:
    with RedisServer() as first:
        with pytest.raises(RuntimeError, match="already in use"):
            RedisServer(port=first.port).start()


@embedded_only
def test_no_orphans_when_the_parent_is_killed(tmp_path: Path) -> None:
    # SIGKILL skips stop() and atexit: the watchdog must still take the servers down.
    # (Nothing is left to remove the servers' directories, hence tmp_path.)
    script = textwrap.dedent(
        f"""
        import os, signal
        from vidrec.infra.embedded import KafkaBroker, RedisServer
        r = RedisServer(data_dir={str(tmp_path / "redis")!r}).start()
        k = KafkaBroker(log_path={str(tmp_path / "tansu.log")!r}).start()
        print(r.port, k.port, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    ports = [int(p) for p in out.stdout.split()]
    assert len(ports) == 2, out.stderr
    deadline = time.monotonic() + 5
    while any(_port_open(p) for p in ports) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_port_open(p) for p in ports)


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_a_producer_works_again_after_its_broker_restarted_empty() -> None:
    """The idempotent producer's id dies with a memory broker: kafka-python then failed
    every later send (a fatal InitProducerId error), so the gateway refused every event
    until it was restarted itself."""
    import time

    from vidrec.infra.kafka import ALL_TOPICS, EventProducer, PublishError, ensure_topics
    from vidrec.v1 import events_pb2

    def like(i: int) -> events_pb2.Event:
        return events_pb2.Event(event_id=f"e{i}", user_id=f"u{i}", video_id="v",
                                type=events_pb2.EVENT_TYPE_LIKE)

    with KafkaBroker() as broker:
        ensure_topics(broker.bootstrap, ALL_TOPICS)
        with EventProducer(broker.bootstrap, ack_timeout_s=5, replay_window_s=60) as p:
            p.send_events([like(i) for i in range(4)])
            broker.restart()
            ensure_topics(broker.bootstrap, ALL_TOPICS)
            sent, errors = False, []
            deadline = time.monotonic() + 30
            while not sent and time.monotonic() < deadline:
                try:
                    p.send_events([like(i) for i in range(4, 8)], timeout_s=3)
                    sent = True
                except PublishError as exc:  # a client retries
                    errors.append(str(exc))
                    time.sleep(0.5)
            assert sent, errors[-3:]
        # What was acknowledged before the crash (and never read: the memory log lost it)
        # was sent again with the first send to the new log; consumers dedupe by id.
        consumer = make_consumer(broker.bootstrap, None, ["vidrec.events"])
        got = poll_records(consumer, 8, timeout_s=20)
        consumer.close()
        ids = sorted(events_pb2.Event.FromString(r.value).event_id for r in got)
        assert ids == [f"e{i}" for i in range(8)]
