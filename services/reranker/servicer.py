"""Reranker.Rerank: protobuf + video metadata from Redis -> rules.rerank -> protobuf."""

from __future__ import annotations

import time

import grpc

from services.reranker.rules import Item, RerankConfig, UserState, rerank
from vidrec.logs import request_id_var
from vidrec.serving.convert import source_enum, source_name
from vidrec.store.features import FeatureStore
from vidrec.v1 import common_pb2, reranker_pb2, reranker_pb2_grpc

MAX_ITEMS = 5000
MAX_K = 500


def _float(x: str | None) -> float | None:
    try:
        return float(x) if x else None
    except ValueError:
        return None


class RerankerServicer(reranker_pb2_grpc.RerankerServicer):
    def __init__(self, store: FeatureStore, cfg: RerankConfig) -> None:
        self.store = store
        self.cfg = cfg

    def Rerank(self, request: reranker_pb2.RerankRequest, context: grpc.ServicerContext
               ) -> reranker_pb2.RerankResponse:
        request_id_var.set(request.request_id or "-")
        if not 0 < request.k <= MAX_K:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"k must be in 1..{MAX_K}")
        if len(request.videos) > MAX_ITEMS:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"at most {MAX_ITEMS} videos")
        u = request.user
        recent = list(u.recent_video_ids)
        negatives = list(u.negative_video_ids)
        ids = [v.video_id for v in request.videos]
        meta = self.store.videos(list(dict.fromkeys(ids + recent[:20] + negatives[:50])))
        items = []
        for v in request.videos:
            m = meta.get(v.video_id, {})
            items.append(Item(v.video_id, v.score, source_name(v.source), v.anchor_video_id,
                              m.get("category", ""), m.get("creator_id", ""),
                              _float(m.get("upload_ts")), None, m.get("title", "")))
        liked = {meta[v]["creator_id"] for v in recent[:20]
                 if v in meta and meta[v].get("creator_id")}
        state = UserState(
            u.user_id, seen=set(u.seen_video_ids), recent=recent,
            disliked_creators=set(u.disliked_creator_ids) | {
                meta[v]["creator_id"] for v in negatives
                if v in meta and meta[v].get("creator_id") and meta[v]["creator_id"] not in liked},
            recent_titles={v: meta[v].get("title", "") for v in recent[:20] if v in meta},
            liked_creators=liked)
        ranked = rerank(items, state, request.k, self.cfg, now=time.time())
        return reranker_pb2.RerankResponse(videos=[
            common_pb2.ScoredVideo(video_id=r.item.video_id, score=r.item.score,
                                   source=source_enum(r.item.source),
                                   anchor_video_id=r.item.anchor_video_id, reason=r.reason)
            for r in ranked])
