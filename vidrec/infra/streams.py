"""The seams between vidrec and Kafka, as Protocols: what a producer and a consumer must
do for the gateway, the trainer and publish. `vidrec.infra.kafka` implements them with
kafka-python; tests may pass anything that fits, and the type checker follows an event
from the gateway to the trainer through these signatures."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from vidrec.v1 import events_pb2


class RecordSink(Protocol):
    def send_events(self, events: Sequence[events_pb2.Event],
                    timeout_s: float | None = None) -> None:
        """Publish to the events topic keyed by user; return once Kafka has them all, or
        raise within `timeout_s`."""

    def send_records(self, topic: str, records: Iterable[tuple[bytes | None, bytes]],
                     timeout_s: float | None = None) -> int:
        """Publish (key, value) pairs to `topic` and wait for every acknowledgement."""

    def send_nowait(self, topic: str, records: Iterable[tuple[bytes | None, bytes]]) -> None:
        """Hand records to the producer without waiting (fire and forget)."""

    def close(self, timeout_s: float = 5.0) -> None: ...


class Record(Protocol):
    """One consumed Kafka record (kafka-python's ConsumerRecord fits)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


class RecordSource(Protocol):
    """A group consumer that commits only when told to (vidrec.infra.kafka.make_consumer)."""

    def poll(self, timeout_ms: int = 0, max_records: int | None = None
             ) -> Mapping[Any, Sequence[Record]]: ...

    def commit(self) -> None: ...

    def assignment(self) -> set[Any]: ...

    def committed(self, partition: Any) -> int | None: ...

    def seek(self, partition: Any, offset: int) -> None: ...

    def seek_to_beginning(self, *partitions: Any) -> None: ...

    def close(self, autocommit: bool = True) -> None: ...
