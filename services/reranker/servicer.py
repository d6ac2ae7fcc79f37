"""Reranker.Rerank: check the request, then vidrec.serving.rerank.apply_rules (the rules with
video metadata from Redis) and back to protobuf."""

from __future__ import annotations

import time
from dataclasses import replace

import grpc

from vidrec.logs import set_request_id
from vidrec.rerank import RerankConfig
from vidrec.serving.rerank import VideoMetadata, apply_rules
from vidrec.v1 import reranker_pb2, reranker_pb2_grpc

MAX_ITEMS = 5000
MAX_K = 500


class RerankerServicer(reranker_pb2_grpc.RerankerServicer):
    def __init__(self, store: VideoMetadata, cfg: RerankConfig) -> None:
        self.store = store
        self.cfg = cfg

    def Rerank(self, request: reranker_pb2.RerankRequest, context: grpc.ServicerContext
               ) -> reranker_pb2.RerankResponse:
        set_request_id(request.request_id)
        if not 0 < request.k <= MAX_K:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"k must be in 1..{MAX_K}")
        if len(request.videos) > MAX_ITEMS:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"at most {MAX_ITEMS} videos")
        cfg = self.cfg
        if request.only_rules:
            cfg = replace(cfg, rules=tuple(r for r in cfg.rules if r in request.only_rules))
        # A store error propagates: the server answers UNAVAILABLE and the gateway degrades.
        return reranker_pb2.RerankResponse(videos=apply_rules(
            self.store, request.user, request.videos, request.k, cfg, now=time.time(),
            explain=request.explain))
