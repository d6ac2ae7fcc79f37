"""The gateway's impression log: off the request path, and nothing queued is lost on close."""

from __future__ import annotations

import os
import time
import uuid

import pytest

from services.gateway.impressions import ImpressionLog
from vidrec.infra.embedded import KafkaBroker
from vidrec.infra.kafka import EventProducer, ensure_topics, make_consumer, poll_records
from vidrec.v1 import events_pb2, gateway_pb2


def test_impressions_reach_kafka_in_order_and_close_flushes(kafka_broker: KafkaBroker) -> None:
    topic = f"impressions-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_broker.bootstrap, {topic: 2})
    resp = gateway_pb2.RecommendResponse(
        model_version="m1", experiment_arm="hybrid",
        videos=[gateway_pb2.RecommendedVideo(video_id=f"v{i}", propensity=1.0 if i < 2 else 0.25)
                for i in range(3)])
    with EventProducer(kafka_broker.bootstrap, linger_ms=100) as producer:
        log = ImpressionLog(producer, topic=topic)
        for r in range(5):
            log.log("u1", f"req{r}", resp, pools={"v2": ("v2", "v7", "v8", "v9")})
        log.close()  # queued responses are sent before the thread stops
        producer.producer.flush(timeout=10)
        assert log.dropped == 0
    consumer = make_consumer(kafka_broker.bootstrap, f"g-{uuid.uuid4().hex[:8]}", [topic])
    try:
        records = poll_records(consumer, 15, timeout_s=20)
    finally:
        consumer.close()
    events = [events_pb2.Event.FromString(r.value) for r in records]
    assert [(e.request_id, e.position, e.video_id) for e in events] == [
        (f"req{r}", p, f"v{p}") for r in range(5) for p in range(3)]
    assert {e.type for e in events} == {events_pb2.EVENT_TYPE_IMPRESSION}
    assert {(e.user_id, e.model_version, e.experiment_arm) for e in events} == {
        ("u1", "m1", "hybrid")}
    assert all(r.key == b"u1" for r in records)
    # The explored slot carries what an off-policy estimate weighs it by.
    assert [(e.propensity, tuple(e.exploration_pool)) for e in events[:3]] == [
        (1.0, ()), (1.0, ()), (0.25, ("v2", "v7", "v8", "v9"))]


@pytest.mark.skipif(os.environ.get("TEST_CONTAINERS", "") == "1",
                    reason="stops the broker: needs the embedded one")
def test_a_full_queue_drops_impressions_instead_of_blocking(
        private_kafka_broker: KafkaBroker) -> None:
    """With the broker gone, each send blocks waiting for metadata; Recommend must not."""
    producer = EventProducer(private_kafka_broker.bootstrap, max_block_ms=3000)
    private_kafka_broker.stop()
    log = ImpressionLog(producer, maxsize=2,
                        topic=f"impressions-{uuid.uuid4().hex[:8]}")  # no metadata cached
    resp = gateway_pb2.RecommendResponse(videos=[gateway_pb2.RecommendedVideo(video_id="v")])
    t = time.monotonic()
    for r in range(10):
        log.log("u", f"r{r}", resp)
    assert time.monotonic() - t < 0.5  # log() never waited for Kafka
    assert log.dropped >= 7
    log.close(timeout_s=1)
    producer.close(timeout_s=1)
