"""Every state backend behaves the same: memory, and real redis-servers alone, as a Cluster and behind Sentinel."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio.connection import AbstractConnection

from devstack.redis_cluster import LocalRedisCluster, LocalSentinel
from sidecar.config import StateConfig
from sidecar.input import agent_history_input
from sidecar.state import (
    TASK_SLOT_TIMEOUT_SECONDS,
    AgentLimits,
    ApprovalConflict,
    ApprovalRecord,
    ParentEnded,
    SessionLimits,
    Store,
    StoreError,
    TaskRecord,
    ToolPin,
    TooManyApprovals,
)
from sidecar.state import redis as redis_state
from sidecar.state.memory import MemoryStore
from sidecar.state.redis import RedisStore
from sidecar.tasks import child_task


def state_config(request: pytest.FixtureRequest, mode: str) -> StateConfig:
    """``state.*`` for a fresh key prefix on the session's single Redis, Cluster or Sentinel set-up."""
    common: dict[str, Any] = {"backend": "redis", "key_prefix": f"test-{uuid.uuid4().hex[:8]}:", "timeout_ms": 1000}
    if mode == "redis-cluster":
        cluster: LocalRedisCluster = request.getfixturevalue("redis_cluster")
        return StateConfig(redis_mode="cluster", redis_cluster_nodes=cluster.seeds, **common)
    if mode == "redis-sentinel":
        sentinel: LocalSentinel = request.getfixturevalue("redis_sentinel")
        return StateConfig(
            redis_mode="sentinel", sentinel_nodes=sentinel.nodes, sentinel_service=sentinel.service, **common
        )
    return StateConfig(redis_url=request.getfixturevalue("redis_url"), **common)


