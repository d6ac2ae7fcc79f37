"""The online system end to end: real processes (candidate, ranker, reranker, gateway,
trainer), real Redis and Kafka (embedded), the qdrant-edge index, a published model.

Tests run in file order against one stack; the ones that stop services come last.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pandas as pd
import pytest

from vidrec.data.synth import DAY, GroundTruth
from vidrec.serving.publish import publish
from vidrec.stack import Stack
from vidrec.store.artifacts import ArtifactStore
from vidrec.store.features import FeatureStore
from vidrec.store.index import EdgeIndex
from vidrec.v1 import common_pb2, events_pb2, gateway_pb2, gateway_pb2_grpc

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def stack(small_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from conftest import published_stack

    var = tmp_path_factory.mktemp("var")
    with published_stack(small_model, var, {"VIDREC_FOLDIN_INTERVAL_S": "1",
                                            "VIDREC_TRACING": f"file:{var / 'traces'}"}) as st:
        yield st


def test_no_port_of_the_stack_answers_without_credentials(stack: Stack) -> None:
    """Secure by default: the gateway wants a key over TLS, the internal services a client
    certificate from the stack's CA, Redis a password."""
    import redis as redis_lib

    from vidrec.security.client import ClientSecurity
    from vidrec.serving.healthcheck import check
    from vidrec.v1 import candidate_pb2, candidate_pb2_grpc

    sec = stack.client_security
    gw_addr = stack.services["gateway"].addr
    req = gateway_pb2.RecommendRequest(user_id="u00001", k=5)
    for who, codes in ((ClientSecurity(sec.ca), {grpc.StatusCode.UNAUTHENTICATED}),
                       (ClientSecurity(sec.ca, bearer="vrk_0_wrong"),
                        {grpc.StatusCode.UNAUTHENTICATED}),
                       (ClientSecurity(), {grpc.StatusCode.UNAVAILABLE})):  # plaintext
        with who.channel(gw_addr) as ch, pytest.raises(grpc.RpcError) as err:
            gateway_pb2_grpc.GatewayStub(ch).Recommend(req, timeout=5)
        assert err.value.code() in codes
    for name in ("candidate", "ranker", "reranker"):
        addr = stack.services[name].addr
        # TLS without a client certificate, or plaintext: no handshake, no call.
        assert check(addr, security=ClientSecurity(sec.ca)).startswith("UNREACHABLE")
        assert check(addr, security=ClientSecurity()).startswith("UNREACHABLE")
        assert check(addr, security=sec) == "SERVING"
    with ClientSecurity(sec.ca, bearer=sec.bearer).channel(
            stack.services["candidate"].addr) as ch, pytest.raises(grpc.RpcError):
        candidate_pb2_grpc.CandidateStub(ch).Generate(candidate_pb2.GenerateRequest(n=5),
                                                      timeout=5)
    port = int(stack.redis_url.rsplit(":", 1)[1].split("/")[0])
    with pytest.raises(redis_lib.AuthenticationError):
        redis_lib.Redis(port=port).get("x")
    state = json.loads((stack.var / "run" / "stack.json").read_text())
    assert state["api_key"] == sec.bearer and state["tls"]["ca"] == sec.ca
    assert (stack.var / "run" / "stack.json").stat().st_mode & 0o777 == 0o600


@pytest.fixture(scope="module")
def gw(stack: Stack) -> Iterator[gateway_pb2_grpc.GatewayStub]:
    with stack.client_security.channel(stack.services["gateway"].addr) as ch:
        yield gateway_pb2_grpc.GatewayStub(ch)


def rec(gw: gateway_pb2_grpc.GatewayStub, **kw: object) -> gateway_pb2.RecommendResponse:
    return gw.Recommend(gateway_pb2.RecommendRequest(**kw), timeout=10)  # type: ignore[arg-type]


def seen_of(stack: Stack, user: str) -> set[str]:
    return FeatureStore.from_url(stack.redis_url).user(user).seen


def test_known_user_gets_k_unseen_videos_with_reasons(stack: Stack, gw) -> None:  # type: ignore[no-untyped-def]
    r = rec(gw, user_id="u00001", k=10)
    assert len(r.videos) == 10
    assert r.model_version == "v1" and not r.degraded and r.request_id
    ids = [v.video_id for v in r.videos]
    assert len(set(ids)) == 10
    assert not set(ids) & seen_of(stack, "u00001")
    assert all(v.reason for v in r.videos)


