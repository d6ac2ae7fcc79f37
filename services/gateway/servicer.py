"""Gateway servicer: validate, load the user from Redis, run the funnel, log impressions."""

from __future__ import annotations

import logging
import time
import uuid

import grpc

from services.gateway.arms import assign
from services.gateway.funnel import Budget, Stubs, run_funnel
from services.gateway.impressions import ImpressionLog
from services.gateway.validation import Invalid, check_events, check_recommend
from vidrec.infra.streams import RecordSink
from vidrec.logs import request_id_var
from vidrec.rerank import RerankConfig
from vidrec.security.auth import log_user
from vidrec.serving.convert import profile_dict, profile_proto
from vidrec.serving.metrics import DEGRADED
from vidrec.serving.tracing import tag_request
from vidrec.store.features import FeatureStore, UserState
from vidrec.v1 import common_pb2, events_pb2, gateway_pb2, gateway_pb2_grpc

log = logging.getLogger(__name__)


class GatewayServicer(gateway_pb2_grpc.GatewayServicer):
    def __init__(self, stubs: Stubs, store: FeatureStore, producer: RecordSink | None,
                 arms: list[tuple[str, float]], budget: Budget, rules: RerankConfig,
                 max_k: int, default_deadline_s: float, log_impressions: bool = True,
                 hash_user_ids: bool = False) -> None:
        self.stubs = stubs
        self.hash_user_ids = hash_user_ids  # VIDREC_HASH_USER_IDS_IN_LOGS
        self.store = store
        self.producer = producer  # None: LogEvents answers UNAVAILABLE
        self.arms = arms
        self.budget = budget
        # The reranker's configured rules, for the degraded path when it is down.
        self.rules = rules
        self.max_k = max_k
        self.default_deadline_s = default_deadline_s
        self.impressions = (ImpressionLog(producer)
                            if producer is not None and log_impressions else None)

    # --- Recommend -------------------------------------------------------------------

    def Recommend(self, request: gateway_pb2.RecommendRequest, context: grpc.ServicerContext
                  ) -> gateway_pb2.RecommendResponse:
        request_id = uuid.uuid4().hex[:16]
        request_id_var.set(request_id)
        tag_request(request_id)
        try:
            check_recommend(request, self.max_k)
        except Invalid as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        remaining = context.time_remaining()
        budget_s = self.default_deadline_s if remaining is None else min(remaining, 60.0)
        deadline = time.monotonic() + budget_s * 0.95
        no_state = False
        try:
            state = self.store.user(request.user_id) if request.user_id else None
        except Exception:
            log.warning("Redis unavailable: treating the user as new")
            state, no_state = None, True
        state = state or UserState(request.user_id)
        profile = dict(state.profile)
        profile.update(profile_dict(request.profile))
        arm = assign(request.user_id or request_id, self.arms)
        user = common_pb2.UserContext(
            user_id=request.user_id, profile=profile_proto(profile),
            recent_video_ids=state.history, negative_video_ids=state.negatives,
            seen_video_ids=sorted(state.seen), is_new_user=not state.known,
            experiment_arm=arm)
        if state.mf_vector is not None:
            user.mf_vector.extend(state.mf_vector.tolist())
            user.mf_vector_version = state.mf_version
        try:
            res = run_funnel(self.stubs, self.store, request_id, user, state, request.k,
                             request.filters, deadline, self.budget, self.rules)
        except grpc.RpcError as exc:
            log.error("funnel failed: %s", exc.code().name)
            context.abort(grpc.StatusCode.UNAVAILABLE, "recommendation stages unavailable")
        resp = gateway_pb2.RecommendResponse(
            request_id=request_id, model_version=res.model_version, experiment_arm=arm,
            degraded=bool(res.degraded) or no_state,
            # "features": the user's history and seen set could not be read (Redis).
            degraded_stages=[*res.degraded, *(["features"] if no_state else [])],
            videos=[gateway_pb2.RecommendedVideo(video_id=v.video_id, score=v.score,
                                                 reason=v.reason, source=v.source,
                                                 propensity=v.propensity)
                    for v in res.videos])
        for stage in resp.degraded_stages:
            DEGRADED.labels(stage).inc()
        log.info("recommend user=%s k=%d -> %d videos, model=%s arm=%s degraded=%s",
                 log_user(request.user_id, self.hash_user_ids) if request.user_id else "<new>",
                 request.k, len(resp.videos), res.model_version,
                 arm, ",".join(res.degraded) or "-")
        if self.impressions is not None and request.user_id:
            # The exploration pools stay inside: clients get the propensity only.
            self.impressions.log(request.user_id, request_id, resp,
                                 pools={v.video_id: tuple(v.exploration_pool)
                                        for v in res.videos if v.exploration_pool})
        return resp

    # --- LogEvents -------------------------------------------------------------------

    def LogEvents(self, request: gateway_pb2.LogEventsRequest, context: grpc.ServicerContext
                  ) -> gateway_pb2.LogEventsResponse:
        request_id_var.set(uuid.uuid4().hex[:16])
        try:
            check_events(request, [name for name, _ in self.arms])
        except Invalid as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        producer = self.producer
        if producer is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "event logging is not configured "
                          "(VIDREC_KAFKA_BOOTSTRAP is empty)")
        assert producer is not None  # abort() raised otherwise
        now = time.time()
        events = []
        for e in request.events:
            c = events_pb2.Event()
            c.CopyFrom(e)
            if not c.timestamp:
                c.timestamp = now
            events.append(c)
        try:
            # Bounded by the caller's deadline: past it nobody waits for the answer.
            left = context.time_remaining()
            producer.send_events(events, timeout_s=None if left is None else max(0.05, left))
        except Exception as exc:
            log.warning("LogEvents: Kafka did not acknowledge: %s", exc)
            context.abort(grpc.StatusCode.UNAVAILABLE,
                          "events not acknowledged by Kafka; retry the batch")
        return gateway_pb2.LogEventsResponse(accepted=len(events))

    # --- GetStats --------------------------------------------------------------------

    def GetStats(self, request: gateway_pb2.GetStatsRequest, context: grpc.ServicerContext
                 ) -> gateway_pb2.GetStatsResponse:
        try:
            rows = self.store.read_stats()
        except Exception:
            context.abort(grpc.StatusCode.UNAVAILABLE, "stats store unavailable")
        return gateway_pb2.GetStatsResponse(stats=[gateway_pb2.ArmStats(**r) for r in rows])
