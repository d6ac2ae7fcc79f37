"""The gateway's degraded path (reranker down) applies the reranker's own configured rules:
same caps, seen filter, dislikes and reasons, read from the same settings."""

from __future__ import annotations

import os
import time
from collections import Counter

import grpc
import pytest
import redis

from services.gateway.__main__ import main as gateway_main
from services.gateway.funnel import Budget, FunnelResult, Stubs, run_funnel
from services.reranker.servicer import RerankerServicer
from vidrec.config import GatewaySettings, load_settings
from vidrec.infra.embedded import free_port
from vidrec.rerank import RerankConfig
from vidrec.store.features import FeatureStore, UserState
from vidrec.v1 import candidate_pb2, common_pb2, ranker_pb2, reranker_pb2

ADDRS = {"VIDREC_CANDIDATE_ADDR": "127.0.0.1:1", "VIDREC_RANKER_ADDR": "127.0.0.1:2",
         "VIDREC_RERANKER_ADDR": "127.0.0.1:3"}
K = 6
POPULAR = common_pb2.CANDIDATE_SOURCE_POPULAR
FRESH = common_pb2.CANDIDATE_SOURCE_FRESH
SIMILAR = common_pb2.CANDIDATE_SOURCE_CONTENT_SIMILAR
TWO_TOWER = common_pb2.CANDIDATE_SOURCE_TWO_TOWER

# video_id, creator, category, ranker score, source, anchor
SCORED = [
    ("s1", "C", "music", 0.99, TWO_TOWER, ""),  # seen
    ("a1", "A", "music", 0.95, TWO_TOWER, ""),
    ("a2", "A", "music", 0.94, TWO_TOWER, ""),  # same creator: the cap of 1 drops it
    ("x1", "X", "news", 0.93, TWO_TOWER, ""),  # creator the user disliked
    ("a3", "A", "news", 0.92, TWO_TOWER, ""),
    ("d1", "D", "music", 0.91, SIMILAR, "w1"),
    ("b1", "B", "sport", 0.90, POPULAR, ""),
    ("b2", "B", "sport", 0.89, TWO_TOWER, ""),
    ("e1", "E", "comedy", 0.80, POPULAR, ""),
    ("f1", "F", "science", 0.70, FRESH, ""),
    ("g1", "G", "sport", 0.60, TWO_TOWER, ""),
    ("h1", "H", "music", 0.50, TWO_TOWER, ""),
]
HISTORY = [("w1", "D", "music", "Cat Piano"), ("n1", "X", "news", "Bad Take")]