def test_new_user_with_profile_only(gw) -> None:  # type: ignore[no-untyped-def]
    r = rec(gw, k=5, profile=common_pb2.UserProfile(age=30, country="IN", language="hi"))
    assert len(r.videos) == 5 and not r.degraded


def test_unknown_user_without_features_gets_cold_start(gw) -> None:  # type: ignore[no-untyped-def]
    r = rec(gw, user_id="never-seen-before", k=5)
    assert len(r.videos) == 5


def test_filters_restrict_every_stage(stack: Stack, gw) -> None:  # type: ignore[no-untyped-def]
    r = rec(gw, user_id="u00004", k=10,
            filters=common_pb2.Filters(languages=["es"], exclude_categories=["music"]))
    assert r.videos and not r.degraded
    meta = FeatureStore.from_url(stack.redis_url).videos([v.video_id for v in r.videos])
    assert all(meta[v.video_id]["language"] == "es" for v in r.videos)
    assert all(meta[v.video_id]["category"] != "music" for v in r.videos)


BAD = [
    ({"user_id": "u1", "k": 0}, "k must be in 1..500"),
    ({"user_id": "u1", "k": 501}, "k must be in 1..500"),
    ({"user_id": "u1", "k": -3}, "k must be in 1..500"),
    ({"user_id": "x" * 200, "k": 5}, "longer than 128"),
    ({"user_id": "bad id\n", "k": 5}, "characters outside"),
    ({"k": 5, "profile": common_pb2.UserProfile(age=500)}, "profile.age"),
    ({"k": 5, "profile": common_pb2.UserProfile(country="x" * 100)}, "profile.country"),
    ({"k": 5, "profile": common_pb2.UserProfile(extra={f"f{i}": "v" for i in range(40)})},
     "more than 32"),
    ({"k": 5, "filters": common_pb2.Filters(languages=["x" * 5000] * 20)}, "bytes; the limit"),
]


