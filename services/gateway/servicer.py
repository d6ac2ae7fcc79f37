"""Gateway servicer: validate, load the user from Redis, run the funnel, log impressions."""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import replace

import grpc

from services.gateway.arms import assign
from services.gateway.catalog import (
    check_hide,
    check_videos,
    merged_upserts,
    record_message,
    similar_reason,
)
from services.gateway.funnel import DEGRADABLE, Budget, Stubs, run_funnel
from services.gateway.impressions import ImpressionLog
from services.gateway.validation import Invalid, check_events, check_recommend, check_similar
from vidrec import schema
from vidrec.infra.streams import RecordSink
from vidrec.logs import request_id_var
from vidrec.rerank import RerankConfig
from vidrec.security.auth import log_user
from vidrec.serving.convert import profile_dict, profile_proto
from vidrec.serving.metrics import DEGRADED
from vidrec.serving.rerank import apply_rules
from vidrec.serving.tracing import tag_request
from vidrec.store.features import FeatureStore, UserState
from vidrec.v1 import (
    candidate_pb2,
    common_pb2,
    events_pb2,
    gateway_pb2,
    gateway_pb2_grpc,
    reranker_pb2,
)

log = logging.getLogger(__name__)

# The rerank rules "more like this" keeps: the user's own filters.
SIMILAR_RULES = ("seen_filter", "disliked")


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
                             request.filters, deadline, self.budget, self.rules,
                             explain=request.explain)
        except grpc.RpcError as exc:
            log.error("funnel failed: %s", exc.code().name)
            context.abort(grpc.StatusCode.UNAVAILABLE, "recommendation stages unavailable")
        resp = gateway_pb2.RecommendResponse(
            request_id=request_id, model_version=res.model_version, experiment_arm=arm,
            degraded=bool(res.degraded) or no_state,
            # "features": the user's history and seen set could not be read (Redis).
            degraded_stages=[*res.degraded, *(["features"] if no_state else [])],
            videos=[shown(v, request.explain) for v in res.videos])
        for stage in resp.degraded_stages:
            DEGRADED.labels(stage).inc()
        log.info("recommend user=%s k=%d -> %d videos, model=%s arm=%s degraded=%s",
                 log_user(request.user_id, self.hash_user_ids) if request.user_id else "<new>",
                 request.k, len(resp.videos), res.model_version,
                 arm, ",".join(res.degraded) or "-")
        if self.impressions is not None and request.user_id and not request.preview:
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

    # --- SimilarVideos ---------------------------------------------------------------

    def SimilarVideos(self, request: gateway_pb2.SimilarVideosRequest,
                      context: grpc.ServicerContext) -> gateway_pb2.SimilarVideosResponse:
        """Nearest videos by the asked vector kind (candidate stage), then the rerank
        rules that make sense for "more like this" (the reranker; here when it is down):
        with a user_id, what they saw or disliked is left out. Diversity, caps and
        exploration do not apply: similarity is the point of the list."""
        request_id = uuid.uuid4().hex[:16]
        request_id_var.set(request_id)
        try:
            check_similar(request, self.max_k)
        except Invalid as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        by = request.by or "two_tower"
        deadline = time.monotonic() + min(context.time_remaining() or self.default_deadline_s,
                                          60.0) * 0.95
        try:
            state = self.store.user(request.user_id) if request.user_id else None
        except Exception:
            log.warning("Redis unavailable: similar videos without the user's history")
            state = None
        state = state or UserState(request.user_id)
        try:
            found = self.stubs.candidate.Similar(candidate_pb2.SimilarRequest(
                request_id=request_id, video_id=request.video_id, by=by,
                n=max(3 * request.k, 50), filters=request.filters),
                timeout=max(0.05, min(1.0, deadline - time.monotonic())))
        except grpc.RpcError as exc:
            code = exc.code()
            if code in DEGRADABLE:
                context.abort(grpc.StatusCode.UNAVAILABLE, "the candidate stage is unavailable")
            context.abort(code, exc.details() or code.name)  # NOT_FOUND, INVALID_ARGUMENT...
        user = common_pb2.UserContext(user_id=request.user_id,
                                      recent_video_ids=state.history,
                                      negative_video_ids=state.negatives,
                                      seen_video_ids=sorted(state.seen))
        scored = [common_pb2.ScoredVideo(video_id=c.video_id, score=c.score, source=c.source,
                                         anchor_video_id=c.anchor_video_id)
                  for c in found.candidates]
        try:
            final = list(self.stubs.reranker.Rerank(
                reranker_pb2.RerankRequest(request_id=request_id, user=user, videos=scored,
                                           k=request.k, explain=request.explain,
                                           only_rules=SIMILAR_RULES),
                timeout=max(0.05, min(self.budget.reranker_timeout_s,
                                      deadline - time.monotonic()))).videos)
        except grpc.RpcError as exc:
            if exc.code() not in DEGRADABLE:
                raise
            rules = replace(self.rules, rules=tuple(r for r in self.rules.rules
                                                    if r in SIMILAR_RULES))
            final = apply_rules(self.store, user, scored, request.k, rules, now=time.time(),
                                store_optional=True, explain=request.explain)
        try:
            meta = self.store.videos([request.video_id] + [v.video_id for v in final])
        except Exception:
            meta = {}
        anchor = meta.get(request.video_id, {"video_id": request.video_id})
        for v in final:
            v.reason = similar_reason(by, anchor, meta.get(v.video_id, {}))
        return gateway_pb2.SimilarVideosResponse(
            request_id=request_id, model_version=found.model_version, by=by,
            videos=[shown(v, request.explain) for v in final])

    # --- catalog ---------------------------------------------------------------------

    def _send_videos(self, msgs: list[events_pb2.VideoUpserted],
                     context: grpc.ServicerContext) -> None:
        producer = self.producer
        if producer is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the catalog is read-only here "
                          "(VIDREC_KAFKA_BOOTSTRAP is empty)")
        assert producer is not None
        try:
            left = context.time_remaining()
            producer.send_records(schema.TOPIC_VIDEOS,
                                  [(m.video_id.encode(), m.SerializeToString()) for m in msgs],
                                  timeout_s=None if left is None else max(0.05, left))
        except Exception as exc:
            log.warning("catalog write not acknowledged by Kafka: %s", exc)
            context.abort(grpc.StatusCode.UNAVAILABLE,
                          "videos not acknowledged by Kafka; retry the batch")

    def _known(self, ids: list[str], context: grpc.ServicerContext
               ) -> dict[str, dict[str, str]]:
        try:
            return self.store.videos(ids, fresh=True)  # merged with: never a stale copy
        except Exception:
            context.abort(grpc.StatusCode.UNAVAILABLE, "the catalog store is unavailable")
            raise  # unreachable: abort raised

    def UpsertVideos(self, request: gateway_pb2.UpsertVideosRequest,
                     context: grpc.ServicerContext) -> gateway_pb2.UpsertVideosResponse:
        request_id_var.set(uuid.uuid4().hex[:16])
        try:
            check_videos(request.videos)
        except Invalid as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        known = self._known([v.video_id for v in request.videos], context)
        msgs = merged_upserts(request.videos, known, time.time())
        self._send_videos(msgs, context)
        log.info("catalog: upserted %d videos (%d new)", len(msgs),
                 sum(1 for m in msgs if m.video_id not in known))
        return gateway_pb2.UpsertVideosResponse(accepted=len(msgs))

    def HideVideos(self, request: gateway_pb2.HideVideosRequest,
                   context: grpc.ServicerContext) -> gateway_pb2.HideVideosResponse:
        request_id_var.set(uuid.uuid4().hex[:16])
        try:
            check_hide(request.video_ids)
        except Invalid as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        ids = list(dict.fromkeys(request.video_ids))
        known = self._known(ids, context)
        msgs = [record_message(known[v], hidden=not request.unhide) for v in ids if v in known]
        if msgs:
            self._send_videos(msgs, context)
        log.info("catalog: %s %d videos", "unhid" if request.unhide else "hid", len(msgs))
        return gateway_pb2.HideVideosResponse(changed=len(msgs),
                                              unknown_video_ids=[v for v in ids
                                                                 if v not in known])


def shown(v: common_pb2.ScoredVideo, explain: bool) -> gateway_pb2.RecommendedVideo:
    """A stage's video as the client sees it (with its explanation when asked)."""
    out = gateway_pb2.RecommendedVideo(video_id=v.video_id, score=v.score, reason=v.reason,
                                       source=v.source, anchor_video_id=v.anchor_video_id,
                                       propensity=v.propensity)
    if explain:
        e = out.explanation
        e.terms.update(v.terms)
        e.ranker_score, e.ranker_rank = v.ranker_score, v.ranker_rank
        e.rules.extend(v.rules)
    return out
