"""Ranker.Score: protobuf in, scoring.py, protobuf out."""

from __future__ import annotations

import grpc
import numpy as np

from services.ranker.scoring import score_candidates
from vidrec.logs import set_request_id
from vidrec.models.online import OnlineModel
from vidrec.serving.convert import profile_dict
from vidrec.serving.holder import ModelHolder, VersionUnavailable
from vidrec.store.features import FeatureStore
from vidrec.v1 import common_pb2, ranker_pb2, ranker_pb2_grpc

MAX_CANDIDATES = 5000


class RankerServicer(ranker_pb2_grpc.RankerServicer):
    def __init__(self, holder: ModelHolder[OnlineModel], store: FeatureStore | None,
                 default_top_m: int) -> None:
        self.holder = holder
        self.store = store
        self.default_top_m = default_top_m

    def Score(self, request: ranker_pb2.ScoreRequest, context: grpc.ServicerContext
              ) -> ranker_pb2.ScoreResponse:
        set_request_id(request.request_id)
        if len(request.candidates) > MAX_CANDIDATES:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"at most {MAX_CANDIDATES} candidates, got {len(request.candidates)}")
        top_m = request.top_m or self.default_top_m
        if top_m < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "top_m must be positive")
        try:
            if request.model_version:
                model = self.holder.get(request.model_version)
                version = request.model_version
            else:
                version, model = self.holder.current()
        except VersionUnavailable as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        u = request.user
        mf = (np.asarray(u.mf_vector, dtype=np.float32)
              if u.mf_vector and u.mf_vector_version == version else None)
        if mf is not None:
            mf_dim = model.b.mf_video.shape[1]
            if mf.shape != (mf_dim,) or not np.all(np.isfinite(mf)):
                # A wrong size gave INTERNAL and NaN flowed into the ranking.
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"mf_vector must be {mf_dim} finite numbers for model "
                              f"{version}, got {len(mf)}")
        cands = [(c.video_id, c.source, c.anchor_video_id) for c in request.candidates]
        fresh = np.fromiter((c[1] == common_pb2.CANDIDATE_SOURCE_FRESH for c in cands),
                            dtype=bool, count=len(cands))
        tt = None
        if request.user_vector and request.model_version:
            tt = np.asarray(request.user_vector, dtype=np.float32)
            dim = model.b.video_vectors.shape[1]
            if tt.shape != (dim,) or not np.all(np.isfinite(tt)):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"user_vector must be {dim} finite numbers for model "
                              f"{version}, got {len(tt)}")
        scored = score_candidates(model, self.store, u.user_id, profile_dict(u.profile),
                                  list(u.recent_video_ids), mf, [c[0] for c in cands],
                                  fresh, top_m, tt, explain=request.explain)
        resp = ranker_pb2.ScoreResponse(model_version=version, videos=[
            common_pb2.ScoredVideo(video_id=cands[s.position][0], score=s.score,
                                   source=cands[s.position][1],
                                   anchor_video_id=cands[s.position][2] or s.anchor)
            for s in scored])
        if request.explain:
            for rank, (v, s) in enumerate(zip(resp.videos, scored, strict=True), start=1):
                v.terms.update(s.terms or {})
                v.ranker_score = s.score
                v.ranker_rank = rank
        return resp