@pytest.mark.parametrize(("kw", "reason"), BAD)
def test_bad_recommend_input_is_invalid_argument(gw, kw: dict, reason: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as err:
        rec(gw, **kw)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason in (err.value.details() or "")


def event(user: str, video: str, etype: int, value: float = 0.0, **kw: object) -> events_pb2.Event:
    return events_pb2.Event(event_id=uuid.uuid4().hex, user_id=user, video_id=video, type=etype,
                            value=value, timestamp=time.time(), **kw)  # type: ignore[arg-type]


BAD_EVENTS = [
    (event("u1", "v00001", 99), "not a known event type"),
    (event("u1", "v00001", events_pb2.EVENT_TYPE_WATCH, 1.5), "watched fraction"),
    (event("u1", "v00001", events_pb2.EVENT_TYPE_RATING, 9), "rating must be in 1..5"),
    (event("u1", "v00001", events_pb2.EVENT_TYPE_WATCH, float("nan")), "not a finite number"),
    (event("", "v00001", events_pb2.EVENT_TYPE_CLICK), "user_id is required"),
]


@pytest.mark.parametrize(("ev", "reason"), BAD_EVENTS)
def test_bad_events_are_invalid_argument(gw, ev: events_pb2.Event, reason: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as err:
        gw.LogEvents(gateway_pb2.LogEventsRequest(events=[ev]), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason in (err.value.details() or "")


def test_a_watch_shows_in_the_next_recommend(stack: Stack, gw) -> None:  # type: ignore[no-untyped-def]
    user = "u00002"
    first = rec(gw, user_id=user, k=10)
    top = first.videos[0].video_id
    ack = gw.LogEvents(gateway_pb2.LogEventsRequest(events=[
        event(user, top, events_pb2.EVENT_TYPE_WATCH, 0.95, watch_time_s=120,
              model_version=first.model_version, experiment_arm=first.experiment_arm)]),
        timeout=10)
    assert ack.accepted == 1
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        r = rec(gw, user_id=user, k=10)
        if top not in {v.video_id for v in r.videos}:
            break
        time.sleep(0.1)
    assert top not in {v.video_id for v in r.videos}
    st = FeatureStore.from_url(stack.redis_url).user(user)
    assert st.history[0] == top and top in st.seen


def test_stats_count_impressions_and_watches(gw) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        stats = gw.GetStats(gateway_pb2.GetStatsRequest(), timeout=5).stats
        row = next((s for s in stats if s.model_version == "v1"), None)
        if row is not None and row.impressions > 0 and row.watches > 0:
            break
        time.sleep(0.2)
    assert row is not None and row.impressions >= 10 and row.watches >= 1
    assert row.completed >= 1 and row.watch_time_s >= 120
    assert 0 < row.ctr <= 1 or row.clicks == 0
    # Intervals with users as the unit come with the counters.
    assert row.users >= 1 and row.ctr_lo <= row.ctr <= row.ctr_hi


def test_poison_messages_go_to_dlq_and_good_events_flow(stack: Stack) -> None:
    from vidrec import schema
    from vidrec.infra.kafka import EventProducer, make_consumer, poll_records

    good = event("u00003", "v00005", events_pb2.EVENT_TYPE_LIKE)
    poison = [
        (b"u1", b"\xff\xfe not protobuf"),
        (b"u1", event("u1", "no-such-video", events_pb2.EVENT_TYPE_CLICK).SerializeToString()),
        (b"u1", event("u1", "v00001", events_pb2.EVENT_TYPE_WATCH,
                      float("nan")).SerializeToString()),
        (b"u1", b"\x0a" + b"x" * 70_000),
    ]
    with EventProducer(stack.kafka_bootstrap) as p:
        p.send_records(schema.TOPIC_EVENTS, [*poison, (b"u00003", good.SerializeToString())])
    consumer = make_consumer(stack.kafka_bootstrap, f"dlq-reader-{uuid.uuid4().hex[:6]}",
                             [schema.TOPIC_EVENTS_DLQ])
    try:
        recs = poll_records(consumer, 4, timeout_s=30)
    finally:
        consumer.close()
    reasons = [json.loads(r.value)["reason"] for r in recs]
    assert any("not a vidrec.v1.Event" in r for r in reasons)
    assert any("unknown video" in r for r in reasons)
    assert any("not a finite number" in r for r in reasons)
    assert any("bytes; the limit" in r for r in reasons)
    assert all("offset" in json.loads(r.value) for r in recs)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and "v00005" not in seen_of(stack, "u00003"):
        time.sleep(0.1)
    assert "v00005" in seen_of(stack, "u00003")


def test_dead_letters_are_listed_and_replayed_once_their_video_exists(stack: Stack) -> None:
    """`vidrec dlq list` shows the unknown-video letter of the poison test above; once the
    video is upserted, `vidrec dlq replay` gets the event applied (nothing ever replayed
    the DLQ before)."""
    import subprocess
    import sys

    from vidrec import schema
    from vidrec.infra.kafka import EventProducer

    def cli(*args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "vidrec.cli", "dlq", *args],
                             env=stack.env(), capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout

    listed = cli("list")
    assert "unknown video 'no-such-video'" in listed and "not a vidrec.v1.Event" in listed
    msg = events_pb2.VideoUpserted(video_id="no-such-video", title="Late upload",
                                   category="travel", creator_id="c-late", upload_ts=time.time())
    with EventProducer(stack.kafka_bootstrap) as p:
        p.send_records(schema.TOPIC_VIDEOS, [(b"no-such-video", msg.SerializeToString())])
    store = FeatureStore.from_url(stack.redis_url)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not store.videos(["no-such-video"]):
        time.sleep(0.1)
    assert "replayed 1 event(s)" in cli("replay", "--reason", "unknown video 'no-such-video'")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and "no-such-video" not in seen_of(stack, "u1"):
        time.sleep(0.1)
    assert "no-such-video" in seen_of(stack, "u1")


def test_ranker_reuses_or_rejects_the_candidate_user_vector(stack: Stack) -> None:
    """The ranker scores alike with the candidate stage's user vector and without it, and a
    vector of the wrong size or with NaN is INVALID_ARGUMENT, not a traceback."""
    from vidrec.v1 import candidate_pb2, candidate_pb2_grpc, ranker_pb2, ranker_pb2_grpc

    user = common_pb2.UserContext(user_id="u00003")
    with stack.client_security.channel(stack.services["candidate"].addr) as ch:
        c = candidate_pb2_grpc.CandidateStub(ch).Generate(
            candidate_pb2.GenerateRequest(user=user, n=50), timeout=10)
    assert len(c.user_vector) > 0 and c.candidates
    with stack.client_security.channel(stack.services["ranker"].addr) as ch:
        ranker = ranker_pb2_grpc.RankerStub(ch)

        def score(vec: list[float]) -> ranker_pb2.ScoreResponse:
            return ranker.Score(ranker_pb2.ScoreRequest(
                user=user, candidates=c.candidates, top_m=20, model_version=c.model_version,
                user_vector=vec), timeout=10)

        with_vec, without = score(list(c.user_vector)), score([])
        assert [v.video_id for v in with_vec.videos] == [v.video_id for v in without.videos]
        for bad in (list(c.user_vector)[:-1], [float("nan")] * len(c.user_vector)):
            with pytest.raises(grpc.RpcError) as err:
                score(bad)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "user_vector" in (err.value.details() or "")
        # The MF vector the gateway forwards from Redis is checked the same way (a wrong
        # size gave INTERNAL, NaN flowed into the ranking).
        for bad in ([0.1] * 3, [float("nan")] * 3):
            u = common_pb2.UserContext(user_id="u00003", mf_vector=bad,
                                       mf_vector_version=c.model_version)
            with pytest.raises(grpc.RpcError) as err:
                ranker.Score(ranker_pb2.ScoreRequest(user=u, candidates=c.candidates, top_m=20,
                                                     model_version=c.model_version),
                             timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "mf_vector" in (err.value.details() or "")


def test_candidates_mix_every_source(stack: Stack) -> None:
    """Each side source (MF, content-similar, popular) gets its share of n, the side sources
    together at most half, the two-tower the rest; nothing the user has seen comes back."""
    from vidrec.models.mix import Mix
    from vidrec.v1 import candidate_pb2, candidate_pb2_grpc

    state = FeatureStore.from_url(stack.redis_url).user("u00003")
    assert state.history, "the test user needs a history for content-similar candidates"
    user = common_pb2.UserContext(user_id="u00003", recent_video_ids=state.history,
                                  seen_video_ids=sorted(state.seen))
    n, mix = 60, Mix()
    with stack.client_security.channel(stack.services["candidate"].addr) as ch:
        c = candidate_pb2_grpc.CandidateStub(ch).Generate(
            candidate_pb2.GenerateRequest(user=user, n=n), timeout=10)
    sources = [common_pb2.CandidateSource.Name(v.source) for v in c.candidates]
    count = {s: sources.count(f"CANDIDATE_SOURCE_{s.upper()}")
             for s in ("two_tower", "mf", "content_similar", "popular")}
    assert len(c.candidates) == n
    assert count["mf"] == mix.quota(mix.mf, n)
    assert 0 < count["content_similar"] <= mix.content_anchors * mix.quota(
        mix.content_per_anchor, n)
    assert count["popular"] == mix.quota(mix.popular, n)
    assert count["two_tower"] >= n // 2
    assert not {v.video_id for v in c.candidates} & (state.seen | set(state.history))


def test_what_trends_now_reaches_new_users(stack: Stack, gw) -> None:  # type: ignore[no-untyped-def]
    """Likes sent through the gateway now lift a video that was last in the popular list
    to its top (the trainer counts them and rewrites the list), and the candidate stage's
    popular source offers it to a new user. The fans are established viewers (six videos
    watched first): a brand-new account's likes do not move trending."""
    from vidrec.v1 import candidate_pb2, candidate_pb2_grpc

    store = FeatureStore.from_url(stack.redis_url)
    popular = store.popular_list(500)
    fresh = set(store.fresh_list(200))
    target = next(v for v in reversed(popular) if v not in fresh)
    score = store.trending_scores()
    need = int(score[popular[0]] - score[target]) + 20
    others = [v for v in popular if v != target]
    evs = []
    for i in range(need):
        evs += [event(f"fan{i}", others[(i * 6 + j) % len(others)], events_pb2.EVENT_TYPE_WATCH,
                      0.9) for j in range(6)]
        evs.append(event(f"fan{i}", target, events_pb2.EVENT_TYPE_LIKE))
    need = len(evs)
    for b in range(0, need, 1000):
        assert gw.LogEvents(gateway_pb2.LogEventsRequest(events=evs[b: b + 1000]),
                            timeout=10).accepted == len(evs[b: b + 1000])
    new_user = common_pb2.UserContext(user_id="brand-new-fan")
    deadline = time.monotonic() + 90  # a bound, not a target: slow machines differ
    got: dict[str, str] = {}
    with stack.client_security.channel(stack.services["candidate"].addr) as ch:
        stub = candidate_pb2_grpc.CandidateStub(ch)
        while time.monotonic() < deadline:
            c = stub.Generate(candidate_pb2.GenerateRequest(user=new_user, n=60), timeout=10)
            got = {v.video_id: common_pb2.CandidateSource.Name(v.source) for v in c.candidates}
            if got.get(target) == "CANDIDATE_SOURCE_POPULAR":
                break
            time.sleep(0.5)
    assert store.popular_list(1) == [target]
    assert got.get(target) == "CANDIDATE_SOURCE_POPULAR"


def test_new_video_becomes_recommendable(stack: Stack, gw) -> None:  # type: ignore[no-untyped-def]
    from vidrec import schema
    from vidrec.infra.kafka import EventProducer

    vid = "brand-new-video"
    msg = events_pb2.VideoUpserted(video_id=vid, title="Brand new travel vlog", category="travel",
                                   tags=["travel"], creator_id="c-new", language="en",
                                   duration_s=300, upload_ts=time.time())
    with EventProducer(stack.kafka_bootstrap) as p:
        p.send_records(schema.TOPIC_VIDEOS, [(vid.encode(), msg.SerializeToString())])
    deadline = time.monotonic() + 20
    found = False
    while time.monotonic() < deadline and not found:
        for u in ("u00010", "u00011", "u00012", "u00013"):
            if vid in {v.video_id for v in rec(gw, user_id=u, k=50).videos}:
                found = True
                break
        time.sleep(0.2)
    assert found, "a video upserted through vidrec.videos was never recommended"


def test_simulation_drives_online_metrics(stack: Stack, gw, small_dataset: Path,  # type: ignore[no-untyped-def]
                                          tmp_path: Path) -> None:
    from vidrec.simulate import server_stats, simulate, write_report

    before = sum(s.impressions for s in gw.GetStats(gateway_pb2.GetStatsRequest(),
                                                    timeout=5).stats)
    res = simulate(stack.services["gateway"].addr, small_dataset, steps=40, k=5, seed=1,
                   new_user_share=0.25, window=10, progress=False, var=stack.var)
    assert sum(w.requests for w in res.totals.values()) == 40
    assert len(res.windows) == 4 and res.versions == {"v1"}
    assert sum(w.clicks for w in res.totals.values()) > 0
    # Simulated time ran 30 days past the data's window (step 39 of 40 the last): every
    # later video whose upload time came by then was uploaded through the gateway.
    truth = GroundTruth.load(small_dataset)
    later = pd.read_csv(small_dataset / "later" / "videos.csv", dtype={"video_id": str})
    ts = truth.video_upload_ts[truth.video_index(later["video_id"].to_numpy())]
    assert res.uploaded == int((ts <= truth.params.t_end + 30 * DAY * 39 / 40).sum()) > 0
    store = FeatureStore.from_url(stack.redis_url)
    first = later["video_id"].to_numpy()[np.argmin(ts)]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not store.videos([str(first)], fresh=True):
        time.sleep(0.2)
    assert store.videos([str(first)], fresh=True), "an uploaded video never reached the store"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        stats = server_stats(stack.services["gateway"].addr, stack.var)
        if sum(int(r["impressions"]) for r in stats) >= before + 100:
            break
        time.sleep(0.2)
    # 40 requests x 5 shown = 200 impressions; allow for ones still in flight
    assert sum(int(r["impressions"]) for r in stats) >= before + 100
    report = write_report(res, tmp_path / "sim", stats)
    assert "| hybrid |" in report.read_text()
    assert (tmp_path / "sim" / "simulation.png").stat().st_size > 10_000


def test_hot_swap_under_load_has_no_failures(stack: Stack, gw, small_model: Path) -> None:  # type: ignore[no-untyped-def]
    import threading

    results: list[str] = []
    errors: list[str] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                r = rec(gw, user_id="u00020", k=10)
                results.append(r.model_version if not r.degraded else "degraded")
            except grpc.RpcError as exc:
                errors.append(exc.code().name)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    index = EdgeIndex(stack.index_root)
    v2 = publish(small_model, ArtifactStore(stack.artifact_root), index,
                 FeatureStore.from_url(stack.redis_url))
    index.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not results or results[-1] != v2):
        time.sleep(0.1)
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join()
    assert not errors
    assert "degraded" not in results
    assert set(results) <= {"v1", v2} and results[-1] == v2


def test_rollback_returns_to_previous_version(stack: Stack, gw) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "vidrec.cli", "rollback"], env=stack.env(),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    prev = ArtifactStore(stack.artifact_root).latest()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and rec(gw, user_id="u00001", k=5).model_version != prev:
        time.sleep(0.2)
    assert rec(gw, user_id="u00001", k=5).model_version == prev


def test_versions_status_and_rollback_to_a_named_version(stack: Stack, gw) -> None:  # type: ignore[no-untyped-def]
    """`vidrec versions --json` lists what was served; `rollback --to` goes to a named one
    (and refuses one never served); `status --json` and `stats --json` are machine-read."""
    import subprocess
    import sys

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "vidrec.cli", *args], env=stack.env(),
                              capture_output=True, text=True, timeout=60)

    versions = json.loads(cli("versions", "--json").stdout)
    served = [v["version"] for v in versions]
    current = [v["version"] for v in versions if v["serving"]]
    assert len(served) >= 2 and len(current) == 1
    target = next(v for v in served if v != current[0])
    assert cli("rollback", "--to", "v999").returncode == 1
    assert cli("rollback", "--to", target).returncode == 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and rec(gw, user_id="u00001", k=5).model_version != target:
        time.sleep(0.2)
    assert rec(gw, user_id="u00001", k=5).model_version == target
    status = json.loads(cli("status", "--var", str(stack.var), "--json").stdout)
    health = {r["service"]: r["health"] for r in status}
    assert health["gateway"] == "SERVING" and health["web"] == "SERVING"  # web: its /readyz
    stats = json.loads(cli("stats", "--var", str(stack.var), "--gateway",
                           stack.services["gateway"].addr, "--json").stdout)
    assert stats and {"model_version", "experiment_arm", "impressions"} <= set(stats[0])


