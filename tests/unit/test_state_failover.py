"""The Redis store while a primary dies: real Redis Cluster and Sentinel set-ups on loopback, each
its own (these tests kill servers). Calls fail with StoreError (the sidecar's 503) until the
replica is promoted, then the store recovers on its own; nothing is ever wrongly answered."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis

from bench.failover import FailoverRun, eventually, run_failover, table
from devstack.redis_cluster import LocalRedisCluster
from sidecar.config import StateConfig
from sidecar.state import ApprovalRecord, StoreError, TaskRecord
from sidecar.state.redis import RedisStore, hash_tag
from sidecar.tasks import child_task


def check(run: FailoverRun) -> None:
    print(table([run]))
    assert not run.violations, run.violations
    assert run.store_errors > 0, "the killed primary's keys failed (503) while no replica had taken over"
    assert run.hot_path_back_s is not None and run.hot_path_back_s < 15, "the replica took over, the store found it"
    assert run.acked_back_s is not None and run.acked_back_s < 20, "revocations acknowledged again"
    assert run.revocations_acknowledged > 0 and run.approvals_used > 0


async def test_cluster_primary_killed_under_load(tmp_path: Path) -> None:
    run = await run_failover("cluster", tmp_path)
    check(run)
    assert run.other_primaries_ok > 0, "the other primaries kept answering for their own slots"


async def test_sentinel_primary_killed_under_load(tmp_path: Path) -> None:
    check(await run_failover("sentinel", tmp_path))


def _task(parent: TaskRecord | None = None) -> TaskRecord:
    now, task_id = int(time.time()), str(uuid.uuid4())
    sub = f"spiffe://demo.local/agent/{uuid.uuid4().hex[:8]}"
    if parent is not None:
        return child_task(parent, sub, ["tickets:write"], 600, now, task_id)
    return TaskRecord(task_id, sub, "wait", ["tickets:write"], issued_at=now, expires_at=now + 600, root_id=task_id)


async def test_what_no_replica_confirmed_is_never_acknowledged(tmp_path: Path) -> None:
    """With the replica frozen and cut off, a revocation and an approval's use reach only the primary: the store
    (WAIT 1) refuses to acknowledge them. The primary then dies and the replica, which never got
    them, takes over: the revocation is gone (the revoker was told it was not acknowledged and
    retries) and the approval is usable exactly once more (its first use was refused, so no call
    went through). Without WAIT the same revocation is acknowledged, then lost: the hazard."""
    with LocalRedisCluster(tmp_path) as cluster:
        common: dict[str, Any] = {
            "backend": "redis",
            "redis_mode": "cluster",
            "redis_cluster_nodes": cluster.seeds,
            "key_prefix": "wait:",
            "timeout_ms": 300,
        }
        acked = RedisStore.from_config(StateConfig(**common))  # cluster mode: replica_acks 1
        unacked = RedisStore.from_config(StateConfig(replica_acks=0, **common))
        try:
            root = _task()
            await acked.create_task(root)
            primary = cluster.primary_for(hash_tag("t", root.id))
            replica = cluster.replica_of(primary)
            told, untold = _task(root), _task(root)
            for t in (told, untold):
                await acked.create_task(t)
            approval_id = next(
                i for i in (str(uuid.uuid4()) for _ in range(200)) if cluster.primary_for(hash_tag("ap", i)) is primary
            )
            now = int(time.time())
            agent = "spiffe://demo.local/agent/a"
            approval = ApprovalRecord(approval_id, agent, None, "sha256:x", now, now + 600, "d", [], {})
            await acked.create_approval(approval, 20, now)
            await acked.decide_approval(approval_id, "approved", {"kind": "test"}, None, now)

            # Frozen, and cut off (a frozen replica's kernel would still take the stream in).
            assert replica.process is not None
            replica.process.send_signal(signal.SIGSTOP)
            try:
                with redis.Redis(port=primary.port) as admin:
                    admin.execute_command("CLIENT", "KILL", "TYPE", "replica")
                with pytest.raises(StoreError, match="replica"):
                    await acked.end_task(told.id, "revoked", "stop", now)
                assert (await acked.get_task(told.id)).status == "revoked", "in force on the primary meanwhile"  # type: ignore[union-attr]
                with pytest.raises(StoreError, match="replica"):
                    await acked.consume_approval(approval_id, now)
                assert await unacked.end_task(untold.id, "revoked", "stop", now) == [untold.id], "acknowledged"
                primary.kill()
            finally:
                replica.process.send_signal(signal.SIGCONT)

            back = await eventually(lambda: acked.get_task(told.id), within_s=20.0)
            assert cluster.is_primary(replica), "the replica took over"
            assert back is not None and back.status == "active", "lost with the primary: never acknowledged"
            lost = await eventually(lambda: acked.get_task(untold.id), within_s=20.0)
            assert lost is not None and lost.status == "active", "acknowledged without WAIT, then lost"

            await asyncio.to_thread(primary.start)  # back as the new primary's replica: WAIT 1 can succeed
            await asyncio.to_thread(cluster.wait_healthy)
            # The revoker, told the first time it was not acknowledged, revokes again (idempotent).
            again = await acked.end_task(told.id, "revoked", "again", int(time.time()))
            assert again == [told.id], "acknowledged now: a replica confirmed it"
            assert (await acked.get_approval(approval_id)).status == "approved"  # type: ignore[union-attr]
            used = await acked.consume_approval(approval_id, int(time.time()))
            assert used.status == "consumed", "its one use: the earlier one never let a call through"
        finally:
            await acked.close()
            await unacked.close()
