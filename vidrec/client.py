"""A small typed Python client of vidrec's gateway (gRPC underneath).

    from vidrec.client import Client
    with Client("gw.example:50051", api_key=KEY, ca="ca.pem") as c:   # or Client.for_stack()
        for v in c.recommend("u42", k=10).videos:
            print(v.video_id, v.reason)
        c.log_events([c.event("u42", "v7", "watch", value=0.9)])

Every call has a deadline (`timeout_s`). Calls that are safe to repeat are retried on
UNAVAILABLE (a restarting gateway, a broker that did not acknowledge) with jittered
exponential backoff, within `retries`: LogEvents and UpsertVideos are idempotent (events by
event_id, videos by video_id), HideVideos sets a flag, and the reads change nothing.
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc

from vidrec.security.client import ClientSecurity
from vidrec.v1 import common_pb2, events_pb2, gateway_pb2, gateway_pb2_grpc

T = TypeVar("T")
RETRYABLE = (grpc.StatusCode.UNAVAILABLE,)


class Client:
    def __init__(self, addr: str, *, api_key: str = "", ca: str = "", cert: str = "",
                 key: str = "", timeout_s: float = 2.0, retries: int = 3,
                 backoff_s: float = 0.1) -> None:
        """`api_key`: an API key or a user token. `ca`: the CA file that signs the
        gateway's certificate (TLS; empty: plaintext, loopback only). `cert`/`key`: a
        client certificate, where the deployment asks for one."""
        self.addr = addr
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self._channel = ClientSecurity(ca, cert, key, api_key).channel(addr)
        self.stub = gateway_pb2_grpc.GatewayStub(self._channel)

    @classmethod
    def for_stack(cls, var: str | os.PathLike[str] = "var", **kw: Any) -> Client:
        """The local stack `make run` started: its gateway address, CA and admin key from
        var/run/stack.json."""
        state = json.loads((Path(var) / "run" / "stack.json").read_text())
        sec = ClientSecurity.from_state(state)
        return cls(state["services"]["gateway"], api_key=sec.bearer, ca=sec.ca, cert=sec.cert,
                   key=sec.key, **kw)

    @classmethod
    def connect(cls, addr: str, var: str | os.PathLike[str] | None = None, **kw: Any
                ) -> Client:
        """`addr` with the local stack's credentials when var/run/stack.json exists (`var`
        or $VIDREC_STACK_VAR, default ./var), else VIDREC_API_KEY and VIDREC_TLS_CA."""
        root = Path(var if var is not None else os.environ.get("VIDREC_STACK_VAR", "var"))
        path = root / "run" / "stack.json"
        if path.exists():
            sec = ClientSecurity.from_state(json.loads(path.read_text()))
            return cls(addr, api_key=sec.bearer, ca=sec.ca, cert=sec.cert, key=sec.key, **kw)
        e = os.environ
        return cls(addr, api_key=e.get("VIDREC_API_KEY", ""), ca=e.get("VIDREC_TLS_CA", ""),
                   cert=e.get("VIDREC_TLS_CLIENT_CERT", ""),
                   key=e.get("VIDREC_TLS_CLIENT_KEY", ""), **kw)

    @classmethod
    def from_env(cls, **kw: Any) -> Client:
        """VIDREC_GATEWAY_ADDR, VIDREC_API_KEY and VIDREC_TLS_CA (+ client cert/key)."""
        e = os.environ
        return cls(e["VIDREC_GATEWAY_ADDR"], api_key=e.get("VIDREC_API_KEY", ""),
                   ca=e.get("VIDREC_TLS_CA", ""), cert=e.get("VIDREC_TLS_CLIENT_CERT", ""),
                   key=e.get("VIDREC_TLS_CLIENT_KEY", ""), **kw)

    # --- calls -----------------------------------------------------------------------

    def _call(self, fn: Callable[..., T], request: Any, retry: bool = True) -> T:
        attempt = 0
        while True:
            try:
                return fn(request, timeout=self.timeout_s)
            except grpc.RpcError as exc:
                attempt += 1
                if not retry or exc.code() not in RETRYABLE or attempt > self.retries:  # type: ignore[attr-defined]
                    raise
                time.sleep(self.backoff_s * (2 ** (attempt - 1)) * (0.5 + random.random()))

    def recommend(self, user_id: str = "", k: int = 10,
                  profile: Mapping[str, Any] | common_pb2.UserProfile | None = None,
                  filters: common_pb2.Filters | None = None, explain: bool = False,
                  preview: bool = False) -> gateway_pb2.RecommendResponse:
        """A ranked list for a known user, or a new one described by `profile`."""
        req = gateway_pb2.RecommendRequest(user_id=user_id, k=k, explain=explain,
                                           preview=preview, profile=_profile(profile))
        if filters is not None:
            req.filters.CopyFrom(filters)
        return self._call(self.stub.Recommend, req)

    def similar(self, video_id: str, k: int = 10, by: str = "two_tower", user_id: str = "",
                filters: common_pb2.Filters | None = None, explain: bool = False
                ) -> gateway_pb2.SimilarVideosResponse:
        """More like `video_id`: by "content", "two_tower" or "co_watch"."""
        req = gateway_pb2.SimilarVideosRequest(video_id=video_id, k=k, by=by, user_id=user_id,
                                               explain=explain)
        if filters is not None:
            req.filters.CopyFrom(filters)
        return self._call(self.stub.SimilarVideos, req)

    @staticmethod
    def event(user_id: str, video_id: str, type: str, value: float = 0.0,  # noqa: A002
              **fields: Any) -> events_pb2.Event:
        """An event with a fresh event_id and the current time ("watch", "like", ...)."""
        enum = events_pb2.EventType.Value(f"EVENT_TYPE_{type.upper()}")
        return events_pb2.Event(event_id=uuid.uuid4().hex, user_id=user_id, video_id=video_id,
                                type=enum, value=value, timestamp=time.time(), **fields)

    def log_events(self, events: Iterable[events_pb2.Event]) -> int:
        """Send events; returns how many Kafka acknowledged (all, or an error)."""
        return self._call(self.stub.LogEvents,
                          gateway_pb2.LogEventsRequest(events=list(events))).accepted

    def upsert_videos(self, videos: Sequence[Mapping[str, Any] | events_pb2.VideoUpserted]
                      ) -> int:
        """Add or update catalog videos (dicts with videos.csv's fields, or messages)."""
        msgs = [v if isinstance(v, events_pb2.VideoUpserted)
                else events_pb2.VideoUpserted(**dict(v)) for v in videos]
        return self._call(self.stub.UpsertVideos,
                          gateway_pb2.UpsertVideosRequest(videos=msgs)).accepted

    def hide_videos(self, video_ids: Sequence[str], unhide: bool = False
                    ) -> gateway_pb2.HideVideosResponse:
        return self._call(self.stub.HideVideos,
                          gateway_pb2.HideVideosRequest(video_ids=list(video_ids),
                                                        unhide=unhide))

    def stats(self) -> list[gateway_pb2.ArmStats]:
        return list(self._call(self.stub.GetStats, gateway_pb2.GetStatsRequest()).stats)

    # --- lifecycle -------------------------------------------------------------------

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _profile(p: Mapping[str, Any] | common_pb2.UserProfile | None) -> common_pb2.UserProfile:
    if p is None:
        return common_pb2.UserProfile()
    if isinstance(p, common_pb2.UserProfile):
        return p
    from vidrec.serving.convert import profile_proto

    return profile_proto(dict(p))
