"""python -m services.web: the HTTP/JSON front door (/v1/..., /openapi.json) and the
operator console (/console/) in front of the gateway."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time

from services.web.server import Door, make_server, server_tls
from vidrec import __version__
from vidrec.config import SettingsError, WebSettings, load_settings
from vidrec.logs import setup_logging
from vidrec.security.client import ClientSecurity
from vidrec.security.tls import is_loopback

log = logging.getLogger("services.web")


def main() -> int:
    try:
        s = load_settings(WebSettings)
    except SettingsError as exc:
        print(f"web: {exc}", file=sys.stderr)
        return 2
    setup_logging("web", s.log_level, s.log_format)
    if not s.tls_cert and not is_loopback(s.listen_addr) and not s.allow_insecure:
        print(f"web: refusing plain HTTP on {s.listen_addr} (not loopback): set "
              "VIDREC_TLS_CERT and VIDREC_TLS_KEY, or VIDREC_ALLOW_INSECURE=true behind a "
              "TLS-terminating proxy", file=sys.stderr)
        return 2
    if s.metrics_addr:
        from vidrec.serving.metrics import serve

        serve(s.metrics_addr)
    upstream = ClientSecurity(s.tls_ca, s.tls_client_cert, s.tls_client_key)
    channel = upstream.channel(s.gateway_addr)
    from vidrec.serving.healthcheck import check

    cache: dict[str, tuple[float, str]] = {}

    def health(addr: str) -> str:
        at, status = cache.get(addr, (0.0, ""))
        if time.monotonic() - at > 1.0:
            status = check(addr, timeout=1.0, security=upstream)
            cache[addr] = (time.monotonic(), status)
        return status

    console = None
    if s.console:
        from services.web.console import Console

        console = Console.from_settings(s, channel, health)
    door = Door(channel, s.call_timeout_ms / 1000, s.max_body_bytes, __version__,
                console.handle if console else None, lambda: health(s.gateway_addr))
    server = make_server(door, s.listen_addr,
                         server_tls(s.tls_cert, s.tls_key) if s.tls_cert else None,
                         s.max_connections)
    host, port = server.server_address[:2]
    log.info("serving %s://%s:%s (gateway %s; console %s)", "https" if s.tls_cert else "http",
             host, port, s.gateway_addr, "on" if console else "off")
    stop = threading.Event()

    def _stop(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    worker = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    worker.start()
    stop.wait()
    server.shutdown()  # stop accepting; in-flight requests finish on their own threads
    server.server_close()
    if console is not None:
        console.close()
    channel.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
