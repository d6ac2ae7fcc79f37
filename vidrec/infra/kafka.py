"""kafka-python helpers with the settings every vidrec producer and consumer shares.

The same settings work against the embedded Tansu broker and a deployed Apache Kafka
(DESIGN.md §6), so tests exercise the production configuration.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType, TracebackType
from typing import Any, Self

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError, KafkaTimeoutError, TopicAlreadyExistsError

from vidrec.schema import TOPIC_EVENTS, TOPIC_EVENTS_DLQ, TOPIC_MODELS, TOPIC_VIDEOS
from vidrec.v1 import events_pb2

log = logging.getLogger(__name__)

# Topic -> partition count. Events are keyed by user_id, so partitions bound the trainer's
# consumer parallelism while per-user order holds; the other topics are low volume.
ALL_TOPICS: Mapping[str, int] = MappingProxyType(
    {TOPIC_EVENTS: 4, TOPIC_EVENTS_DLQ: 1, TOPIC_MODELS: 1, TOPIC_VIDEOS: 1}
)

# Consumer group timing. Measured with Tansu 0.6.0-510f3e2 and kafka-python 3.0: the
# broker answers the first JoinGroup only after about session_timeout_ms / 2, whatever
# max_poll_interval_ms is (45 s default session -> the first poll() is empty for ~23 s;
# 6 s -> ~3 s). 6 s is also the smallest session Apache Kafka accepts by default
# (group.min.session.timeout.ms), so the same value works deployed. The heartbeat must be
# well below the session. max_poll_interval_ms bounds the time between two poll() calls
# (work on one batch) before the member is dropped from the group.
GROUP_TIMING: Mapping[str, int] = MappingProxyType(
    {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000, "max_poll_interval_ms": 30000}
)


# SASL / TLS settings every client of this process uses (vidrec.security.stores sets them
# from the process's settings at start; empty: plaintext, as the embedded broker speaks).
CLIENT_SECURITY: dict[str, Any] = {}

# The most records a producer keeps for a replay (bounds its memory whatever the rate).
REPLAY_MAX_RECORDS = 200_000


class PublishError(RuntimeError):
    """Kafka did not acknowledge every record; none of the batch may be taken as logged."""


def ensure_topics(
    bootstrap: str,
    topics: Mapping[str, int] = ALL_TOPICS,
    *,
    replication_factor: int = -1,
    timeout_s: float = 30.0,
) -> list[str]:
    """Create the missing topics; existing ones are left as they are. Returns those created.

    `replication_factor=-1` takes the broker's default (Kafka >= 2.4), so the same call suits
    a one-node Tansu and a replicated cluster. Safe to run from several processes at once.
    """
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap,
        client_id="vidrec-admin",
        request_timeout_ms=int(timeout_s * 1000),
        **CLIENT_SECURITY,
    )
    try:
        existing = {t["name"]: len(t["partitions"]) for t in admin.describe_topics()}
        created: list[str] = []
        for name, partitions in topics.items():
            if name in existing:
                if existing[name] < partitions:
                    log.warning(
                        "topic %s has %d partitions, %d wanted; left as is",
                        name,
                        existing[name],
                        partitions,
                    )
                continue
            try:
                admin.create_topics(
                    {
                        name: {
                            "num_partitions": partitions,
                            "replication_factor": replication_factor,
                        }
                    },
                    timeout_ms=int(timeout_s * 1000),
                    wait_for_metadata=True,
                )
                created.append(name)
            except TopicAlreadyExistsError:  # created by someone else meanwhile
                pass
        if created:
            log.info("created topics %s", ", ".join(created))
        return created
    finally:
        admin.close()


def make_producer(bootstrap: str, **kw: Any) -> KafkaProducer:
    """A producer whose acknowledged records survive broker failover, in per-key order.

    acks=all + idempotence: retries neither lose nor duplicate nor reorder records of one
    key (user). The timeouts are bounded so that a dead broker fails a send in seconds
    rather than blocking a request thread for minutes. `kw` overrides any setting.
    """
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "client_id": "vidrec-producer",
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 5,
        "batch_size": 64 * 1024,
        "request_timeout_ms": 10_000,
        "delivery_timeout_ms": 30_000,
        "max_block_ms": 10_000,
    }
    config.update(CLIENT_SECURITY)
    config.update(kw)
    return KafkaProducer(**config)


class EventProducer:
    """Publishes protobuf Events keyed by user_id and returns only once Kafka has them all.

    On PublishError part of the batch may have been written: the caller retries the whole
    batch, and consumers deduplicate by event_id (delivery is at-least-once).
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        topic: str = TOPIC_EVENTS,
        ack_timeout_s: float = 30.0,
        replay_window_s: float = 0.0,
        **producer_kw: Any,
    ) -> None:
        self.topic = topic
        self.ack_timeout_s = ack_timeout_s
        # What was acknowledged in the last replay_window_s, to send again if the broker
        # turns out to be a new, empty log (vidrec.infra.kafka.log_id): the embedded broker
        # keeps records in memory only, so a crash loses what no consumer had read yet.
        # Consumers dedupe by event id (the trainer within its horizon, >= this window).
        self.replay_window_s = replay_window_s
        self._sent: deque[tuple[float, str, bytes | None, bytes]] = deque()
        self._log = ""
        self._replay_due = False
        self._make = lambda: make_producer(bootstrap, **producer_kw)
        self.producer = self._make()
        self._lock = threading.Lock()

    def _heal(self) -> None:
        """Replace a producer that can never send again. An idempotent producer whose
        broker restarted empty (the embedded broker after a crash) gets a fatal
        InitProducerId error and fails every later send; a new producer (a new producer
        id) works at once."""
        p = self.producer
        tm = getattr(p, "_transaction_manager", None)
        sender = getattr(p, "_sender", None)
        fatal = (tm is not None and tm.has_fatal_error()) or (
            sender is not None and not sender.is_alive())
        if not fatal:
            return
        with self._lock:
            if self.producer is not p:
                return  # another thread replaced it already
            log.warning("Kafka producer in a fatal state; replacing it")
            self.producer = self._make()
        try:
            p.close(timeout=0)
        except Exception:  # it is broken already; nothing more to release
            log.debug("closing the broken producer failed", exc_info=True)

    def send_events(self, events: Sequence[events_pb2.Event],
                    timeout_s: float | None = None) -> None:
        """Publish `events` to the events topic; raise PublishError unless all are acked
        within `timeout_s` (default ack_timeout_s)."""
        for event in events:
            if not event.user_id:
                raise ValueError(f"event {event.event_id!r} has no user_id (the partition key)")
        self.send_records(self.topic, ((e.user_id.encode(), e.SerializeToString()) for e in events),
                          timeout_s)

    def send_records(self, topic: str, records: Iterable[tuple[bytes | None, bytes]],
                     timeout_s: float | None = None) -> int:
        """Publish (key, value) pairs to `topic` and wait for every acknowledgement, at
        most `timeout_s` (default ack_timeout_s)."""
        wait = self.ack_timeout_s if timeout_s is None else min(timeout_s, self.ack_timeout_s)
        deadline = time.monotonic() + wait
        futures = []
        batch = list(records)
        try:
            replay = self._replay_if_new_log()
            for t, k, v in replay + [(topic, k, v) for k, v in batch]:
                futures.append(self.producer.send(t, key=k, value=v))
            self.producer.flush(timeout=max(0.0, deadline - time.monotonic()))
        except KafkaError as exc:
            self._heal()
            raise PublishError(
                f"{topic}: {len(futures)} record(s) not confirmed by Kafka: {exc}"
            ) from exc
        failed = [f for f in futures if not f.succeeded()]
        if failed:
            self._heal()
            first = failed[0].exception
            if replay and any(not f.succeeded() for f in futures[:len(replay)]):
                self._replay_due = True  # not done: again with the next send
            raise PublishError(
                f"{topic}: {len(failed)} of {len(futures)} record(s) not acknowledged: {first!r}"
            ) from first
        if self.replay_window_s > 0:
            now = time.monotonic()
            with self._lock:  # request threads send at once; a replay reads the deque
                self._sent.extend((now, topic, k, v) for k, v in batch)
                while self._sent and (now - self._sent[0][0] > self.replay_window_s
                                      or len(self._sent) > REPLAY_MAX_RECORDS):
                    self._sent.popleft()
        return len(batch)

    def _replay_if_new_log(self) -> list[tuple[str, bytes | None, bytes]]:
        """The window's records when the broker's log id changed since the last send (or
        when such a replay failed and is still due)."""
        if self.replay_window_s <= 0:
            return []
        current = log_id(self.producer)
        with self._lock:
            previous = self._log
            if current and current != previous:
                self._log = current
                self._replay_due = self._replay_due or bool(previous)
                if previous:
                    log.warning("Kafka log changed (%s -> %s): sending what was acknowledged "
                                "in the last %.0fs again", previous, current,
                                self.replay_window_s)
            if not self._replay_due:
                return []
            self._replay_due = False
            cutoff = time.monotonic() - self.replay_window_s
            return [(t, k, v) for ts, t, k, v in self._sent if ts >= cutoff]

    def send_nowait(self, topic: str, records: Iterable[tuple[bytes | None, bytes]]) -> None:
        """Hand records to the producer's buffer without waiting for acknowledgements: for
        what may be lost (impressions), never for events a caller was told are logged."""
        try:
            for key, value in records:
                self.producer.send(topic, key=key, value=value)
        except KafkaError:
            self._heal()
            raise

    def close(self, timeout_s: float = 5.0) -> None:
        """Flush and close; records still unacknowledged after `timeout_s` are dropped."""
        try:
            self.producer.close(timeout=timeout_s)
        except KafkaTimeoutError:
            # kafka-python 3.0 raises out of close() while records are unacknowledged and
            # leaves the producer open (its threads and sockets live on). Abort them instead:
            # their senders were, or will be, told by PublishError.
            log.warning("closing the Kafka producer with unacknowledged records")
            sender = self.producer._sender
            sender.force_close()
            sender.join(timeout_s)
            self.producer.close(timeout=0)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def make_consumer(
    bootstrap: str, group_id: str | None, topics: Sequence[str], **kw: Any
) -> KafkaConsumer:
    """A group consumer that commits only when told to, with fast group joins.

    Auto-commit is off because kafka-python commits whatever poll() returned, processed or
    not: callers commit after their effect is durable. A new group starts at the earliest
    offset so no event published before the first consumer joined is skipped. See
    GROUP_TIMING for the join delay; `kw` overrides any setting.
    """
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "group_id": group_id,
        "client_id": f"vidrec-{group_id or 'consumer'}",
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        **GROUP_TIMING,
    }
    config.update(CLIENT_SECURITY)
    config.update(kw)
    return KafkaConsumer(*topics, **config)


