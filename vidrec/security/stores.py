"""Credentials for the backing stores, from settings (secrets mounted as files, or the
environment): the Redis password, Kafka SASL/SCRAM and TLS, the Qdrant API key.

`store_credentials(settings)` is called once at a process's start: it configures every
Kafka client this process makes (vidrec.infra.kafka) and returns the Redis URL with the
password in it. Passwords come from files so they never sit in an environment listing
(`docker inspect`, `/proc/*/environ`) or a command line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit


def read_secret(path: str) -> str:
    return Path(path).read_text().strip() if path else ""


def redis_url_with_password(url: str, password: str) -> str:
    if not password:
        return url
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{quote(user)}:{quote(password, safe='')}@{host}"))


def kafka_security(settings: Any) -> dict[str, Any]:
    """kafka-python settings for SASL (SCRAM) and TLS; {} for plaintext."""
    protocol = getattr(settings, "kafka_security_protocol", "PLAINTEXT") or "PLAINTEXT"
    if protocol == "PLAINTEXT":
        return {}
    out: dict[str, Any] = {"security_protocol": protocol}
    if "SASL" in protocol:
        out.update(sasl_mechanism=settings.kafka_sasl_mechanism or "SCRAM-SHA-512",
                   sasl_plain_username=settings.kafka_username,
                   sasl_plain_password=read_secret(settings.kafka_password_file))
    if "SSL" in protocol and settings.kafka_ca_file:
        out["ssl_cafile"] = settings.kafka_ca_file
    return out


def store_credentials(settings: Any) -> str:
    """Configure this process's Kafka clients; return the Redis URL to connect with."""
    from vidrec.infra import kafka

    kafka.CLIENT_SECURITY.clear()
    kafka.CLIENT_SECURITY.update(kafka_security(settings))
    return redis_url_with_password(settings.redis_url,
                                   read_secret(getattr(settings, "redis_password_file", "")))
