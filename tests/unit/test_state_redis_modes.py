"""``state.*`` for Redis: the modes (single, cluster, sentinel), TLS and ACL credentials, against
real redis-servers. The ACL lines here are the ones docs/configuration.md recommends."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from devstack.ports import free_ports
from devstack.redis_cluster import LocalRedisCluster, LocalSentinel
from devstack.trust_domain import DevTrustDomain, X509Files
from sidecar.config import ConfigError, StateConfig, load_config, validate_config
from sidecar.state import StoreError, TaskRecord
from sidecar.state.redis import RedisStore

PASSWORD = "s3cret-" + uuid.uuid4().hex
# The store's commands, on its own keys only (docs/configuration.md, state.redis_username).
DATA_ACL = "-@all +@read +@write +@scripting +@connection +wait ~{prefix}*"
CLUSTER_ACL = DATA_ACL + " +cluster|slots +cluster|shards +cluster|nodes +command"
SENTINEL_ACL = "-@all +@connection +sentinel|masters"


def state(**settings: Any) -> dict[str, Any]:
    return {"state": {"backend": "redis", **settings}}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"redis_mode": "cluster"}, "state.redis_cluster_nodes"),
        ({"redis_mode": "sentinel", "sentinel_nodes": ["127.0.0.1:26379"]}, "state.sentinel_service"),
        ({"redis_mode": "cluster", "redis_cluster_nodes": ["127.0.0.1"]}, "host:port"),
        ({"key_prefix": "authz{x}:"}, "hash tags"),
        ({"redis_tls": True}, "rediss://"),
        ({"redis_url": "http://127.0.0.1:6379"}, "redis://"),
        ({"redis_ca_file": "/etc/ca.pem"}, "need TLS"),
        ({"redis_url": "rediss://r:6380", "redis_cert_file": "/c.pem"}, "go together"),
        ({"redis_mode": "cluster", "redis_cluster_nodes": ["a:1"], "timeout_ms": 50}, "replica_ack_timeout_ms"),
    ],
)
def test_invalid_settings_name_the_key(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_config(state(**settings))


def test_modes_from_the_environment_and_their_replica_acks() -> None:
    nodes = "[127.0.0.1:7000, 127.0.0.1:7001]"
    env = {
        "AUTHZ_STATE__BACKEND": "redis",
        "AUTHZ_STATE__REDIS_MODE": "cluster",
        "AUTHZ_STATE__REDIS_CLUSTER_NODES": nodes,
    }
    cluster = load_config(None, env).state
    assert cluster.redis_cluster_nodes == ["127.0.0.1:7000", "127.0.0.1:7001"]
    assert cluster.effective_replica_acks == 1, "cluster and sentinel WAIT for one replica by default"
    assert StateConfig().effective_replica_acks == 0, "one instance has no replica to wait for"
    assert StateConfig(redis_mode="cluster", redis_cluster_nodes=["a:1"], replica_acks=0).effective_replica_acks == 0
    sentinel = StateConfig(redis_mode="sentinel", sentinel_nodes=["a:1"], sentinel_service="authz")
    assert sentinel.effective_replica_acks == 1


def _task() -> TaskRecord:
    now, task_id = int(time.time()), str(uuid.uuid4())
    return TaskRecord(task_id, "spiffe://demo.local/agent/a", "acl", ["x"], now, now + 600, root_id=task_id)


# These tests are about credentials and TLS, not speed: a loaded CI machine may take longer than the
# default 500 ms for a TLS handshake plus WAIT, which would read as "refused".
SET_UP_TIMEOUT_MS = 5000


async def _works(config: StateConfig) -> bool:
    """Whether the store can create a task, read it back and revoke it (WAIT, in cluster and sentinel
    mode) with these settings."""
    store = RedisStore.from_config(config)
    try:
        t = _task()
        await store.create_task(t)
        assert await store.get_task(t.id) == t
        return await store.end_task(t.id, "revoked", "acl", int(time.time())) == [t.id] and await store.ping()
    except StoreError:
        return False
    finally:
        await store.close()


@pytest.fixture
def secrets(tmp_path: Path) -> tuple[Path, Path]:
    right, wrong = tmp_path / "password", tmp_path / "wrong"
    right.write_text(PASSWORD + "\n")  # a trailing newline, as editors and Kubernetes Secrets leave it
    wrong.write_text("not-it\n")
    return right, wrong


@pytest.fixture
def tls_redis(tmp_path: Path, trust_domain: DevTrustDomain) -> Iterator[tuple[int, X509Files]]:
    """redis-server on a TLS port only, the default user off, one ACL user for the store."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server not found: install the Debian package redis-server (./taskw does)")
    files = trust_domain.mint_x509("spiffe://demo.local/redis", tmp_path / "tls", dns_names=("127.0.0.1",))
    [port] = free_ports(1)
    acl = ["authz", "on", f">{PASSWORD}", *DATA_ACL.format(prefix="tls:").split()]
    argv = [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path)]
    argv += ["--tls-cert-file", str(files.cert), "--tls-key-file", str(files.key)]
    argv += ["--tls-ca-cert-file", str(files.bundle), "--tls-auth-clients", "no", "--save", "", "--appendonly", "no"]
    argv += ["--user", "default", "off", "--user", *acl]
    log = (tmp_path / "redis.log").open("ab")
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    client = redis.Redis(
        host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(files.bundle), username="authz", password=PASSWORD
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.RedisError:
            if time.monotonic() > deadline:
                process.terminate()
                pytest.fail("redis-server with TLS did not start")
            time.sleep(0.05)
    client.close()
    yield port, files
    process.terminate()
    process.wait(timeout=10)


async def test_tls_and_an_acl_user_on_a_single_instance(
    tls_redis: tuple[int, X509Files], secrets: tuple[Path, Path]
) -> None:
    port, files = tls_redis
    right, wrong = secrets
    good = StateConfig(
        backend="redis",
        redis_url=f"rediss://127.0.0.1:{port}/0",
        redis_username="authz",
        redis_password_file=right,
        redis_ca_file=files.bundle,
        key_prefix="tls:",
        timeout_ms=SET_UP_TIMEOUT_MS,
    )
    assert await _works(good)
    assert not await _works(good.model_copy(update={"redis_ca_file": None})), "the server's CA must be trusted"
    assert not await _works(good.model_copy(update={"redis_password_file": wrong}))
    assert not await _works(good.model_copy(update={"redis_url": f"redis://127.0.0.1:{port}/0", "redis_ca_file": None}))
    assert not await _works(good.model_copy(update={"key_prefix": "other:"})), "the ACL covers only its prefix"


def _setuser(port: int, name: str, rules: str) -> None:
    with redis.Redis(host="127.0.0.1", port=port) as admin:
        admin.execute_command("ACL", "SETUSER", name, "reset", "on", f">{PASSWORD}", *rules.split())


async def test_an_acl_user_on_cluster_and_sentinel(
    redis_cluster: LocalRedisCluster, redis_sentinel: LocalSentinel, secrets: tuple[Path, Path]
) -> None:
    """ACL users are per server (neither replication nor the cluster bus copies them): set on every
    node, and on every sentinel for the sentinels' own user."""
    right, wrong = secrets
    user = f"authz-{uuid.uuid4().hex[:6]}"
    for node in redis_cluster.nodes:
        _setuser(node.port, user, CLUSTER_ACL.format(prefix="acl:"))
    cluster = StateConfig(
        backend="redis",
        redis_mode="cluster",
        redis_cluster_nodes=redis_cluster.seeds,
        redis_username=user,
        redis_password_file=right,
        key_prefix="acl:",
        timeout_ms=SET_UP_TIMEOUT_MS,
    )
    assert await _works(cluster)
    assert not await _works(cluster.model_copy(update={"redis_password_file": wrong}))

    for server in redis_sentinel.servers:
        _setuser(server.port, user, DATA_ACL.format(prefix="acl:"))
    for address in redis_sentinel.nodes:
        _setuser(int(address.rsplit(":", 1)[1]), f"{user}-sentinel", SENTINEL_ACL)
    sentinel = StateConfig(
        backend="redis",
        redis_mode="sentinel",
        sentinel_nodes=redis_sentinel.nodes,
        sentinel_service=redis_sentinel.service,
        redis_username=user,
        redis_password_file=right,
        sentinel_username=f"{user}-sentinel",
        sentinel_password_file=right,
        key_prefix="acl:",
        timeout_ms=SET_UP_TIMEOUT_MS,
    )
    assert await _works(sentinel)
    assert not await _works(sentinel.model_copy(update={"sentinel_password_file": wrong}))
    assert not await _works(sentinel.model_copy(update={"redis_password_file": wrong}))