# The same contract on every backend: memory, one Redis, a Redis Cluster (every script's keys in
# one slot, task trees and agents spread over three primaries) and the primary Sentinel names
# (both of those WAIT for a replica before a revocation or an approval's use is acknowledged).
@pytest.fixture(params=["memory", "redis", "redis-cluster", "redis-sentinel"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    if request.param == "memory":
        backend: Store = MemoryStore()
    else:
        backend = RedisStore.from_config(state_config(request, request.param))
    yield backend
    await backend.close()


def task(parent: TaskRecord | None = None, ttl: int = 600, **kw: object) -> TaskRecord:
    now = int(time.time())
    task_id, sub = str(uuid.uuid4()), str(kw.get("sub", "spiffe://demo.local/agent/writer"))
    scopes = ["docs:read", "tickets:write"]
    if parent is not None:
        return child_task(parent, sub, scopes, ttl, now, task_id)
    return TaskRecord(task_id, sub, "triage", scopes, issued_at=now, expires_at=now + ttl, root_id=task_id)


async def test_roundtrip(store: Store) -> None:
    t = task()
    await store.create_task(t)
    got = await store.get_task(t.id)
    assert got == t
    assert await store.get_task("missing") is None
    assert await store.ping()


async def test_end_cascades_to_every_descendant(store: Store) -> None:
    root = task()
    child = task(root, sub="spiffe://demo.local/agent/reader")
    grandchild = task(child, sub="spiffe://demo.local/agent/ops/x")
    sibling = task()
    for t in (root, child, grandchild, sibling):
        await store.create_task(t)
    ended = await store.end_task(root.id, "completed", "done", int(time.time()))
    assert ended == [root.id, child.id, grandchild.id]
    assert (await store.get_task(root.id)).status == "completed"  # type: ignore[union-attr]
    gc = await store.get_task(grandchild.id)
    assert gc is not None and gc.status == "revoked" and root.id in (gc.end_reason or "")
    assert (await store.get_task(sibling.id)).status == "active"  # type: ignore[union-attr]
    assert await store.end_task(root.id, "completed", "again", int(time.time())) == []


async def test_no_child_of_an_ended_parent(store: Store) -> None:
    root = task()
    await store.create_task(root)
    await store.end_task(root.id, "revoked", "stop", int(time.time()))
    with pytest.raises(ParentEnded):
        await store.create_task(task(root))
    with pytest.raises(ParentEnded):
        await store.create_task(task(task()))  # unknown parent


async def test_redis_unreachable_is_a_store_error() -> None:
    store = RedisStore.from_url("redis://127.0.0.1:1/0", "x:", 200)
    with pytest.raises(StoreError):
        await store.get_task("x")
    with pytest.raises(StoreError):
        await store.create_task(task())
    assert not await store.ping()
    await store.close()


# -- sessions ---------------------------------------------------------------------------------

LIMITS = SessionLimits(recent_window=3, max_labels=2, inflight_timeout_seconds=30)


async def test_reservations_see_each_other(store: Store) -> None:
    key, now = f"task:{uuid.uuid4()}", time.time()
    views = [await store.reserve_call(key, f"r{i}", True, now, 60, LIMITS) for i in range(5)]
    assert [v.writes for v in views] == [0, 1, 2, 3, 4]
    assert [v.calls for v in views] == [0, 1, 2, 3, 4]
    await store.release_call(key, "r0")
    await store.commit_call(key, "r1", True, ["pii_read"], {"path": "/a"}, now, 60, LIMITS)
    view = await store.reserve_call(key, "r5", False, now, 60, LIMITS)
    assert (view.calls, view.writes, view.labels) == (4, 4, ["pii_read"])  # 1 committed + r2..r4 in flight


async def test_session_state_stays_bounded(store: Store) -> None:
    key, now = f"agent:x:{uuid.uuid4()}", time.time()
    for i in range(10):
        await store.reserve_call(key, f"r{i}", False, now, 60, LIMITS)
        await store.commit_call(key, f"r{i}", i % 2 == 0, [f"l{i}"], {"path": f"/{i}"}, now, 60, LIMITS)
    view = await store.reserve_call(key, "last", False, now, 60, LIMITS)
    assert (view.calls, view.writes, view.calls_last_minute) == (10, 5, 10)
    assert [e["path"] for e in view.recent] == ["/9", "/8", "/7"]
    assert view.labels == ["l0", "l1"]


async def test_stale_reservations_expire(store: Store) -> None:
    key, now = f"task:{uuid.uuid4()}", time.time()
    await store.reserve_call(key, "crashed", True, now - 100, 600, LIMITS)
    view = await store.reserve_call(key, "fresh", True, now, 600, LIMITS)
    assert view.writes == 0, "a reservation never committed or released stops counting after the timeout"


# -- the agent's own history, whatever its session ---------------------------------------------

AGENT_LIMITS = AgentLimits(label_retention_seconds=3600, max_labels=2, inflight_timeout_seconds=30)


def some_agent() -> str:
    return f"spiffe://demo.local/agent/{uuid.uuid4().hex[:12]}"


async def test_agent_history_spans_its_sessions(store: Store) -> None:
    agent, other, now = some_agent(), some_agent(), time.time()
    # The same reservation ids under three different session keys: the agent's history sees all.
    for i in range(3):
        await store.reserve_call(f"agent:{agent}:{uuid.uuid4()}", f"r{i}", False, now, 60, LIMITS)
    views = [await store.reserve_agent_call(agent, f"r{i}", now, AGENT_LIMITS) for i in range(3)]
    assert [v.calls_last_minute for v in views] == [0, 1, 2]
    await store.release_agent_call(agent, "r0")
    await store.commit_agent_call(agent, "r1", ["pii_read"], now, AGENT_LIMITS)
    view = await store.reserve_agent_call(agent, "r3", now, AGENT_LIMITS)
    assert view.calls_last_minute == 2, "r1 committed, r2 in flight"
    assert view.labels == {"pii_read": int(now)}
    fresh = await store.reserve_agent_call(other, "o", now, AGENT_LIMITS)
    assert agent_history_input(fresh) == {"calls_last_minute": 0, "labels": {}}, "another agent starts from nothing"


async def test_parallel_agent_reservations_see_each_other(store: Store) -> None:
    agent, now = some_agent(), time.time()
    views = await asyncio.gather(*(store.reserve_agent_call(agent, f"r{i}", now, AGENT_LIMITS) for i in range(20)))
    assert sorted(v.calls_last_minute for v in views) == list(range(20))


async def test_agent_history_windows_and_bounds(store: Store) -> None:
    agent, now = some_agent(), time.time()
    await store.reserve_agent_call(agent, "old", now - 3000, AGENT_LIMITS)
    await store.commit_agent_call(agent, "old", ["pii_read"], now - 3000, AGENT_LIMITS)
    await store.reserve_agent_call(agent, "a", now - 100, AGENT_LIMITS)
    await store.commit_agent_call(agent, "a", ["x"], now - 100, AGENT_LIMITS)
    view = await store.reserve_agent_call(agent, "b", now, AGENT_LIMITS)
    assert view.calls_last_minute == 0, "calls older than a minute no longer count"
    assert view.labels == {"pii_read": int(now - 3000), "x": int(now - 100)}, "labels outlive the minute"
    # At most max_labels labels: a new one is not added, a known one gets its new time.
    await store.commit_agent_call(agent, "b", ["y", "pii_read"], now, AGENT_LIMITS)
    view = await store.reserve_agent_call(agent, "c", now, AGENT_LIMITS)
    assert (view.calls_last_minute, view.labels) == (1, {"pii_read": int(now), "x": int(now - 100)})
    # Past the retention a label is forgotten.
    later = await store.reserve_agent_call(agent, "d", now + 3590, AGENT_LIMITS)
    assert later.labels == {"pii_read": int(now)}
    assert later.calls_last_minute == 0, "the in-flight reservation c went stale, b is older than a minute"


async def test_labels_remembered_for_a_delegator_count_no_call_and_keep_the_bounds(store: Store) -> None:
    agent, now = some_agent(), time.time()
    await store.remember_agent_labels(agent, ["pii_read"], now - 100, AGENT_LIMITS)
    view = await store.reserve_agent_call(agent, "a", now, AGENT_LIMITS)
    assert (view.calls_last_minute, view.labels) == (0, {"pii_read": int(now - 100)}), "a label, not a call"
    await store.remember_agent_labels(agent, ["x", "y", "pii_read"], now, AGENT_LIMITS)
    view = await store.reserve_agent_call(agent, "b", now, AGENT_LIMITS)
    assert view.labels == {"pii_read": int(now), "x": int(now)}, "at most max_labels; a known one gets its new time"
    await store.remember_agent_labels(agent, [], now, AGENT_LIMITS)  # nothing to remember: nothing changes
    later = await store.reserve_agent_call(agent, "c", now + 3590, AGENT_LIMITS)
    assert later.labels == {"pii_read": int(now), "x": int(now)}, "kept for the retention from the last time"
    forgotten = await store.reserve_agent_call(agent, "d", now + 3700, AGENT_LIMITS)
    assert forgotten.labels == {}, "past the retention"


async def test_open_tasks_are_counted_per_creator(store: Store) -> None:
    creator, delegate, now = some_agent(), some_agent(), time.time()
    assert await store.reserve_task_slot(creator, "s1", now) == 0
    assert await store.reserve_task_slot(creator, "s2", now) == 1, "s1 is in flight"
    first = task(sub=creator)
    await store.create_task(first, slot="s1")  # s1 becomes the task
    await store.release_task_slot(creator, "s2")
    assert await store.reserve_task_slot(creator, "s3", now) == 1
    await store.release_task_slot(creator, "s3")
    # A delegated task counts against the delegator, never against the delegate.
    child = task(first, sub=delegate)
    await store.create_task(child)
    assert await store.reserve_task_slot(creator, "s4", now) == 2
    await store.release_task_slot(creator, "s4")
    assert await store.reserve_task_slot(delegate, "x", now) == 0
    # Ended and expired tasks are not open.
    await store.end_task(child.id, "completed", "done", int(now))
    assert await store.reserve_task_slot(creator, "s5", now) == 1
    await store.release_task_slot(creator, "s5")
    assert await store.reserve_task_slot(creator, "s6", first.expires_at) == 0


async def test_parallel_task_slots_see_each_other_and_stale_ones_expire(store: Store) -> None:
    creator, now = some_agent(), time.time()
    counts = await asyncio.gather(*(store.reserve_task_slot(creator, f"s{i}", now) for i in range(20)))
    assert sorted(counts) == list(range(20))
    later = now + TASK_SLOT_TIMEOUT_SECONDS + 1
    assert await store.reserve_task_slot(creator, "fresh", later) == 0, "never-released reservations stop counting"


# -- approvals --------------------------------------------------------------------------------


AGENT = "spiffe://demo.local/agent/writer"
MAX_PENDING = 20


def approval(ttl: int = 600, agent: str = AGENT, task_id: str = "t1", fingerprint: str | None = None) -> ApprovalRecord:
    now = int(time.time())
    return ApprovalRecord(
        id=str(uuid.uuid4()),
        agent=agent,
        task_id=task_id,
        fingerprint=fingerprint or f"sha256:{uuid.uuid4().hex}",
        created_at=now,
        expires_at=now + ttl,
        decision_id="d1",
        reasons=["needs a human"],
        summary={"path": "/a"},
    )


async def test_approval_lifecycle(store: Store) -> None:
    a = approval()
    assert (await store.create_approval(a, MAX_PENDING, int(time.time()))).id == a.id
    assert a.id in [p.id for p in await store.list_approvals("pending")]
    with pytest.raises(ApprovalConflict):
        await store.consume_approval(a.id, int(time.time()))  # not approved yet
    decided = await store.decide_approval(a.id, "approved", {"kind": "oidc", "id": "i#alice"}, "ok", int(time.time()))
    assert decided.status == "approved" and decided.approver == {"kind": "oidc", "id": "i#alice"}
    assert a.id not in [p.id for p in await store.list_approvals("pending")]
    with pytest.raises(ApprovalConflict):
        await store.decide_approval(a.id, "rejected", {}, None, int(time.time()))
    assert (await store.consume_approval(a.id, int(time.time()))).status == "consumed"
    with pytest.raises(ApprovalConflict):
        await store.consume_approval(a.id, int(time.time()))
    await store.restore_approval(a.id)
    assert (await store.get_approval(a.id)).status == "approved"  # type: ignore[union-attr]


async def test_expired_approvals_cannot_be_decided_or_used(store: Store) -> None:
    a = approval(ttl=1)
    await store.create_approval(a, MAX_PENDING, int(time.time()))
    later = a.expires_at + 1
    with pytest.raises(ApprovalConflict):
        await store.decide_approval(a.id, "approved", {}, None, later)
    b = approval()
    await store.create_approval(b, MAX_PENDING, int(time.time()))
    await store.decide_approval(b.id, "approved", {}, None, int(time.time()))
    with pytest.raises(ApprovalConflict):
        await store.consume_approval(b.id, b.expires_at + 1)


async def test_asking_again_for_the_same_request_returns_the_pending_approval(store: Store) -> None:
    now = int(time.time())
    first = approval(fingerprint="sha256:same")
    first.summary_cuts = [{"pointer": "/arguments/ids", "unit": "items", "hidden": 37}]
    assert (await store.create_approval(first, MAX_PENDING, now)).id == first.id
    again = await store.create_approval(approval(fingerprint="sha256:same"), MAX_PENDING, now)
    assert again.id == first.id and again.summary_cuts == first.summary_cuts
    assert [a.id for a in await store.list_approvals("pending") if a.fingerprint == "sha256:same"] == [first.id]
    # Another task, another agent or stronger approvers is another approval.
    other_task = approval(task_id="t2", fingerprint="sha256:same")
    assert (await store.create_approval(other_task, MAX_PENDING, now)).id == other_task.id
    other_agent = approval(agent="spiffe://demo.local/agent/reader", fingerprint="sha256:same")
    assert (await store.create_approval(other_agent, MAX_PENDING, now)).id == other_agent.id
    stronger = approval(fingerprint="sha256:same")
    stronger.approvers = {"data_class": "restricted"}
    assert (await store.create_approval(stronger, MAX_PENDING, now)).id == stronger.id
    # Once decided (or expired) it is no longer pending: asking again asks anew.
    await store.decide_approval(first.id, "rejected", {"kind": "oidc", "id": "i#alice"}, "no", now)
    anew = approval(fingerprint="sha256:same")
    assert (await store.create_approval(anew, MAX_PENDING, now)).id == anew.id
    later = approval(fingerprint="sha256:same")
    assert (await store.create_approval(later, MAX_PENDING, anew.expires_at)).id == later.id


async def test_pending_approvals_are_capped_per_agent(store: Store) -> None:
    agent, now = f"spiffe://demo.local/agent/{uuid.uuid4().hex[:8]}", int(time.time())
    held = [approval(agent=agent) for _ in range(3)]
    for a in held:
        await store.create_approval(a, 3, now)
    with pytest.raises(TooManyApprovals) as refused:
        await store.create_approval(approval(agent=agent), 3, now)
    assert (refused.value.agent, refused.value.pending) == (agent, 3)
    # The same request is still answered (nothing new is stored), other agents are not affected.
    same = approval(agent=agent, fingerprint=held[0].fingerprint)
    assert (await store.create_approval(same, 3, now)).id == held[0].id
    await store.create_approval(approval(agent="spiffe://demo.local/agent/other"), 3, now)
    # A decided approval frees its slot; so does an expired one.
    await store.decide_approval(held[0].id, "approved", {"kind": "oidc", "id": "i#alice"}, None, now)
    await store.create_approval(approval(agent=agent), 3, now)
    with pytest.raises(TooManyApprovals):
        await store.create_approval(approval(agent=agent), 3, now)
    await store.create_approval(approval(agent=agent), 3, held[1].expires_at)


async def test_parallel_requests_cannot_exceed_the_cap_or_duplicate(store: Store) -> None:
    agent, now = f"spiffe://demo.local/agent/{uuid.uuid4().hex[:8]}", int(time.time())

    async def create(a: ApprovalRecord) -> str:
        try:
            return (await store.create_approval(a, 5, now)).id
        except TooManyApprovals:
            return "refused"

    distinct = await asyncio.gather(*(create(approval(agent=agent)) for _ in range(30)))
    assert len([i for i in distinct if i != "refused"]) == 5
    agent = f"spiffe://demo.local/agent/{uuid.uuid4().hex[:8]}"
    same = await asyncio.gather(*(create(approval(agent=agent, fingerprint="sha256:one")) for _ in range(30)))
    assert len(set(same)) == 1 and same[0] != "refused"


# -- atomic under concurrency, on every backend --------------------------------------------------


async def test_fifty_parallel_calls_count_atomically(store: Store) -> None:
    key, agent, now = f"task:{uuid.uuid4()}", some_agent(), time.time()
    views = await asyncio.gather(*(store.reserve_call(key, f"r{i}", True, now, 60, LIMITS) for i in range(50)))
    assert sorted(v.writes for v in views) == list(range(50)), "each call sees every earlier one, none twice"
    history = await asyncio.gather(*(store.reserve_agent_call(agent, f"r{i}", now, AGENT_LIMITS) for i in range(50)))
    assert sorted(h.calls_last_minute for h in history) == list(range(50))
    await asyncio.gather(*(store.commit_call(key, f"r{i}", True, [], {}, now, 60, LIMITS) for i in range(50)))
    view = await store.reserve_call(key, "last", False, now, 60, LIMITS)
    assert (view.calls, view.writes) == (50, 50), "no commit lost"
    slots = await asyncio.gather(*(store.reserve_task_slot(agent, f"s{i}", now) for i in range(50)))
    assert sorted(slots) == list(range(50))


async def test_a_tree_across_agents_ends_in_one_go(store: Store) -> None:
    """A tree whose tasks were created by four agents (four agent hash tags, spread over the
    Cluster's primaries): ending a task ends its subtree, and each creator's open tasks drop."""
    agents = [some_agent() for _ in range(4)]
    now = time.time()
    root = task(sub=agents[0])
    await store.create_task(root)
    first = [task(root, sub=agents[1]), task(root, sub=agents[2])]
    for child in first:
        await store.create_task(child)
    second = [task(first[0], sub=agents[3]), task(first[1], sub=agents[3])]
    for grandchild in second:
        await store.create_task(grandchild)
    leaf = task(second[0], sub=agents[0])
    await store.create_task(leaf)
    counts = [await store.reserve_task_slot(a, f"probe-{i}", now) for i, a in enumerate(agents)]
    assert counts == [3, 1, 1, 1], "a delegation counts against its delegator"
    for i, a in enumerate(agents):
        await store.release_task_slot(a, f"probe-{i}")

    ended = await store.end_task(first[0].id, "revoked", "stop", int(now))
    assert ended == [first[0].id, second[0].id, leaf.id], "the subtree, breadth first"
    assert (await store.get_task(first[1].id)).status == "active"  # type: ignore[union-attr]
    ended = await store.end_task(root.id, "revoked", "stop all", int(now))
    assert ended == [root.id, first[1].id, second[1].id], "what was still active"
    for t in (root, *first, *second, leaf):
        got = await store.get_task(t.id)
        assert got is not None and got.status == "revoked", t.id
    assert [await store.reserve_task_slot(a, "after", now) for a in agents] == [0, 0, 0, 0]


async def test_delegations_racing_a_revocation_never_stay_active(store: Store) -> None:
    """Eight agents keep delegating (some widen the tree, some deepen it) while the root is revoked:
    every delegation either is refused (ParentEnded) or is revoked by that one call, never left
    active under a revoked root."""
    root = task()
    await store.create_task(root)
    created, underway = [root], asyncio.Event()

    async def delegate_until_refused(worker: int) -> None:
        parent = root
        for _ in range(200):
            child = task(parent, sub=some_agent())
            try:
                await store.create_task(child)
            except ParentEnded:
                return
            created.append(child)
            if len(created) >= 24:
                underway.set()
            parent = child if worker % 2 else root
            await asyncio.sleep(0)  # the memory store never waits: let the others (and the revocation) run

    workers = [asyncio.create_task(delegate_until_refused(w)) for w in range(8)]
    await asyncio.wait_for(underway.wait(), 10)
    ended = await store.end_task(root.id, "revoked", "stop", int(time.time()))
    await asyncio.gather(*workers)
    assert len(created) < 8 * 200, "the workers stopped because the tree was revoked"
    for t in created:
        got = await store.get_task(t.id)
        assert got is not None and got.status == "revoked", f"{t.id} stayed active under a revoked root"
    assert sorted(ended) == sorted(t.id for t in created), "every delegation made before it, ended by it"


async def test_an_approval_is_consumed_exactly_once_under_fifty_parallel_uses(store: Store) -> None:
    a = approval()
    now = int(time.time())
    await store.create_approval(a, MAX_PENDING, now)
    await store.decide_approval(a.id, "approved", {"kind": "oidc", "id": "i#alice"}, None, now)

    async def use() -> bool:
        try:
            await store.consume_approval(a.id, now)
        except ApprovalConflict:
            return False
        return True

    used = await asyncio.gather(*(use() for _ in range(50)))
    assert used.count(True) == 1
    assert (await store.get_approval(a.id)).status == "consumed"  # type: ignore[union-attr]


def test_no_script_builds_a_key_name() -> None:
    """Every key a Lua script touches comes from KEYS (what a Cluster routes by): the first argument
    of every redis.call is KEYS[n], never a name built from ARGV."""
    scripts = {k: v for k, v in vars(redis_state).items() if k.isupper() and "redis.call" in str(v)}
    assert len(scripts) >= 10
    for name, source in scripts.items():
        for command, first in re.findall(r"redis\.call\('(\w+)',\s*([^,)]+)", source):
            assert re.fullmatch(r"KEYS\[\w+\]", first.strip()), f"{name}: {command} on {first}"


async def test_a_failure_inside_the_redis_client_is_a_store_error(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """redis-py's cluster client can raise AttributeError on a connection another command closed
    (seen during failovers): that is an unavailable store (503), never an unexpected crash. An
    error in the store's own code still surfaces as what it is."""
    prefix, t = f"test-{uuid.uuid4().hex[:8]}:", task()
    store = RedisStore.from_url(redis_url, prefix, 1000)
    await store.create_task(t)
    await store.close()
    store = RedisStore.from_url(redis_url, prefix, 1000)
    with monkeypatch.context() as patch:  # a new connection that says it is open but has no socket
        patch.setattr(AbstractConnection, "is_connected", property(lambda self: True))
        with pytest.raises(StoreError, match="client failed"):
            await store.get_task(t.id)
    await store.close()
    store = RedisStore.from_url(redis_url, prefix, 1000)
    with monkeypatch.context() as patch:
        patch.setattr("sidecar.state.redis.json.loads", lambda *a, **k: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            await store.get_task(t.id)
    await store.close()


@pytest.mark.parametrize("mode", ["redis", "redis-cluster", "redis-sentinel"])
async def test_more_parallel_calls_than_connections_wait_for_a_turn(request: pytest.FixtureRequest, mode: str) -> None:
    """redis-py fails a command when its pool is used up: the store queues them instead (a burst of
    calls is slower, not 503)."""
    store = RedisStore.from_config(state_config(request, mode).model_copy(update={"max_connections": 2}))
    key, agent, now = f"task:{uuid.uuid4()}", some_agent(), time.time()
    try:
        views = await asyncio.gather(*(store.reserve_call(key, f"r{i}", True, now, 60, LIMITS) for i in range(40)))
        assert sorted(v.writes for v in views) == list(range(40))
        roots = [task(sub=agent) for _ in range(20)]
        await asyncio.gather(*(store.create_task(t) for t in roots))
        assert await store.reserve_task_slot(agent, "s", now) == 20
    finally:
        await store.close()


# -- pinned tool definitions ------------------------------------------------------------------
async def test_tool_pins_hold_the_first_definition_until_re_approved(store: Store) -> None:
    scope = f"spiffe://demo.local/agent/reader|{uuid.uuid4()}"
    assert await store.tool_pin(scope, "search_docs") is None
    assert await store.pin_tools(scope, {"search_docs": "h1", "get_record": "g1"}, 60) == {
        "search_docs": "new",
        "get_record": "new",
    }
    assert await store.pin_tools(scope, {"search_docs": "h1"}, 60) == {"search_docs": "same"}
    assert await store.tool_pin(scope, "search_docs") == ToolPin("same")
    # the server changes the definition: the pin stays, the change is held
    assert await store.pin_tools(scope, {"search_docs": "h2"}, 60) == {"search_docs": "changed"}
    assert await store.tool_pin(scope, "search_docs") == ToolPin("changed")
    assert await store.pin_tools(scope, {"search_docs": "h2"}, 60) == {"search_docs": "changed"}
    assert await store.repin_tool(scope, "get_record") is False  # nothing held to accept
    assert await store.repin_tool(scope, "search_docs") is True
    assert await store.tool_pin(scope, "search_docs") == ToolPin("same")
    assert await store.pin_tools(scope, {"search_docs": "h2"}, 60) == {"search_docs": "same"}
    assert await store.pin_tools(scope, {"search_docs": "h1"}, 60) == {"search_docs": "changed"}
    # a definition that reverts to its pin is no longer changed
    assert await store.pin_tools(scope, {"search_docs": "h2"}, 60) == {"search_docs": "same"}
    assert await store.pin_tools(scope, {}, 60) == {}


async def test_tool_pins_keep_the_param_headers_of_the_last_listing(store: Store) -> None:
    """What a tool's last listing said about its Mcp-Param-* headers, whatever its pin's state."""
    scope = f"spiffe://demo.local/agent/reader|{uuid.uuid4()}"
    first, second = '{"params":[["index",["index_name"]]]}', '{"invalid":"not a token"}'
    await store.pin_tools(scope, {"search_docs": "h1", "get_record": "g1"}, 60, {"search_docs": first})
    assert await store.tool_pin(scope, "search_docs") == ToolPin("same", first)
    assert await store.tool_pin(scope, "get_record") == ToolPin("same")  # that listing recorded none
    assert await store.pin_tools(scope, {"search_docs": "h2"}, 60, {"search_docs": second}) == {
        "search_docs": "changed"
    }
    assert await store.tool_pin(scope, "search_docs") == ToolPin("changed", second)  # the client saw h2 last
    assert await store.repin_tool(scope, "search_docs") is True
    assert await store.tool_pin(scope, "search_docs") == ToolPin("same", second)
    await store.pin_tools(scope, {"search_docs": "h2"}, 60)  # a listing without them forgets them
    assert await store.tool_pin(scope, "search_docs") == ToolPin("same")
    await store.pin_tools(scope, {"x:search_docs": "h3"}, 60, {"x:search_docs": first})  # a field-like name
    assert await store.tool_pin(scope, "search_docs") == ToolPin("same")
    assert await store.tool_pin(scope, "x:search_docs") == ToolPin("same", first)


async def test_tool_pins_are_per_scope_and_expire(store: Store) -> None:
    one, two = f"a|{uuid.uuid4()}", f"b|{uuid.uuid4()}"
    await store.pin_tools(one, {"t": "h1"}, 1)
    assert await store.pin_tools(two, {"t": "h2"}, 60) == {"t": "new"}
    assert await store.pin_tools(one, {"p:t": "x", "h:t": "y"}, 1) == {"p:t": "new", "h:t": "new"}
    assert await store.tool_pin(one, "t") == ToolPin("same")  # names that look like the backend's own fields
    await asyncio.sleep(2.1)
    assert await store.tool_pin(one, "t") is None
    assert await store.tool_pin(two, "t") == ToolPin("same")