def _hostile_inputs() -> list[tuple[str, str, object]]:
    """(case, method, request): each must be INVALID_ARGUMENT through the real gateway."""
    G, E = gateway_pb2, events_pb2
    now = time.time()

    def ev(**kw: object) -> gateway_pb2.LogEventsRequest:
        e = E.Event(event_id=uuid.uuid4().hex, user_id="u00001", video_id="v00001",
                    type=E.EVENT_TYPE_CLICK, timestamp=now)
        for k, v in kw.items():
            if k == "clear":
                e.ClearField(str(v))
            else:
                setattr(e, k, v)
        return G.LogEventsRequest(events=[e])

    big_profile = common_pb2.UserProfile(extra={f"k{i}": "v" for i in range(40)})
    return [
        ("Recommend k=0", "Recommend", G.RecommendRequest(user_id="u00001", k=0)),
        ("Recommend k=10000", "Recommend", G.RecommendRequest(user_id="u00001", k=10_000)),
        ("Recommend user_id with newline", "Recommend",
         G.RecommendRequest(user_id="u00001\n", k=5)),
        ("Recommend full-width user_id", "Recommend", G.RecommendRequest(user_id="ｕ１", k=5)),
        ("Recommend 200-char user_id", "Recommend", G.RecommendRequest(user_id="u" * 200, k=5)),
        ("Recommend age 500", "Recommend",
         G.RecommendRequest(k=5, profile=common_pb2.UserProfile(age=500))),
        ("Recommend control char in country", "Recommend",
         G.RecommendRequest(k=5, profile=common_pb2.UserProfile(country="U\x07S"))),
        ("Recommend 40 profile extras", "Recommend", G.RecommendRequest(k=5, profile=big_profile)),
        ("Recommend 40 filter languages", "Recommend", G.RecommendRequest(
            k=5, filters=common_pb2.Filters(languages=[f"l{i}" for i in range(40)]))),
        ("Recommend 100-char profile value", "Recommend", G.RecommendRequest(
            k=5, profile=common_pb2.UserProfile(extra={"k": "y" * 100}))),
        ("LogEvents no events", "LogEvents", G.LogEventsRequest()),
        ("LogEvents no event_id", "LogEvents", ev(event_id="")),
        ("LogEvents type 42", "LogEvents", ev(type=42)),
        ("LogEvents rating 7", "LogEvents", ev(type=E.EVENT_TYPE_RATING, value=7.0)),
        ("LogEvents watched 200%", "LogEvents", ev(type=E.EVENT_TYPE_WATCH, value=2.0)),
        ("LogEvents NaN value", "LogEvents", ev(value=float("nan"))),
        ("LogEvents timestamp 1970", "LogEvents", ev(timestamp=1.0)),
        ("LogEvents timestamp 2036", "LogEvents", ev(timestamp=2_082_758_400.0)),
        ("LogEvents timestamp 1.7e308", "LogEvents", ev(timestamp=1.7e308)),
        ("LogEvents negative watch time", "LogEvents", ev(watch_time_s=-1.0)),
        ("LogEvents model_version /etc/passwd", "LogEvents", ev(model_version="/etc/passwd")),
        ("LogEvents model_version ../../x", "LogEvents", ev(model_version="../../x")),
        ("LogEvents 20 KB experiment_arm", "LogEvents", ev(experiment_arm="a" * 20_000)),
        ("LogEvents unconfigured arm", "LogEvents", ev(experiment_arm="made_up")),
        ("LogEvents position 1e6", "LogEvents", ev(position=1_000_000)),
        ("LogEvents request_id with CR/LF", "LogEvents", ev(request_id="a\r\nb")),
        ("LogEvents video_id with a space", "LogEvents", ev(video_id="v 1")),
        ("LogEvents empty user_id", "LogEvents", ev(user_id="")),
        ("LogEvents 6000 events", "LogEvents", G.LogEventsRequest(
            events=[ev().events[0]] * 6000)),
    ]


