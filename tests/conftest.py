"""Shared fixtures: a dev trust domain and real OPA / stack processes for the tests that need them."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.redis_cluster import LocalRedisCluster, LocalSentinel
from devstack.redis_server import RedisServer
from devstack.tools import ToolMissing, find_tool
from devstack.trust_domain import DevTrustDomain
from tests.redaction.ledger import SecretLedger, watch

REPO = Path(__file__).resolve().parents[1]

pytest_plugins = ["tests.ci_skips", "pytester"]


@pytest.fixture(scope="session")
def trust_domain(tmp_path_factory: pytest.TempPathFactory) -> DevTrustDomain:
    return DevTrustDomain(tmp_path_factory.mktemp("trust-domain")).ensure()


@pytest.fixture(scope="session")
def opa_bin() -> str:
    try:
        return find_tool("opa")
    except ToolMissing as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def envoy_bin() -> str:
    try:
        return find_tool("envoy")
    except ToolMissing as exc:
        pytest.fail(str(exc))


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port (Debian package `redis-server`), append-only persistence."""
    try:
        server = RedisServer(tmp_path_factory.mktemp("redis"))
    except FileNotFoundError as exc:
        pytest.fail(str(exc))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedisCluster]:
    """A real Redis Cluster on loopback: six redis-servers, three primaries each with a replica."""
    try:
        cluster = LocalRedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    except FileNotFoundError as exc:
        pytest.fail(str(exc))
    with cluster:
        yield cluster


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSentinel]:
    """A real Sentinel set-up on loopback: a primary, its replica and three sentinels."""
    try:
        sentinel = LocalSentinel(tmp_path_factory.mktemp("redis-sentinel"))
    except FileNotFoundError as exc:
        pytest.fail(str(exc))
    with sentinel:
        yield sentinel


@pytest.fixture(scope="session", autouse=True)
def secret_ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecretLedger]:
    """Every secret the session uses and every log its stacks write (tests/redaction scans them last)."""
    ledger = SecretLedger(tmp_path_factory.mktemp("collected-logs"))
    with pytest.MonkeyPatch.context() as patch:
        watch(patch, ledger)
        yield ledger


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The redaction scan runs after every other test, so it sees every log they produced."""
    last = [item for item in items if item.get_closest_marker("redaction_scan")]
    if last:
        items[:] = [item for item in items if item not in last] + last
