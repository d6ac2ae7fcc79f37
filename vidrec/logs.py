"""Logging configured once per process, with the request id on every line."""

from __future__ import annotations

import contextvars
import logging
import re
import sys

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.:-]")


def set_request_id(raw: str) -> None:
    """The request id a caller sent, made safe for a log line: at most 64 characters of
    [A-Za-z0-9_.:-], anything else (CR/LF: forged log lines) replaced by '_'."""
    request_id_var.set(_UNSAFE.sub("_", raw[:64]) or "-")


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


def setup_logging(service: str, level: str = "INFO") -> None:
    """Configure the root logger; safe to call more than once (replaces handlers)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(
        logging.Formatter(
            f"%(asctime)s %(levelname)s {service} [%(request_id)s] %(name)s: %(message)s"
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("kafka", "urllib3", "httpx", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
