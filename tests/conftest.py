"""Shared pytest fixtures.

Stores (Redis, Kafka) run as embedded processes on ephemeral ports by default
(DESIGN.md §6: no Docker engine on development machines). With `TEST_CONTAINERS=1` and a
Docker engine, the same fixtures use testcontainers instead. Either way a fixture promises
only `.url` (Redis) or `.bootstrap` (Kafka); tests must not rely on a local process.

Add fixtures under a section heading of their own below.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest
import redis

if TYPE_CHECKING:  # imported in the fixtures, after pytest_configure has set the filters
    from vidrec.infra.embedded import KafkaBroker, RedisClusterServers, RedisServer

# Not VIDREC_*: those names are reserved for service settings (vidrec.config).
USE_CONTAINERS = os.environ.get("TEST_CONTAINERS", "") == "1"


def pytest_configure(config: pytest.Config) -> None:
    # kafka-python 3.0 loads its protocol schemas with the deprecated
    # importlib.resources.read_text (which calls open_text): ~200 warnings, not ours to fix.
    config.addinivalue_line(
        "filterwarnings", "ignore:(read|open)_text is deprecated:DeprecationWarning"
    )


# --- stores ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RedisEndpoint:
    """A Redis the tests did not start as a local process (a container)."""

    url: str


@dataclass(frozen=True)
class KafkaEndpoint:
    """A Kafka the tests did not start as a local process (a container)."""

    bootstrap: str


@contextlib.contextmanager
def _redis() -> Iterator[RedisServer | RedisEndpoint]:
    from vidrec.infra.embedded import RedisServer

    if not USE_CONTAINERS:
        with RedisServer() as server:
            yield server
        return
    from testcontainers.community.redis import RedisContainer

    with RedisContainer("redis:7-alpine") as container:
        host, port = container.get_container_host_ip(), container.get_exposed_port(6379)
        yield RedisEndpoint(url=f"redis://{host}:{port}/0")


@contextlib.contextmanager
def _kafka() -> Iterator[KafkaBroker | KafkaEndpoint]:
    """A broker with every vidrec topic created."""
    from vidrec.infra.embedded import KafkaBroker
    from vidrec.infra.kafka import ALL_TOPICS, ensure_topics

    if not USE_CONTAINERS:
        with KafkaBroker() as broker:
            ensure_topics(broker.bootstrap, ALL_TOPICS)
            yield broker
        return
    from testcontainers.community.kafka import KafkaContainer

    with KafkaContainer("confluentinc/cp-kafka:7.6.0").with_kraft() as container:
        endpoint = KafkaEndpoint(bootstrap=container.get_bootstrap_server())
        ensure_topics(endpoint.bootstrap, ALL_TOPICS)
        yield endpoint


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer | RedisEndpoint]:
    """One Redis for the session; tests isolate by `key_prefix` and the flush of `redis_client`."""
    with _redis() as server:
        yield server


@pytest.fixture
def redis_client(redis_server: RedisServer | RedisEndpoint) -> Iterator[redis.Redis]:
    """A client on the session Redis; the database is flushed after each test."""
    client = redis.Redis.from_url(redis_server.url)
    try:
        yield client
    finally:
        client.flushdb()
        client.close()


@pytest.fixture
def key_prefix() -> str:
    """A Redis key prefix of this test's own (schema.Keys(prefix))."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServers]:
    """A local Redis Cluster of three masters for the session (DESIGN.md §8); tests
    isolate by `key_prefix`."""
    from vidrec.infra.embedded import RedisClusterServers

    with RedisClusterServers(masters=3) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[KafkaBroker | KafkaEndpoint]:
    """One broker for the session with every vidrec topic created.

    Topics are shared by every test of the session: a test that reads a topic from the
    beginning sees what earlier tests wrote. Use its own topic, or `private_kafka_broker`.
    """
    with _kafka() as broker:
        yield broker


@pytest.fixture
def private_kafka_broker() -> Iterator[KafkaBroker | KafkaEndpoint]:
    """A broker of this test's own, with every vidrec topic (embedded: ~0.2 s to start)."""
    with _kafka() as broker:
        yield broker


# --- trained models and a running stack ---------------------------------------------------


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A small synthetic data directory (with ground truth and later users/videos)."""
    from vidrec.data.synth import generate

    out = tmp_path_factory.mktemp("data") / "small"
    generate(out, users=300, videos=400, seed=3, interactions_per_user=120.0, new_users=20,
             new_videos=20)
    return out


@pytest.fixture(scope="session")
def small_model(small_dataset, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A model directory trained on `small_dataset` (few epochs: behaviour, not quality)."""
    from dataclasses import replace

    from vidrec.data.dataset import load_dataset
    from vidrec.training.pipeline import PipelineConfig, train_bundle

    cfg = PipelineConfig()
    cfg.train = replace(cfg.train, epochs=3)
    cfg.mf = replace(cfg.mf, iterations=4)
    out = tmp_path_factory.mktemp("models") / "m1"
    train_bundle(load_dataset(small_dataset), cfg, progress=False).save(out)
    return out


# Stage ceilings as long as the calls' own timeouts: the stack tests are about behaviour,
# and a slow machine must not turn their answers into degraded ones.
PATIENT_STAGES = {"VIDREC_CANDIDATE_TIMEOUT_MS": "4000", "VIDREC_RANKER_TIMEOUT_MS": "4000",
                  "VIDREC_RERANKER_TIMEOUT_MS": "4000"}


@contextlib.contextmanager
def published_stack(model, var, extra_env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    """A whole secure stack (stores, `model` published as v1, every service, the trainer)
    under `var`; stopped on exit."""
    from vidrec.serving.publish import publish
    from vidrec.stack import Stack
    from vidrec.store.artifacts import ArtifactStore
    from vidrec.store.features import FeatureStore
    from vidrec.store.index import EdgeIndex

    st = Stack(var, extra_env={**PATIENT_STAGES, **(extra_env or {})})
    try:
        st.start_stores()
        index = EdgeIndex(st.index_root)
        publish(model, ArtifactStore(st.artifact_root), index,
                FeatureStore.from_url(st.redis_url), overwrite_history=True)
        index.close()
        st.start_services(trainer=True, timeout_s=180)
        yield st
    finally:
        st.stop()