def test_hostile_inputs_are_invalid_argument_and_nothing_falls_over(stack: Stack, gw) -> None:  # type: ignore[no-untyped-def]
    from vidrec.serving.healthcheck import check

    wrong = []
    for name, method, req in _hostile_inputs():
        try:
            getattr(gw, method)(req, timeout=10)
            wrong.append((name, "OK"))
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.INVALID_ARGUMENT:
                wrong.append((name, exc.code().name))
            elif "Traceback" in (exc.details() or ""):
                wrong.append((name, "traceback"))
    assert not wrong
    for name in ("candidate", "ranker", "reranker", "gateway"):
        assert check(stack.services[name].addr, security=stack.client_security) == "SERVING"
    # No credential ever reaches a log line.
    logs = "".join(p.read_text(errors="replace") for p in stack.log_dir.glob("*.log"))
    assert stack.api_key and stack.api_key not in logs
    assert stack.api_key.split("_", 2)[2] not in logs  # the secret may hold "_"


def test_every_process_exposes_prometheus_metrics(stack: Stack, gw) -> None:  # type: ignore[no-untyped-def]
    """Each process serves /metrics (its address in stack.json): call latencies by method
    and code, the serving model version, the trainer's applied events."""
    import urllib.request

    rec(gw, user_id="u00001", k=5)
    with pytest.raises(grpc.RpcError):
        rec(gw, user_id="bad id", k=5)
    state = json.loads((stack.var / "run" / "stack.json").read_text())
    assert set(state["metrics"]) == {"candidate", "ranker", "reranker", "gateway", "trainer",
                                     "web"}

    def scrape(name: str) -> str:
        with urllib.request.urlopen(f"http://{state['metrics'][name]}/metrics", timeout=5) as r:
            return r.read().decode()

    g = scrape("gateway")
    assert 'vidrec_rpc_duration_seconds_count{code="OK",method="Recommend",service="gateway"}' in g
    assert 'code="INVALID_ARGUMENT",method="Recommend",service="gateway"' in g
    for name in ("candidate", "ranker"):
        assert f'vidrec_serving_model_version{{service="{name}"}}' in scrape(name)
    deadline = time.monotonic() + 30
    while 'vidrec_trainer_events_total{outcome="applied"}' not in scrape("trainer"):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    t = scrape("trainer")
    assert 'vidrec_arm_events_total{arm="hybrid",type="impression"}' in t
    assert "vidrec_trainer_consumer_lag_records " in t
    assert 'vidrec_http_request_duration_seconds_count{route="/readyz",status="200"}' in scrape(
        "web")