class Unavailable(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE


class FakeCandidate:
    def Generate(self, request: candidate_pb2.GenerateRequest, timeout: float
                 ) -> candidate_pb2.GenerateResponse:
        return candidate_pb2.GenerateResponse(model_version="v1", candidates=[
            common_pb2.CandidateVideo(video_id=v, source=src, anchor_video_id=anchor)
            for v, _, _, _, src, anchor in SCORED])


class FakeRanker:
    def Score(self, request: ranker_pb2.ScoreRequest, timeout: float) -> ranker_pb2.ScoreResponse:
        return ranker_pb2.ScoreResponse(model_version="v1", videos=[
            common_pb2.ScoredVideo(video_id=v, score=score, source=src, anchor_video_id=anchor)
            for v, _, _, score, src, anchor in SCORED])


class DownReranker:
    """Fails like a reranker that is gone, keeping the request it was sent."""

    def __init__(self) -> None:
        self.requests: list[reranker_pb2.RerankRequest] = []

    def Rerank(self, request: reranker_pb2.RerankRequest, timeout: float
               ) -> reranker_pb2.RerankResponse:
        self.requests.append(request)
        raise Unavailable()


class NoAbort:
    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise AssertionError(f"reranker aborted: {code} {details}")


def _user() -> tuple[common_pb2.UserContext, UserState]:
    state = UserState("u1", history=["w1"], seen={"s1", "w1", "n1"}, negatives=["n1"])
    user = common_pb2.UserContext(user_id="u1", recent_video_ids=state.history,
                                  negative_video_ids=state.negatives,
                                  seen_video_ids=sorted(state.seen))
    return user, state


def _funnel(store: FeatureStore, cfg: RerankConfig) -> tuple[FunnelResult, DownReranker]:
    reranker = DownReranker()
    stubs = Stubs(FakeCandidate(), FakeRanker(), reranker)  # type: ignore[arg-type]
    user, state = _user()
    res = run_funnel(stubs, store, "req1", user, state, K, common_pb2.Filters(),
                     time.monotonic() + 10, Budget(), cfg)
    return res, reranker


@pytest.fixture
def store(redis_client: redis.Redis, key_prefix: str) -> FeatureStore:
    s = FeatureStore(redis_client, key_prefix)
    now = time.time()
    rows = [{"video_id": v, "creator_id": c, "category": cat, "title": f"title {v}",
             "upload_ts": now - (3600 if v == "f1" else 400 * 86_400)}
            for v, c, cat, *_ in SCORED]
    rows += [{"video_id": v, "creator_id": c, "category": cat, "title": t,
              "upload_ts": now - 400 * 86_400} for v, c, cat, t in HISTORY]
    s.put_videos(rows)
    return s


def _configured(**env: str) -> RerankConfig:
    s = load_settings(GatewaySettings, {**ADDRS, **{f"VIDREC_{k.upper()}": v
                                                    for k, v in env.items()}})
    return RerankConfig.from_settings(s)


def test_degraded_path_obeys_the_configured_cap_and_answers_like_the_reranker(
        store: FeatureStore) -> None:
    cfg = _configured(max_per_creator="1")
    assert cfg.max_per_creator == 1
    res, reranker = _funnel(store, cfg)
    assert res.degraded == ["reranker"] and res.model_version == "v1"
    assert len(reranker.requests) == 1
    got = [v.video_id for v in res.videos]
    assert len(got) == K

    creators = Counter(store.videos(got)[v]["creator_id"] for v in got)
    assert max(creators.values()) == 1  # A and B each had more than one candidate
    assert not {"s1", "w1", "n1"} & set(got)  # seen and watched
    assert "x1" not in got  # the user disliked creator X

    # The same videos, in the same order, with the reasons the reranker itself gives.
    answer = RerankerServicer(store, cfg).Rerank(reranker.requests[0], NoAbort())  # type: ignore[arg-type]
    assert [(v.video_id, v.reason) for v in res.videos] == [
        (v.video_id, v.reason) for v in answer.videos]
    reasons = {v.video_id: v.reason for v in res.videos}
    assert reasons["d1"] == "Because you watched Cat Piano"
    assert reasons["b1"] == "Popular in sport this week"


def test_degraded_path_follows_other_knobs(store: FeatureStore) -> None:
    capped = [v.video_id for v in _funnel(store, _configured(max_per_creator="1"))[0].videos]
    uncapped = [v.video_id for v in _funnel(store, _configured(max_per_creator="0",
                                                               mmr_lambda="1"))[0].videos]
    assert {"a1", "a2"} <= set(uncapped)
    assert not {"a1", "a2"} <= set(capped)


def test_degraded_path_answers_when_the_store_is_down() -> None:
    dead = FeatureStore.from_url(f"redis://127.0.0.1:{free_port()}/0")
    res, _ = _funnel(dead, _configured(max_per_creator="1"))
    got = [v.video_id for v in res.videos]
    assert res.degraded == ["reranker"] and len(got) == K
    assert "s1" not in got  # the seen filter needs no metadata
    assert all(v.reason for v in res.videos)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("VIDREC_MMR_LAMBDA", "1.5", "mmr_lambda"),
    ("VIDREC_RULES", "seen_filter,capz", "capz"),
])
def test_a_bad_rerank_knob_stops_the_gateway_at_start_up(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        key: str, value: str, message: str) -> None:
    for k in list(os.environ):
        if k.startswith("VIDREC_"):
            monkeypatch.delenv(k)
    for k, v in {**ADDRS, key: value}.items():
        monkeypatch.setenv(k, v)
    assert gateway_main() == 2
    assert message in capsys.readouterr().err
