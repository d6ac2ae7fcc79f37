"""Who may call what (vidrec/security): keys at rest, user tokens, the gateway's door,
TLS and mTLS, against real gRPC servers in this process. Hostile cases get their
documented status, never INTERNAL, and the server keeps serving."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from vidrec.security import tokens
from vidrec.security.auth import Authenticator, Limits
from vidrec.security.client import ClientSecurity
from vidrec.security.keys import KeyFile
from vidrec.security.tls import ensure_local_pki
from vidrec.serving.healthcheck import check
from vidrec.serving.server import InsecureListen, Server
from vidrec.v1 import events_pb2, gateway_pb2, gateway_pb2_grpc

SECRET = b"test-secret-of-this-deployment-0123456789"
S = grpc.StatusCode


class Echo(gateway_pb2_grpc.GatewayServicer):
    """A gateway that answers without work: these tests are about the door."""

    def Recommend(self, request: Any, context: Any) -> Any:  # noqa: N802
        return gateway_pb2.RecommendResponse(model_version="ok")

    def LogEvents(self, request: Any, context: Any) -> Any:  # noqa: N802
        return gateway_pb2.LogEventsResponse(accepted=len(request.events))

    def GetStats(self, request: Any, context: Any) -> Any:  # noqa: N802
        return gateway_pb2.GetStatsResponse()


# --- keys and tokens ------------------------------------------------------------------


def test_keys_are_stored_hashed_private_and_revocable(tmp_path: Path) -> None:
    kf = KeyFile(tmp_path / "keys.json")
    rec, plain = kf.create("web", ["recommend", "events:write"])
    raw = (tmp_path / "keys.json").read_text()
    secret = plain.split("_", 2)[2]  # the secret itself may hold "_" (token_urlsafe)
    assert plain not in raw and secret not in raw  # no secret at rest
    assert (tmp_path / "keys.json").stat().st_mode & 0o777 == 0o600
    assert kf.verify(plain) == rec
    assert kf.verify(plain[:-1] + ("A" if plain[-1] != "A" else "B")) is None
    assert kf.verify(f"vrk_{rec.id}_") is None and kf.verify("nonsense") is None
    with pytest.raises(ValueError, match="unknown scope"):
        kf.create("x", ["root"])
    assert [k.id for k in kf.revoke("web")] == [rec.id]
    time.sleep(1.1)  # a running gateway re-reads the file within a second
    assert KeyFile(tmp_path / "keys.json").verify(plain) is None


def test_user_tokens_name_one_user_and_expire() -> None:
    t = tokens.mint(SECRET, "u1", ttl_s=60)
    assert tokens.verify(SECRET, t) == ("u1", {"recommend", "events:write"})
    with pytest.raises(tokens.InvalidToken):
        tokens.verify(b"another deployment's secret, 32+ bytes", t)
    head, body, sig = t.split(".")
    with pytest.raises(tokens.InvalidToken):
        tokens.verify(SECRET, f"{head}.{body}x.{sig}")
    import jwt

    old = jwt.encode({"iss": "vidrec", "sub": "u1", "iat": 1, "exp": 2}, SECRET, "HS256")
    with pytest.raises(tokens.InvalidToken, match="expired"):
        tokens.verify(SECRET, old)
    with pytest.raises(ValueError):
        tokens.mint(SECRET, "u1", scopes=("stats:read",))


# --- the gateway's door -----------------------------------------------------------------


@pytest.fixture
def door(tmp_path: Path) -> Any:
    kf = KeyFile(tmp_path / "keys.json")
    keys = {name: kf.create(name, scopes)[1] for name, scopes in (
        ("admin", ["admin"]), ("reco", ["recommend"]), ("events", ["events:write"]),
        ("stats", ["stats:read"]), ("revoked", ["admin"]))}
    kf.revoke("revoked")
    auth = Authenticator(KeyFile(tmp_path / "keys.json"), SECRET,
                         Limits(key_rate=1, key_burst=3, user_rate=1, user_burst=3))
    server = Server("gateway", "127.0.0.1:0", ["vidrec.v1.Gateway"],
                    lambda g: gateway_pb2_grpc.add_GatewayServicer_to_server(Echo(), g),
                    workers=8, interceptors=[auth])
    server.start()
    server.set_serving(True)
    yield server.address, keys
    server.stop()


def call(addr: str, bearer: str | None, method: str, req: Any,
         raw_auth: str | None = None) -> tuple[S, Any]:
    md = [("authorization", raw_auth if raw_auth is not None else f"Bearer {bearer}")] \
        if bearer is not None or raw_auth is not None else []
    with grpc.insecure_channel(addr) as ch:
        stub = gateway_pb2_grpc.GatewayStub(ch)
        try:
            return S.OK, getattr(stub, method)(req, metadata=md, timeout=5)
        except grpc.RpcError as exc:
            return exc.code(), exc


def ev(user: str) -> events_pb2.Event:
    return events_pb2.Event(event_id="e", user_id=user, video_id="v",
                            type=events_pb2.EVENT_TYPE_CLICK)


REC = gateway_pb2.RecommendRequest(user_id="u1", k=5)
LOG = gateway_pb2.LogEventsRequest(events=[ev("u1")])
LOG_MIXED = gateway_pb2.LogEventsRequest(events=[ev("u1"), ev("u2")])
STATS = gateway_pb2.GetStatsRequest()


def hostile_cases(keys: dict[str, str]) -> list[tuple[str, str | None, str, Any, Any,
                                                     str | None]]:
    """(case, bearer, method, request, expected code, raw authorization header)."""
    tok_u1 = tokens.mint(SECRET, "u1")
    forged = tokens.mint(b"x" * 32, "u1")
    expired = __import__("jwt").encode({"iss": "vidrec", "sub": "u1", "iat": 1, "exp": 2},
                                       SECRET, "HS256")
    c: list[tuple[str, str | None, str, Any, Any, str | None]] = []
    for method, req in (("Recommend", REC), ("LogEvents", LOG), ("GetStats", STATS)):
        c += [(f"{method}: no credentials", None, method, req, S.UNAUTHENTICATED, None),
              (f"{method}: wrong scheme", None, method, req, S.UNAUTHENTICATED,
               f"Basic {keys['admin']}"),
              (f"{method}: empty bearer", "", method, req, S.UNAUTHENTICATED, None),
              (f"{method}: unknown key", "vrk_000000000000_nope", method, req,
               S.UNAUTHENTICATED, None),
              (f"{method}: key of another id", keys["admin"].replace("_", "_0", 1), method,
               req, S.UNAUTHENTICATED, None),
              (f"{method}: revoked key", keys["revoked"], method, req, S.UNAUTHENTICATED,
               None),
              (f"{method}: forged token", forged, method, req, S.UNAUTHENTICATED, None),
              (f"{method}: expired token", expired, method, req, S.UNAUTHENTICATED, None),
              # gRPC may refuse metadata past 8 KB before any handler runs
              # (RESOURCE_EXHAUSTED), else the door does (UNAUTHENTICATED).
              (f"{method}: 10 KB header", "a" * 10_000, method, req,
               {S.RESOURCE_EXHAUSTED, S.UNAUTHENTICATED}, None),
              (f"{method}: 3 KB header", "a" * 3_000, method, req, S.UNAUTHENTICATED, None),
              (f"{method}: admin key", keys["admin"], method, req, S.OK, None)]
    c += [("Recommend: events-only key", keys["events"], "Recommend", REC,
           S.PERMISSION_DENIED, None),
          ("Recommend: stats-only key", keys["stats"], "Recommend", REC,
           S.PERMISSION_DENIED, None),
          ("LogEvents: recommend-only key", keys["reco"], "LogEvents", LOG,
           S.PERMISSION_DENIED, None),
          ("LogEvents: stats-only key", keys["stats"], "LogEvents", LOG,
           S.PERMISSION_DENIED, None),
          ("GetStats: recommend-only key", keys["reco"], "GetStats", STATS,
           S.PERMISSION_DENIED, None),
          ("GetStats: user token", tok_u1, "GetStats", STATS, S.PERMISSION_DENIED, None),
          ("Recommend: token, own user", tok_u1, "Recommend", REC, S.OK, None),
          ("Recommend: token, other user", tok_u1, "Recommend",
           gateway_pb2.RecommendRequest(user_id="u2", k=5), S.PERMISSION_DENIED, None),
          ("Recommend: token, no user (profile only)", tok_u1, "Recommend",
           gateway_pb2.RecommendRequest(k=5), S.PERMISSION_DENIED, None),
          ("LogEvents: token, own user", tok_u1, "LogEvents", LOG, S.OK, None),
          ("LogEvents: token, one event of another user", tok_u1, "LogEvents", LOG_MIXED,
           S.PERMISSION_DENIED, None),
          ("LogEvents: service key, many users", keys["events"], "LogEvents", LOG_MIXED,
           S.OK, None),
          ("GetStats: stats key", keys["stats"], "GetStats", STATS, S.OK, None)]
    return c


def test_hostile_callers_get_their_documented_status(door: Any) -> None:
    addr, keys = door
    cases = hostile_cases(keys)
    assert len(cases) >= 40
    wrong = []
    for name, bearer, method, req, want, raw in cases:
        got, _ = call(addr, bearer, method, req, raw)
        if got not in (want if isinstance(want, set) else {want}):
            wrong.append((name, got, want))
    assert not wrong
    assert check(addr, security=ClientSecurity()) == "SERVING"  # health stays open


def test_a_caller_past_its_rate_is_refused_with_a_retry_hint(door: Any) -> None:
    addr, keys = door
    codes = [call(addr, keys["reco"], "Recommend", REC)[0] for _ in range(6)]
    assert codes[:3] == [S.OK] * 3 and S.RESOURCE_EXHAUSTED in codes[3:]
    _, exc = call(addr, keys["reco"], "Recommend", REC)
    assert dict(exc.trailing_metadata())["retry-after-ms"].isdigit()
    # Another caller has a bucket of its own.
    assert call(addr, keys["admin"], "Recommend", REC)[0] == S.OK


# --- TLS and mTLS -----------------------------------------------------------------------


def internal_server(pki: Any, require_client_cert: bool) -> Server:
    from vidrec.config import RerankerSettings

    s = RerankerSettings(tls_cert=str(pki.server_cert), tls_key=str(pki.server_key),
                         tls_ca=str(pki.ca), require_client_cert=require_client_cert)
    server = Server("reranker", "127.0.0.1:0", ["vidrec.v1.Gateway"],
                    lambda g: gateway_pb2_grpc.add_GatewayServicer_to_server(Echo(), g),
                    workers=4, settings=s)
    server.start()
    server.set_serving(True)
    return server


def test_internal_services_require_a_client_certificate_from_the_ca(tmp_path: Path) -> None:
    pki = ensure_local_pki(tmp_path / "tls")
    other = ensure_local_pki(tmp_path / "other")  # another deployment's CA
    server = internal_server(pki, require_client_cert=True)
    try:
        addr = server.address
        with_cert = ClientSecurity(str(pki.ca), str(pki.client_cert), str(pki.client_key))
        assert check(addr, security=with_cert) == "SERVING"
        assert check(addr, security=ClientSecurity()).startswith("UNREACHABLE")  # plaintext
        assert check(addr, security=ClientSecurity(str(pki.ca))).startswith("UNREACHABLE")
        foreign = ClientSecurity(str(pki.ca), str(other.client_cert), str(other.client_key))
        assert check(addr, security=foreign).startswith("UNREACHABLE")
        with with_cert.channel(addr) as ch:
            r = gateway_pb2_grpc.GatewayStub(ch).Recommend(REC, timeout=5)
        assert r.model_version == "ok"
    finally:
        server.stop()


def test_the_pki_is_made_once_and_reused(tmp_path: Path) -> None:
    a = ensure_local_pki(tmp_path)
    ca = a.ca.read_bytes()
    assert ensure_local_pki(tmp_path).ca.read_bytes() == ca
    assert a.server_key.stat().st_mode & 0o777 == 0o600


def test_plaintext_on_a_reachable_address_is_refused_unless_allowed() -> None:
    from vidrec.config import RerankerSettings

    with pytest.raises(InsecureListen, match="VIDREC_ALLOW_INSECURE"):
        Server("reranker", "0.0.0.0:0", [], lambda g: None, settings=RerankerSettings())
    ok = Server("reranker", "0.0.0.0:0", [], lambda g: None,
                settings=RerankerSettings(allow_insecure=True))
    ok.stop()


# --- store credentials ------------------------------------------------------------------


def test_store_credentials_come_from_files(tmp_path: Path) -> None:
    from vidrec.config import TrainerSettings
    from vidrec.infra import kafka
    from vidrec.infra.embedded import RedisServer
    from vidrec.security.stores import redis_url_with_password, store_credentials
    from vidrec.store.features import FeatureStore

    (tmp_path / "redis.pw").write_text("s3cret/with:odd@chars\n")
    (tmp_path / "kafka.pw").write_text("k-pass")
    with RedisServer(password="s3cret/with:odd@chars") as rs:
        s = TrainerSettings(redis_url=f"redis://127.0.0.1:{rs.port}/0",
                            redis_password_file=str(tmp_path / "redis.pw"),
                            kafka_security_protocol="SASL_SSL",
                            kafka_sasl_mechanism="SCRAM-SHA-256", kafka_username="vidrec",
                            kafka_password_file=str(tmp_path / "kafka.pw"),
                            kafka_ca_file="/ca.pem")
        try:
            url = store_credentials(s)
            assert kafka.CLIENT_SECURITY == {
                "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-256",
                "sasl_plain_username": "vidrec", "sasl_plain_password": "k-pass",
                "ssl_cafile": "/ca.pem"}
        finally:
            kafka.CLIENT_SECURITY.clear()
        FeatureStore.from_url(url).put_videos([{"video_id": "v1"}])  # authenticated
        import redis as redis_lib

        with pytest.raises(redis_lib.AuthenticationError):
            redis_lib.Redis(port=rs.port).get("x")
        with pytest.raises(redis_lib.AuthenticationError):
            redis_lib.Redis.from_url(redis_url_with_password(s.redis_url, "wrong")).get("x")


def test_health_has_a_plaintext_port_of_its_own_beside_tls(tmp_path: Path) -> None:
    """Kubernetes' native gRPC probes speak no TLS: VIDREC_HEALTH_ADDR serves health alone,
    in plaintext, while the service port wants TLS and a client certificate."""
    from vidrec.config import RerankerSettings

    pki = ensure_local_pki(tmp_path / "tls")
    s = RerankerSettings(tls_cert=str(pki.server_cert), tls_key=str(pki.server_key),
                         tls_ca=str(pki.ca), health_addr="127.0.0.1:0")
    server = Server("reranker", "127.0.0.1:0", ["vidrec.v1.Gateway"],
                    lambda g: gateway_pb2_grpc.add_GatewayServicer_to_server(Echo(), g),
                    workers=4, settings=s)
    server.start()
    try:
        health = f"127.0.0.1:{server.health_port}"
        assert check(health, security=ClientSecurity()) == "NOT_SERVING"
        server.set_serving(True)
        assert check(health, security=ClientSecurity()) == "SERVING"
        with grpc.insecure_channel(health) as ch, pytest.raises(grpc.RpcError) as err:
            gateway_pb2_grpc.GatewayStub(ch).Recommend(REC, timeout=5)
        assert err.value.code() == S.UNIMPLEMENTED  # nothing but health there
        assert check(server.address, security=ClientSecurity()).startswith("UNREACHABLE")
    finally:
        server.stop()
