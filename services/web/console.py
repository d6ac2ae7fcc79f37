"""The operator console: server-rendered HTML pages at /console/ (no build step, no
JavaScript needed).

Sign-in takes an API key holding 'admin' or 'stats:read' (checked against the same key
file as the gateway); the key then lives in an HttpOnly, SameSite=Strict cookie scoped to
/console, and every forms' POST carries a token derived from it (CSRF). Rollback needs
'admin'. Reads come from Redis (users, videos, online counters), the artifact store
(publish history) and the gateway (a user's current list, as a preview that logs no
impressions, and similar videos), with the signed-in key.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import logging
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from services.web.api import Answer, ApiError
from vidrec.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

log = logging.getLogger(__name__)

COOKIE = "vidrec_console"
HISTORY_SAMPLES = 360  # an hour at the default 10 s

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:10px 20px;display:flex;gap:18px;align-items:center}
header a{color:#cfe0ff;text-decoration:none}header b{margin-right:12px}
main{padding:16px 20px;max-width:1200px}
table{border-collapse:collapse;background:#fff;margin:8px 0 18px;min-width:420px}
td,th{border:1px solid #dde1e7;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eef1f5}.ok{color:#0a7b32;font-weight:600}.bad{color:#b3261e;font-weight:600}
.muted{color:#6b7280}form.inline{display:inline}input,select{padding:3px 6px}
.card{background:#fff;border:1px solid #dde1e7;padding:10px 14px;margin:8px 0 16px}
small{color:#6b7280}
"""


@dataclass(frozen=True)
class Who:
    key: str
    name: str
    scopes: frozenset[str]

    @property
    def admin(self) -> bool:
        return "admin" in self.scopes

    @property
    def csrf(self) -> str:
        return hashlib.sha256(b"vidrec-console-csrf:" + self.key.encode()).hexdigest()[:32]


def _e(x: object) -> str:
    return html.escape(str(x), quote=True)


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _page(title: str, body: str, who: Who | None) -> bytes:
    nav = ""
    if who is not None:
        nav = ("<a href='/console/'>Overview</a><a href='/console/arms'>Experiments</a>"
               "<a href='/console/user'>Users</a><a href='/console/video'>Videos</a>"
               f"<span class='muted' style='margin-left:auto'>signed in as {_e(who.name)}"
               "</span><a href='/console/logout'>Sign out</a>")
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}"
            f" · vidrec</title><style>{CSS}</style></head><body><header><b>vidrec</b>{nav}"
            f"</header><main><h1>{_e(title)}</h1>{body}</main></body></html>").encode()


def _table(head: Sequence[str], rows: Sequence[Sequence[object]], raw: bool = False) -> str:
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    tr = "".join("<tr>" + "".join(f"<td>{c if raw else _e(c)}</td>" for c in r) + "</tr>"
                 for r in rows)
    return f"<table><tr>{th}</tr>{tr}</table>"


