"""The Recommend funnel: candidate -> ranker -> reranker, each with a deadline share,
each degrading instead of failing (DESIGN.md §1):

  candidate down -> popular/fresh lists from Redis
  ranker down    -> candidate order
  reranker down  -> the reranker's own rules run here (vidrec.serving.rerank.apply_rules,
                    with the same configured RerankConfig): same caps, seen filter,
                    dislikes, freshness, MMR, exploration and reasons

A degraded answer says which stages were skipped.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import grpc

from vidrec.models.mix import N_CANDIDATES
from vidrec.rerank import RerankConfig
from vidrec.serving.rerank import apply_rules
from vidrec.store.features import FeatureStore, UserState
from vidrec.v1 import (
    candidate_pb2,
    candidate_pb2_grpc,
    common_pb2,
    ranker_pb2,
    ranker_pb2_grpc,
    reranker_pb2,
    reranker_pb2_grpc,
)

log = logging.getLogger(__name__)

DEGRADABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
              grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INTERNAL,
              grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED)


@dataclass
class Stubs:
    candidate: candidate_pb2_grpc.CandidateStub
    ranker: ranker_pb2_grpc.RankerStub
    reranker: reranker_pb2_grpc.RerankerStub


@dataclass
class FunnelResult:
    videos: list[common_pb2.ScoredVideo]
    model_version: str
    degraded: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Budget:
    candidate_share: float = 0.4
    ranker_share: float = 0.6
    # Each stage's own ceiling, whatever the client's deadline: a stalled stage costs a
    # request at most this long (then the degraded path answers), so a stall cannot hold
    # the gateway's workers for the client's whole deadline and pile requests up. Healthy
    # stages answer in a few ms (benchmarks.serving); these leave room for a stage that is
    # loading a new model version (a hot swap) to still answer.
    candidate_timeout_s: float = 0.3
    ranker_timeout_s: float = 0.3
    reranker_timeout_s: float = 0.2
    # Was 300 candidates and 100 scored videos; every stage's work grows with them. Offline,
    # against synthetic ground truth, fewer candidates per source did not lower precision@10
    # (4k videos: 0.4372 at 200 and 300; 20k videos: 0.4021 at 200, 0.4003 at 300), and
    # the reranker still chooses k=10 from 50.
    top_m: int = 50
    num_candidates: int = N_CANDIDATES


def _left(deadline: float) -> float:
    return max(0.001, deadline - time.monotonic())


def run_funnel(stubs: Stubs, store: FeatureStore, request_id: str, user: common_pb2.UserContext,
               state: UserState, k: int, filters: common_pb2.Filters, deadline: float,
               budget: Budget, rules: RerankConfig, explain: bool = False) -> FunnelResult:
    degraded: list[str] = []
    version = ""
    user_vector: list[float] = []
    # 1. candidates
    try:
        cresp = stubs.candidate.Generate(
            candidate_pb2.GenerateRequest(request_id=request_id, user=user,
                                          n=budget.num_candidates, filters=filters),
            timeout=min(budget.candidate_timeout_s, _left(deadline) * budget.candidate_share))
        cands = list(cresp.candidates)
        version = cresp.model_version
        user_vector = list(cresp.user_vector)
    except grpc.RpcError as exc:
        if exc.code() not in DEGRADABLE:
            raise
        log.warning("candidate stage %s: serving popular/fresh", exc.code().name)
        degraded.append("candidate")
        cands = fallback_candidates(store, state, 3 * k + 50, filters)
    # 2. scoring (same model version as the candidates); fallback lists skip it
    scored: list[common_pb2.ScoredVideo] | None = None
    if "candidate" not in degraded:
        try:
            sresp = stubs.ranker.Score(
                ranker_pb2.ScoreRequest(request_id=request_id, user=user, candidates=cands,
                                        top_m=max(budget.top_m, k), model_version=version,
                                        user_vector=user_vector, explain=explain),
                timeout=min(budget.ranker_timeout_s, _left(deadline) * budget.ranker_share))
            scored = list(sresp.videos)
            version = sresp.model_version or version
        except grpc.RpcError as exc:
            if exc.code() not in DEGRADABLE:
                raise
            log.warning("ranker stage %s: keeping candidate order", exc.code().name)
            degraded.append("ranker")
    if scored is None:
        scored = candidate_order(cands)
    # 3. business rules
    try:
        rresp = stubs.reranker.Rerank(
            reranker_pb2.RerankRequest(request_id=request_id, user=user, videos=scored, k=k,
                                       explain=explain),
            timeout=min(budget.reranker_timeout_s, _left(deadline)))
        final = list(rresp.videos)
    except grpc.RpcError as exc:
        if exc.code() not in DEGRADABLE:
            raise
        log.warning("reranker stage %s: applying the rerank rules here", exc.code().name)
        degraded.append("reranker")
        final = apply_rules(store, user, scored, k, rules, now=time.time(),
                            store_optional=True, explain=explain)
    return FunnelResult(final, version, degraded)


def candidate_order(cands: list[common_pb2.CandidateVideo]) -> list[common_pb2.ScoredVideo]:
    """Candidates as scored videos in the order the candidate stage returned them."""
    n = len(cands)
    return [common_pb2.ScoredVideo(video_id=c.video_id, score=float(n - i), source=c.source,
                                   anchor_video_id=c.anchor_video_id)
            for i, c in enumerate(cands)]


def fallback_candidates(store: FeatureStore, state: UserState, n: int,
                        filters: common_pb2.Filters | None = None
                        ) -> list[common_pb2.CandidateVideo]:
    """Fresh and popular lists from Redis, with the request's filters applied here."""
    from vidrec.serving.convert import passes, search_filter

    flt = search_filter(filters) if filters is not None else None
    out = []
    seen = state.seen | set(state.history)
    for name, read, src in (
            ("fresh", store.fresh_list, common_pb2.CANDIDATE_SOURCE_FRESH),
            ("popular", store.popular_list, common_pb2.CANDIDATE_SOURCE_POPULAR)):
        limit = n // 5 if src == common_pb2.CANDIDATE_SOURCE_FRESH else n
        try:
            ids = read(n)
            meta = store.videos(ids[:limit]) if flt is not None else {}
        except Exception:
            log.warning("fallback %s list unavailable", name)
            continue
        for v in ids[:limit]:
            if flt is not None and not passes(flt, meta.get(v)):
                continue
            if v not in seen:
                seen.add(v)
                out.append(common_pb2.CandidateVideo(video_id=v, source=src))
    return out