def poll_records(
    consumer: KafkaConsumer, count: int, timeout_s: float = 30.0
) -> list[ConsumerRecord]:
    """Poll until `count` records arrived or `timeout_s` passed (joins take seconds)."""
    records: list[ConsumerRecord] = []
    deadline = time.monotonic() + timeout_s
    while len(records) < count and time.monotonic() < deadline:
        batch = consumer.poll(timeout_ms=200, max_records=count - len(records))
        for part in batch.values():
            records.extend(part)
    return records


def wait_for_assignment(consumer: KafkaConsumer, timeout_s: float = 30.0) -> set[Any]:
    """Poll (fetching nothing) until the group gave this consumer partitions.

    Polls with max_records=1 and seeks back, so no record is consumed while waiting.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        batch = consumer.poll(timeout_ms=200, max_records=1)
        for tp, recs in batch.items():
            consumer.seek(tp, recs[0].offset)
        if consumer.assignment():
            return set(consumer.assignment())
    raise TimeoutError(f"no partitions assigned within {timeout_s:.0f}s")


def log_id(consumer: Any) -> str:
    """The id of the log a consumer (or producer) talks to: the broker cluster's id from
    its last metadata.

    Offsets only mean something within one log. A broker with memory storage (the embedded
    Tansu) restarts empty under a new cluster id and numbers records from 0 again, so the
    trainer keys its applied offsets by this id: old marks must not turn new records into
    "duplicates". "" when the client has no metadata yet.
    """
    cluster = getattr(getattr(consumer, "_manager", None), "cluster", None) or getattr(
        consumer, "_metadata", None)
    return str(getattr(cluster, "cluster_id", None) or "")


def consumer_lag(bootstrap: str, group: str, topic: str) -> int:
    """Records in `topic` that `group` has not committed yet (summed over partitions; a
    partition the group never committed counts from its start). Reads the group's offsets
    without joining it."""
    from kafka import KafkaConsumer
    from kafka.structs import TopicPartition

    probe = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                          client_id="vidrec-lag", enable_auto_commit=False,
                          request_timeout_ms=5000, **CLIENT_SECURITY)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(probe.partitions_for_topic(topic)
                                                          or ())]
        if not parts:
            return 0
        ends, starts = probe.end_offsets(parts), probe.beginning_offsets(parts)
        left = 0
        for tp in parts:
            done = probe.committed(tp)
            left += max(0, ends[tp] - (done if done is not None else starts[tp]))
        return left
    finally:
        probe.close(autocommit=False)
