"""Impression logging off the request path.

Turning a response into 10 Event records and handing them to the Kafka producer cost about
0.5 ms per Recommend, all of it before the answer left. A background thread now does it:
the request only enqueues the response. The queue is bounded so that a Kafka outage cannot
grow the gateway's memory; beyond it impressions are dropped (counted, logged), never the
answer.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from vidrec import schema
from vidrec.infra.streams import RecordSink
from vidrec.serving.metrics import IMPRESSIONS_DROPPED
from vidrec.v1 import events_pb2, gateway_pb2

log = logging.getLogger(__name__)

QUEUE_SIZE = 10_000  # responses, ~100 s of traffic at 100 req/s
_STOP = object()


class ImpressionLog:
    def __init__(self, producer: RecordSink, maxsize: int = QUEUE_SIZE,
                 topic: str = schema.TOPIC_EVENTS) -> None:
        self.producer = producer
        self.topic = topic
        self.dropped = 0
        self._q: queue.Queue[Any] = queue.Queue(maxsize)
        self._thread = threading.Thread(target=self._run, name="impressions", daemon=True)
        self._thread.start()

    def log(self, user_id: str, request_id: str, resp: gateway_pb2.RecommendResponse,
            pools: Mapping[str, Sequence[str]] | None = None) -> None:
        """Queue one impression per shown video; never blocks and never raises.

        Each impression carries the video's propensity from the response and, for an
        explored slot, the pool it was drawn from (`pools`, by video id): what an
        off-policy estimate of another model needs (vidrec.evaluation.offpolicy)."""
        try:
            self._q.put_nowait((user_id, request_id, resp, pools or {}, time.time()))
        except queue.Full:
            self.dropped += 1
            IMPRESSIONS_DROPPED.inc()
            if self.dropped % 1000 == 1:
                log.warning("impression queue full: %d responses' impressions dropped",
                            self.dropped)

    def close(self, timeout_s: float = 5.0) -> None:
        """Send what is queued (up to timeout_s), then stop the thread."""
        try:
            self._q.put(_STOP, timeout=timeout_s)
        except queue.Full:
            log.warning("impression queue still full at shutdown: dropping it")
            return
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is _STOP:
                return
            user_id, request_id, resp, pools, now = item
            try:
                self._send(user_id, request_id, resp, pools, now)
            except Exception:  # losing an impression must never stop the logger
                log.warning("could not log impressions", exc_info=True)

    def _send(self, user_id: str, request_id: str, resp: gateway_pb2.RecommendResponse,
              pools: Mapping[str, Sequence[str]], now: float) -> None:
        key = user_id.encode()
        self.producer.send_nowait(self.topic, [(key, events_pb2.Event(
            event_id=f"{request_id}:{pos}", user_id=user_id, video_id=v.video_id,
            type=events_pb2.EVENT_TYPE_IMPRESSION, timestamp=now, request_id=request_id,
            position=pos, experiment_arm=resp.experiment_arm,
            model_version=resp.model_version, propensity=v.propensity,
            exploration_pool=pools.get(v.video_id, ())).SerializeToString())
            for pos, v in enumerate(resp.videos)])
