"""Logging configured once per process, with the request id on every line."""

from __future__ import annotations

import contextvars
import json
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


class JsonFormatter(logging.Formatter):
    """One JSON object per line (VIDREC_LOG_FORMAT=json), for log collectors: time,
    level, service, request id, logger, message, and the traceback when there is one."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        from vidrec.serving.tracing import trace_id

        out = {"ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
               "level": record.levelname, "service": self.service,
               "request_id": getattr(record, "request_id", "-"), "logger": record.name,
               "msg": record.getMessage()}
        tid = trace_id()
        if tid:
            out["trace_id"] = tid
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup_logging(service: str, level: str = "INFO", fmt: str = "text") -> None:
    """Configure the root logger; safe to call more than once (replaces handlers).
    `fmt`: "text" (a line a person reads) or "json" (one object per line)."""
    if fmt not in ("text", "json"):
        raise ValueError(f"log format must be text or json, not {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(
        JsonFormatter(service) if fmt == "json" else logging.Formatter(
            f"%(asctime)s %(levelname)s {service} [%(request_id)s] %(name)s: %(message)s"
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("kafka", "urllib3", "httpx", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