class Console:
    def __init__(self, keys: Any, store: Any, channel: grpc.Channel,
                 health: Callable[[str], str], services: dict[str, str],
                 artifacts: Any = None, open_index: Callable[[], Any] | None = None,
                 sample_s: float = 10.0, secure_cookie: bool = True) -> None:
        self.keys = keys
        self.store = store
        self.stub = gateway_pb2_grpc.GatewayStub(channel)
        self.health = health
        self.services = services
        self.artifacts = artifacts
        self.open_index = open_index
        self.secure_cookie = secure_cookie
        # (time, rows) samples of the online counters, for the metrics-over-time plot.
        self.samples: deque[tuple[float, list[dict[str, Any]]]] = deque(maxlen=HISTORY_SAMPLES)
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample_loop, args=(sample_s,),
                                         name="console-sampler", daemon=True)
        self._sampler.start()

    @classmethod
    def from_settings(cls, s: Any, channel: grpc.Channel, health: Callable[[str], str]
                      ) -> Console | None:
        from vidrec.security.keys import KeyFile
        from vidrec.security.stores import read_secret, store_credentials
        from vidrec.store.features import FeatureStore

        if not s.api_keys_file:
            log.warning("console off: VIDREC_API_KEYS_FILE is not set (it signs operators in)")
            return None
        store = FeatureStore.from_url(store_credentials(s), s.key_prefix,
                                      s.redis_timeout_ms / 1000)
        artifacts = open_index = None
        if s.artifact_root:
            from vidrec.store.artifacts import ArtifactStore
            from vidrec.store.index import open_index as open_

            artifacts = ArtifactStore(s.artifact_root)
            if s.index_root or s.qdrant_url:
                def open_index() -> Any:
                    return open_(s.qdrant_url, s.index_root, read_secret(s.qdrant_api_key_file))
        services = {n: a for n, a in (("gateway", s.gateway_addr),
                                      ("candidate", s.candidate_addr),
                                      ("ranker", s.ranker_addr),
                                      ("reranker", s.reranker_addr)) if a}
        return cls(KeyFile(s.api_keys_file), store, channel, health, services, artifacts,
                   open_index, s.console_sample_s, secure_cookie=bool(s.tls_cert))

    def close(self) -> None:
        self._stop.set()

    def _sample_loop(self, every_s: float) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.time(), self.store.read_stats()))
            except Exception as exc:
                log.debug("console: stats sample failed: %s", exc)
            self._stop.wait(every_s)

    # --- dispatch --------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict[str, list[str]], body: bytes,
               headers: dict[str, str]) -> Answer:
        form = urllib.parse.parse_qs(body.decode("utf-8", "replace")) if method == "POST" else {}
        if path in ("/console", "/console/login") and method == "GET":
            if path == "/console":
                return 302, {"Location": "/console/"}, b""
            return self._html(200, "Sign in", self._login_form(""), None)
        if path == "/console/login" and method == "POST":
            return self._login(form)
        if path == "/console/logout":
            return 302, {"Location": "/console/login", "Set-Cookie": self._cookie("", 0)}, b""
        who = self._who(headers.get("cookie", ""))
        if who is None:
            return 302, {"Location": "/console/login"}, b""
        pages: dict[str, Callable[[Who, dict[str, list[str]]], str]] = {
            "/console/": self._overview, "/console/arms": self._arms,
            "/console/user": self._user, "/console/video": self._video}
        if method == "GET" and path in pages:
            t0 = time.perf_counter()
            body_html = pages[path](who, query)
            body_html += f"<p><small>rendered in {(time.perf_counter() - t0) * 1000:.0f} ms " \
                         f"at {_when(time.time())}</small></p>"
            title = {"/console/": "Overview", "/console/arms": "Experiments",
                     "/console/user": "User", "/console/video": "Video"}[path]
            return self._html(200, title, body_html, who)
        if method == "POST" and path == "/console/rollback":
            return self._rollback(who, form)
        return self._html(404, "Not found", "<p>No such page.</p>", who)

    def _html(self, status: int, title: str, body: str, who: Who | None) -> Answer:
        return status, {"Content-Type": "text/html; charset=utf-8",
                        "Content-Security-Policy": "default-src 'none'; style-src "
                        "'unsafe-inline'; img-src data:; form-action 'self'",
                        "X-Frame-Options": "DENY"}, _page(title, body, who)

    def _cookie(self, value: str, max_age: int) -> str:
        secure = "; Secure" if self.secure_cookie else ""
        return (f"{COOKIE}={value}; Path=/console; HttpOnly; SameSite=Strict; "
                f"Max-Age={max_age}{secure}")

    def _who(self, cookie_header: str) -> Who | None:
        for part in cookie_header.split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE and value:
                return self._verify(urllib.parse.unquote(value))
        return None

    def _verify(self, key: str) -> Who | None:
        k = self.keys.verify(key)
        if k is None or not ({"admin", "stats:read"} & set(k.scopes)):
            return None
        return Who(key, k.name, frozenset(k.scopes))

    def _login_form(self, problem: str) -> str:
        err = f"<p class='bad'>{_e(problem)}</p>" if problem else ""
        return (f"{err}<form method='post' action='/console/login' class='card'>"
                "<p>An API key with the <code>admin</code> or <code>stats:read</code> scope "
                "(<code>vidrec keys create NAME --scope stats:read</code>; <code>make run"
                "</code> keeps its admin key in <code>var/run/admin.key</code>).</p>"
                "<input type='password' name='key' size='60' autocomplete='off' autofocus> "
                "<button type='submit'>Sign in</button></form>")

    def _login(self, form: dict[str, list[str]]) -> Answer:
        key = (form.get("key") or [""])[0].strip()
        who = self._verify(key) if key else None
        if who is None:
            log.info("console: sign-in refused")
            return self._html(401, "Sign in", self._login_form(
                "That key is unknown, revoked, or lacks the admin / stats:read scope."), None)
        log.info("console: %s signed in", who.name)
        return 303, {"Location": "/console/",
                     "Set-Cookie": self._cookie(urllib.parse.quote(key), 8 * 3600)}, b""

    def _call(self, who: Who, rpc: str, request: Any) -> Any:
        try:
            return getattr(self.stub, rpc)(request, timeout=5.0, metadata=(
                ("authorization", f"Bearer {who.key}"),))
        except grpc.RpcError as exc:
            raise ApiError(exc.code(), exc.details() or "") from None  # type: ignore[attr-defined]

    # --- pages -----------------------------------------------------------------------

    def _overview(self, who: Who, q: dict[str, list[str]]) -> str:
        serving = self.artifacts.latest() if self.artifacts is not None else None
        rows = []
        for name, addr in self.services.items():
            st = self.health(addr)
            rows.append([name, addr, f"<span class='{'ok' if st == 'SERVING' else 'bad'}'>"
                         f"{_e(st)}</span>", _e(serving or "-") if name != "gateway" else "-"])
        try:
            beat = self.store.heartbeat() or {}
        except Exception:
            beat = {}
        if beat:
            age = time.time() - float(beat.get("t", 0) or 0)
            ok = age < 30
            rows.append(["trainer", "-", f"<span class='{'ok' if ok else 'bad'}'>"
                         f"{'RUNNING' if ok else 'SILENT'}</span> <small>heartbeat "
                         f"{age:.0f}s ago, lag {_e(beat.get('lag', '?'))}</small>", "-"])
        out = "<h2>Services</h2>" + _table(["service", "address", "health", "model version"],
                                            rows, raw=True)
        out += f"<p>Serving model version: <b id='serving-version'>{_e(serving or '-')}</b></p>"
        if self.artifacts is None:
            return out + "<p class='muted'>Publish history: VIDREC_ARTIFACT_ROOT not set.</p>"
        last: dict[str, tuple[float, str]] = {}
        for e in self.artifacts.history():
            last[e.version] = (e.at, e.action)
        hist = []
        for v in reversed(self.artifacts.published()):
            at, action = last.get(v, (0.0, ""))
            button = ""
            if v != serving and who.admin and self.open_index is not None:
                button = (f"<form method='post' action='/console/rollback' class='inline'>"
                          f"<input type='hidden' name='to' value='{_e(v)}'>"
                          f"<input type='hidden' name='csrf' value='{who.csrf}'>"
                          f"<button type='submit'>Roll back to {_e(v)}</button></form>")
            elif v == serving:
                button = "<b>serving</b>"
            else:
                button = "<small>admin only</small>"
            hist.append([_e(v), _e(_when(at)), _e(action or "-"), button])
        msg = (q.get("msg") or [""])[0]
        note = f"<p class='card'>{_e(msg)}</p>" if msg else ""
        return out + "<h2>Publish history</h2>" + note + _table(
            ["version", "switched at", "action", ""], hist, raw=True)

    def _rollback(self, who: Who, form: dict[str, list[str]]) -> Answer:
        from vidrec.serving.publish import RollbackRefused, rollback

        if not who.admin:
            return self._html(403, "Forbidden", "<p>Rollback needs an admin key.</p>", who)
        if not hmac.compare_digest((form.get("csrf") or [""])[0], who.csrf):
            return self._html(403, "Forbidden", "<p>Stale form; reload the page.</p>", who)
        to = (form.get("to") or [""])[0]
        if self.artifacts is None or self.open_index is None:
            return self._html(400, "Rollback", "<p>No artifact store configured.</p>", who)
        try:
            cur, prev = rollback(self.artifacts, self.open_index, to)
            msg = f"Rolled back from {cur} to {prev}."
            log.info("console: %s rolled back from %s to %s", who.name, cur, prev)
        except RollbackRefused as exc:
            msg = f"Rollback refused: {exc}"
        return 303, {"Location": "/console/?" + urllib.parse.urlencode({"msg": msg})}, b""

    def _arms(self, who: Who, q: dict[str, list[str]]) -> str:
        try:
            rows = self.store.read_stats()
        except Exception as exc:
            return f"<p class='bad'>Stats unavailable: {_e(exc)}</p>"
        if rows and (not self.samples or self.samples[-1][1] != rows):
            self.samples.append((time.time(), rows))
        table = []
        for r in rows:
            table.append([r["model_version"], r["experiment_arm"], r["users"],
                          r["impressions"], r["clicks"],
                          f"{r['ctr']:.4f} [{r['ctr_lo']:.4f}, {r['ctr_hi']:.4f}]",
                          f"{r['completion_rate']:.3f} [{r['completion_rate_lo']:.3f}, "
                          f"{r['completion_rate_hi']:.3f}]", f"{r['watch_time_s']:.0f}",
                          r["likes"], r["dislikes"]])
        out = _table(["model", "arm", "users", "impressions", "clicks", "CTR [95% CI]",
                      "completion [95% CI]", "watch time s", "likes", "dislikes"], table)
        return out + "<h2>CTR over time (95% interval per sample)</h2>" + self._plot()

    def _plot(self) -> str:
        """An inline SVG: per arm, CTR at each sample with its interval as a band."""
        series: dict[str, list[tuple[float, float, float, float]]] = {}
        for t, rows in self.samples:
            for r in rows:
                if r["impressions"]:
                    series.setdefault(f"{r['model_version']}/{r['experiment_arm']}", []).append(
                        (t, r["ctr"], r["ctr_lo"], r["ctr_hi"]))
        if not series:
            return "<p class='muted'>No impressions yet.</p>"
        w, h, pad = 760, 260, 40
        ts = [p[0] for s in series.values() for p in s]
        hi = max(p[3] for s in series.values() for p in s) or 1.0
        t0, t1 = min(ts), max(max(ts), min(ts) + 1)

        def x(t: float) -> float:
            return pad + (t - t0) / (t1 - t0) * (w - 2 * pad)

        def y(v: float) -> float:
            return h - pad - v / hi * (h - 2 * pad)

        colors = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2"]
        parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' "
                 f"role='img' aria-label='CTR over time' style='background:#fff;border:1px "
                 f"solid #dde1e7'><line x1='{pad}' y1='{h - pad}' x2='{w - pad}' "
                 f"y2='{h - pad}' stroke='#999'/><text x='4' y='{pad}' font-size='11'>"
                 f"{hi:.3f}</text><text x='4' y='{h - pad}' font-size='11'>0</text>"]
        for i, (name, pts) in enumerate(sorted(series.items())):
            c = colors[i % len(colors)]
            band = " ".join(f"{x(p[0]):.1f},{y(p[3]):.1f}" for p in pts) + " " + " ".join(
                f"{x(p[0]):.1f},{y(p[2]):.1f}" for p in reversed(pts))
            line = " ".join(f"{x(p[0]):.1f},{y(p[1]):.1f}" for p in pts)
            parts.append(f"<polygon points='{band}' fill='{c}' fill-opacity='0.15'/>"
                         f"<polyline points='{line}' fill='none' stroke='{c}' "
                         f"stroke-width='2'/>")
            for p in pts[-1:]:
                parts.append(f"<circle cx='{x(p[0]):.1f}' cy='{y(p[1]):.1f}' r='3' "
                             f"fill='{c}'/>")
            parts.append(f"<text x='{w - pad - 150}' y='{pad + 14 * i}' font-size='12' "
                         f"fill='{c}'>{_e(name)}</text>")
        parts.append(f"<text x='{pad}' y='{h - 12}' font-size='11'>{_e(_when(t0))}</text>"
                     f"<text x='{w - pad - 110}' y='{h - 12}' font-size='11'>"
                     f"{_e(_when(t1))}</text></svg>")
        return "".join(parts)

    def _titles(self, ids: Sequence[str]) -> dict[str, dict[str, str]]:
        try:
            return self.store.videos(list(ids))
        except Exception:
            return {}

    def _video_link(self, vid: str, meta: dict[str, dict[str, str]]) -> str:
        m = meta.get(vid, {})
        return (f"<a href='/console/video?id={urllib.parse.quote(vid)}'>{_e(vid)}</a> "
                f"<small>{_e(m.get('title', ''))} · {_e(m.get('category', ''))}</small>")

    def _list_html(self, who: Who, resp: Any) -> str:
        ids = [v.video_id for v in resp.videos]
        meta = self._titles(ids)
        rows = []
        for i, v in enumerate(resp.videos, start=1):
            e = v.explanation
            terms = ", ".join(f"{k} {val:+.2f}" for k, val in sorted(e.terms.items()))
            rules = "; ".join(e.rules) or "-"
            rows.append([str(i), self._video_link(v.video_id, meta), _e(f"{v.score:.3f}"),
                         _e(common_pb2.CandidateSource.Name(v.source)
                            .removeprefix("CANDIDATE_SOURCE_").lower())
                         + (f" <small>from {_e(v.anchor_video_id)}</small>"
                            if v.anchor_video_id else ""),
                         _e(v.reason),
                         _e(f"{terms} (rank {e.ranker_rank})" if e.ranker_rank else terms
                            or "-"), _e(rules)])
        return _table(["#", "video", "score", "source", "reason", "score terms (ranker)",
                       "rules"], rows, raw=True)

    def _user(self, who: Who, q: dict[str, list[str]]) -> str:
        uid = (q.get("id") or [""])[0].strip()
        form = ("<form method='get' action='/console/user' class='card'>User id "
                f"<input name='id' value='{_e(uid)}'> <button>Show</button></form>")
        profile_fields = ("age", "gender", "country", "language", "occupation")
        new_vals = {f: (q.get(f) or [""])[0] for f in profile_fields}
        new_form = ("<form method='get' action='/console/user' class='card'><b>What would a "
                    "new user with this profile get?</b><br>"
                    + " ".join(f"{f} <input name='{f}' size='8' value='{_e(new_vals[f])}'>"
                               for f in profile_fields)
                    + " <button>Recommend</button></form>")
        out = form + new_form
        if not uid and not any(new_vals.values()):
            return out
        if uid:
            try:
                st = self.store.user(uid)
            except Exception as exc:
                return out + f"<p class='bad'>Feature store unavailable: {_e(exc)}</p>"
            meta = self._titles(st.history[:20])
            out += f"<h2 id='user'>{_e(uid)}</h2>"
            out += ("<p class='muted'>Unknown user: served as new.</p>" if not st.known else "")
            out += "<h3>Profile</h3>" + _table(["feature", "value"], sorted(st.profile.items()))
            out += (f"<h3>Recent history ({len(st.history)} kept, {len(st.seen)} seen, "
                    f"{len(st.negatives)} negatives)</h3>")
            out += _table(["#", "video"], [[str(i), self._video_link(v, meta)]
                                           for i, v in enumerate(st.history[:20], 1)], raw=True)
            req = gateway_pb2.RecommendRequest(user_id=uid, k=10, explain=True, preview=True)
        else:
            prof = common_pb2.UserProfile(
                gender=new_vals["gender"], country=new_vals["country"],
                language=new_vals["language"], occupation=new_vals["occupation"])
            if new_vals["age"].isdigit():
                prof.age = int(new_vals["age"])
            req = gateway_pb2.RecommendRequest(profile=prof, k=10, explain=True, preview=True)
            out += "<h2>A new user with this profile</h2>"
        try:
            resp = self._call(who, "Recommend", req)
        except ApiError as err:
            return out + f"<p class='bad'>Recommend: {_e(err.code.name)}: {_e(err.message)}</p>"
        deg = f" <span class='bad'>degraded: {_e(', '.join(resp.degraded_stages))}</span>" \
            if resp.degraded else ""
        out += (f"<h3>Current recommendations</h3><p>model {_e(resp.model_version)}, arm "
                f"{_e(resp.experiment_arm)}, request {_e(resp.request_id)}{deg} "
                "<small>(a preview: no impressions logged)</small></p>")
        return out + self._list_html(who, resp)

    def _video(self, who: Who, q: dict[str, list[str]]) -> str:
        vid = (q.get("id") or [""])[0].strip()
        out = ("<form method='get' action='/console/video' class='card'>Video id "
               f"<input name='id' value='{_e(vid)}'> <button>Show</button></form>")
        if not vid:
            try:
                top = self.store.popular_list(20)
            except Exception:
                top = []
            meta = self._titles(top)
            return out + "<h2>Trending now</h2>" + _table(
                ["rank", "video"], [[str(i), self._video_link(v, meta)]
                                    for i, v in enumerate(top, 1)], raw=True)
        meta = self._titles([vid])
        if vid not in meta:
            return out + f"<p class='bad'>Unknown video {_e(vid)}.</p>"
        m = meta[vid]
        try:
            popular = self.store.popular_list(500)
        except Exception:
            popular = []
        rank = popular.index(vid) + 1 if vid in popular else None
        out += f"<h2 id='video'>{_e(m.get('title') or vid)}</h2>"
        out += f"<p>Trending rank: <b id='trending-rank'>{rank or 'not in the top 500'}</b></p>"
        out += _table(["field", "value"], sorted((k, v) for k, v in m.items()))
        for by in ("content", "two_tower", "co_watch"):
            out += f"<h3>Similar by {_e(by)}</h3>"
            try:
                resp = self._call(who, "SimilarVideos", gateway_pb2.SimilarVideosRequest(
                    video_id=vid, by=by, k=8))
            except ApiError as err:
                out += f"<p class='muted'>{_e(err.code.name)}: {_e(err.message)}</p>"
                continue
            out += self._list_html(who, resp)
        return out

