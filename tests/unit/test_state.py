"""Both state backends behave the same; Redis is a real redis-server."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import pytest

from sidecar.state import ApprovalConflict, ApprovalRecord, ParentEnded, SessionLimits, Store, StoreError, TaskRecord
from sidecar.state.memory import MemoryStore
from sidecar.state.redis import RedisStore


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    if request.param == "memory":
        backend: Store = MemoryStore()
    else:
        backend = RedisStore(request.getfixturevalue("redis_url"), f"test-{uuid.uuid4().hex[:8]}:", 1000)
    yield backend
    await backend.close()


def task(parent: TaskRecord | None = None, ttl: int = 600, **kw: object) -> TaskRecord:
    now = int(time.time())
    task_id = str(uuid.uuid4())
    return TaskRecord(
        id=task_id,
        sub=str(kw.get("sub", "spiffe://demo.local/agent/writer")),
        purpose="triage",
        scopes=["docs:read", "tickets:write"],
        issued_at=now,
        expires_at=now + ttl,
        parent_id=parent.id if parent else None,
        root_id=parent.root_id if parent else task_id,
        depth=parent.depth + 1 if parent else 0,
        chain=[parent.sub, *parent.chain] if parent else [],
    )


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
    store = RedisStore("redis://127.0.0.1:1/0", "x:", 200)
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


# -- approvals --------------------------------------------------------------------------------


def approval(ttl: int = 600) -> ApprovalRecord:
    now = int(time.time())
    return ApprovalRecord(
        id=str(uuid.uuid4()),
        agent="spiffe://demo.local/agent/writer",
        task_id="t1",
        fingerprint="sha256:x",
        created_at=now,
        expires_at=now + ttl,
        decision_id="d1",
        reasons=["needs a human"],
        summary={"path": "/a"},
    )


async def test_approval_lifecycle(store: Store) -> None:
    a = approval()
    await store.create_approval(a)
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
    await store.create_approval(a)
    later = a.expires_at + 1
    with pytest.raises(ApprovalConflict):
        await store.decide_approval(a.id, "approved", {}, None, later)
    b = approval()
    await store.create_approval(b)
    await store.decide_approval(b.id, "approved", {}, None, int(time.time()))
    with pytest.raises(ApprovalConflict):
        await store.consume_approval(b.id, b.expires_at + 1)