def test_a_real_prometheus_scrapes_every_process(stack: Stack, gw, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Prometheus itself (Debian's package; .ci/run installs it) scrapes the stack's
    /metrics addresses from stack.json and answers queries over the series."""
    import shutil
    import subprocess
    import urllib.parse
    import urllib.request

    from vidrec.infra.embedded import free_port

    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed (apt-get install prometheus; .ci/run does)")
    state = json.loads((stack.var / "run" / "stack.json").read_text())
    targets = sorted(state["metrics"].values())
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(json.dumps({"global": {"scrape_interval": "1s"}, "scrape_configs": [
        {"job_name": "vidrec", "static_configs": [{"targets": targets}]}]}))
    port = free_port()
    proc = subprocess.Popen([binary, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path}/db",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=(tmp_path / "prom.log").open("wb"))

    def query(q: str) -> list[dict]:
        url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": q})
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.loads(r.read())["data"]["result"]  # type: ignore[no-any-return]

    try:
        rec(gw, user_id="u00001", k=5)
        deadline = time.monotonic() + 60
        while True:
            try:
                up = {x["metric"]["instance"]: x["value"][1] for x in query("up")}
                calls = query('sum by (service) (vidrec_rpc_duration_seconds_count)')
                if len(up) == len(targets) and set(up.values()) == {"1"} and \
                        {x["metric"]["service"] for x in calls} >= {
                            "gateway", "candidate", "ranker", "reranker"}:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "prom.log").read_text()[-2000:]
            rec(gw, user_id="u00001", k=5)
            time.sleep(1)
        assert query("vidrec_serving_model_version")
        assert query('vidrec_trainer_events_total{outcome="applied"}')
    finally:
        proc.terminate()
        proc.wait(20)


def test_one_trace_covers_the_funnel_with_the_request_id(stack: Stack, gw) -> None:  # type: ignore[no-untyped-def]
    """VIDREC_TRACING on: a Recommend is one trace, gateway -> candidate, ranker, reranker,
    each span a child of the gateway's and tagged with the request id."""
    r = rec(gw, user_id="u00004", k=5)
    traces = stack.var / "traces"

    def spans() -> list[dict]:
        return [json.loads(line) for f in traces.glob("*.jsonl")
                for line in f.read_text().splitlines() if line.strip()]

    deadline = time.monotonic() + 20
    while True:
        mine = [x for x in spans() if x["attributes"].get("vidrec.request_id") == r.request_id]
        if {x["service"] for x in mine} >= {"gateway", "candidate", "ranker", "reranker"}:
            break
        assert time.monotonic() < deadline, mine
        time.sleep(0.2)
    root = next(x for x in mine if x["service"] == "gateway")
    for x in mine:
        assert x["trace_id"] == root["trace_id"]
        if x is not root:
            assert x["parent_id"] == root["span_id"], x


def test_a_killed_service_is_restarted_by_the_supervisor(stack: Stack, gw) -> None:  # type: ignore[no-untyped-def]
    """`make run` supervises its processes: a SIGKILLed ranker comes back on its address
    and answers are personalised again (the stack once stopped everything instead)."""
    import signal

    sp = stack.services["ranker"]
    sp.signal(signal.SIGKILL)
    assert sp.proc is not None
    sp.proc.wait(10)
    assert stack.supervise() == ["ranker"]
    sp.wait_serving(120)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and rec(gw, user_id="u00001", k=5).degraded:
        time.sleep(0.2)
    assert not rec(gw, user_id="u00001", k=5).degraded
    assert stack.supervise() == []  # nothing else to do


@pytest.mark.parametrize("service", ["reranker", "ranker", "candidate"])
def test_a_stopped_stage_degrades_instead_of_failing(stack: Stack, gw, service: str) -> None:  # type: ignore[no-untyped-def]
    stack.services[service].stop()
    r = rec(gw, user_id="u00001", k=10)
    assert r.degraded and service in r.degraded_stages
    assert len(r.videos) == 10
    assert not {v.video_id for v in r.videos} & seen_of(stack, "u00001")
    # filters hold on degraded paths too
    r = rec(gw, user_id="u00001", k=5, filters=common_pb2.Filters(languages=["en"]))
    meta = FeatureStore.from_url(stack.redis_url).videos([v.video_id for v in r.videos])
    assert r.videos and all(meta[v.video_id]["language"] == "en" for v in r.videos)


def test_a_cli_retrain_publishes_and_announces_its_model(stack: Stack, gw,  # type: ignore[no-untyped-def]
                                                         small_dataset: Path,
                                                         tmp_path: Path) -> None:
    """`vidrec retrain --force` publishes a new version and announces it on vidrec.models
    (the CLI once handed publish a bare KafkaProducer, and nothing was announced)."""
    import subprocess
    import sys

    from kafka import TopicPartition

    from vidrec import schema
    from vidrec.infra.kafka import make_consumer, poll_records

    consumer = make_consumer(stack.kafka_bootstrap, None, [])
    tp = TopicPartition(schema.TOPIC_MODELS, 0)
    consumer.assign([tp])
    consumer.seek_to_end(tp)
    consumer.position(tp)
    try:
        out = subprocess.run(
            [sys.executable, "-m", "vidrec.cli", "retrain", "--force"],
            env=stack.env(VIDREC_DATA_DIR=str(small_dataset),
                          VIDREC_EVENTS_DIR=str(tmp_path / "events")),
            capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        latest = ArtifactStore(stack.artifact_root).latest()
        assert f"published {latest}" in out.stdout
        records = poll_records(consumer, 1, timeout_s=20)
    finally:
        consumer.close()
    msgs = [events_pb2.ModelPublished.FromString(r.value) for r in records]
    assert [m.version for m in msgs] == [latest]
    assert msgs[0].collection == f"videos_{latest}"

