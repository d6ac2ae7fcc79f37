"""Infrastructure the processes share: embedded Redis / Kafka servers and Kafka clients.

Embedded servers stand in for the deployed stores on a machine without Docker
(DESIGN.md §6); the Kafka helpers carry the settings production uses, so tests run them.
"""

from vidrec.infra.embedded import EmbeddedServerError, KafkaBroker, RedisServer, free_port
from vidrec.infra.kafka import (
    ALL_TOPICS,
    EventProducer,
    PublishError,
    ensure_topics,
    make_consumer,
    make_producer,
)

__all__ = [
    "ALL_TOPICS",
    "EmbeddedServerError",
    "EventProducer",
    "KafkaBroker",
    "PublishError",
    "RedisServer",
    "ensure_topics",
    "free_port",
    "make_consumer",
    "make_producer",
]
