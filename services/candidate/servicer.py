"""Candidate.Generate: protobuf in, candidate sources (sources.py) out."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import grpc

from services.candidate.sources import CandidateModel, generate, user_mf_vector
from vidrec.logs import set_request_id
from vidrec.serving.convert import SOURCE_ENUMS, profile_dict, search_filter
from vidrec.serving.holder import ModelHolder, VersionUnavailable
from vidrec.store.features import FeatureStore
from vidrec.store.index import CONTENT, MF, TT
from vidrec.v1 import candidate_pb2, candidate_pb2_grpc

log = logging.getLogger(__name__)

MAX_N = 2000
# SimilarVideos' vector kinds: the index's named vector each one searches, and the source
# its results carry.
SIMILAR_BY = {"two_tower": (TT, "two_tower"), "content": (CONTENT, "content_similar"),
              "co_watch": (MF, "mf")}
# The fresh-uploads and popular lists are read from Redis at most this often (one round
# trip per request was a third of this service's time at 80 req/s); a new upload shows up
# within a second. The trainer rewrites the popular list every few seconds.
FRESH_TTL_S = 1.0
POPULAR_TTL_S = 5.0
POPULAR_READ = 200


class CandidateServicer(candidate_pb2_grpc.CandidateServicer):
    def __init__(self, holder: ModelHolder[CandidateModel], store: FeatureStore,
                 default_n: int) -> None:
        self.holder = holder
        self.store = store
        self.default_n = default_n
        self._lists: dict[str, tuple[float, list[str]]] = {}

    def _list(self, name: str, read: Callable[[int], list[str]], n: int, ttl_s: float
              ) -> list[str]:
        """A Redis list, cached for ttl_s. These lists are nice-to-haves: Redis trouble
        gives an empty list (the caller falls back), never a failed request."""
        at, ids = self._lists.get(name, (-ttl_s, []))
        now = time.monotonic()
        if now - at < ttl_s:
            return ids
        try:
            ids = read(n)
        except Exception:
            log.warning("%s list unavailable", name)
            ids = []
        self._lists[name] = (now, ids)
        return ids

    def fresh_ids(self) -> list[str]:
        return self._list("fresh", self.store.fresh_list, 50, FRESH_TTL_S)

    def popular_ids(self) -> list[str]:
        """Trending now (the trainer keeps it from live events); empty: the model's own."""
        return self._list("popular", self.store.popular_list, POPULAR_READ, POPULAR_TTL_S)

    def _model(self, n: int, version: str, context: grpc.ServicerContext) -> CandidateModel:
        """The asked model version (empty: the current one) once `n` is in bounds."""
        if not 0 < n <= MAX_N:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"n must be in 1..{MAX_N}, got {n}")
        try:
            return self.holder.get(version) if version else self.holder.current()[1]
        except VersionUnavailable as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
            raise  # unreachable: abort raised

    def Generate(self, request: candidate_pb2.GenerateRequest, context: grpc.ServicerContext
                 ) -> candidate_pb2.GenerateResponse:
        set_request_id(request.request_id)
        n = request.n or self.default_n
        cm = self._model(n, request.model_version, context)
        u = request.user
        history = list(u.recent_video_ids)
        mf = user_mf_vector(cm, u.user_id, list(u.mf_vector), u.mf_vector_version)
        uv = cm.online.user_vectors(u.user_id, profile_dict(u.profile), history, mf, demo=False)
        seen = set(u.seen_video_ids) | set(u.negative_video_ids) | set(history)
        fresh, popular = self.fresh_ids(), self.popular_ids()
        unknown = [v for v in dict.fromkeys(fresh + popular) if v not in cm.online.videos]
        if unknown:
            # Uploaded after this model was trained: embed from Redis features, index it.
            for rec in self.store.videos(unknown).values():
                cm.add_video(rec)
        cands = generate(cm, u.user_id, uv, history, seen, n, search_filter(request.filters),
                         fresh, u.experiment_arm, popular_ids=popular or None)
        resp = candidate_pb2.GenerateResponse(model_version=cm.version,
                                              user_vector=uv.two_tower.tolist())
        # Filled field by field: 68 us for 200 candidates against 158 us with keyword
        # constructors (this list is on every request's critical path).
        add = resp.candidates.add
        for c in cands:
            m = add()
            m.video_id = c.video_id
            m.source = SOURCE_ENUMS.get(c.source, 0)
            m.score = c.score
            if c.anchor:
                m.anchor_video_id = c.anchor
        return resp

    def Similar(self, request: candidate_pb2.SimilarRequest, context: grpc.ServicerContext
                ) -> candidate_pb2.GenerateResponse:
        """The videos nearest to one video by the asked vector kind, the video itself left
        out; each result's anchor is the asked-about video."""
        set_request_id(request.request_id)
        by = request.by or "two_tower"
        if by not in SIMILAR_BY:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"by must be one of {', '.join(SIMILAR_BY)}, got {by!r}")
        n = request.n or 20
        cm = self._model(n, request.model_version, context)
        o, vid = cm.online, request.video_id
        if not o.knows(vid) and vid not in o.videos:
            for rec in self.store.videos([vid]).values():  # uploaded after this version
                cm.add_video(rec)
        using, source = SIMILAR_BY[by]
        vec = None
        if using == TT:
            vec = o.video_vector(vid)
        elif using == CONTENT:
            vec = o.content_vector(vid)
        elif (i := o.index.get(vid)) is not None:
            vec = o.b.mf_video[i]
        if vec is None:
            if vid in o.videos and using == MF:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                              f"video {vid!r} has no co-watch data yet (uploaded after model "
                              f"{cm.version} was trained); ask by content or two_tower")
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown video {vid!r}")
        assert vec is not None  # abort() raised otherwise
        hits = cm.index.search(cm.collection, vec, n + 1, search_filter(request.filters),
                               using=using)
        resp = candidate_pb2.GenerateResponse(model_version=cm.version)
        enum = SOURCE_ENUMS.get(source, 0)
        for other, score in hits:
            if other != vid and len(resp.candidates) < n:
                resp.candidates.add(video_id=other, source=enum, score=score, anchor_video_id=vid)
        return resp
