"""Sessions through the tracker on the memory store: which session a call lands in, reservations
that are committed or released exactly once, and the limits that keep a session's state bounded
(the store's own atomicity is tested in test_state.py, on every backend)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection

from spiffe import SpiffeId

from sidecar.config import SessionsConfig
from sidecar.identity import Identity
from sidecar.sessions import MAX_SESSION_ID, SessionTracker
from sidecar.state import GRACE_SECONDS, StoreError, TaskRecord
from sidecar.state.memory import MemoryStore

AGENT = Identity(SpiffeId("spiffe://demo.local/agent/writer"), "jwt_svid")


def _task(ttl: int = 600) -> TaskRecord:
    now = int(time.time())
    return TaskRecord("t-1", str(AGENT.spiffe_id), "triage", ["tickets:write"], now, now + ttl, root_id="t-1")


async def test_the_session_is_the_task_or_the_agent_and_its_mcp_session() -> None:
    tracker = SessionTracker(MemoryStore(), SessionsConfig())
    assert await tracker.reserve(None, None, {}, maybe_write=False) is None, "anonymous calls have no session"
    under_task = await tracker.reserve(AGENT, _task(ttl=600), {"mcp-session-id": "ignored"}, maybe_write=True)
    assert under_task is not None and under_task.key == "task:t-1"
    assert 600 <= under_task.ttl <= 600 + GRACE_SECONDS
    default = await tracker.reserve(AGENT, None, {}, maybe_write=False)
    assert default is not None and default.key == f"agent:{AGENT.spiffe_id}:default"
    long_id = "s" * (MAX_SESSION_ID + 50)
    chosen = await tracker.reserve(AGENT, None, {"mcp-session-id": long_id}, maybe_write=False)
    assert chosen is not None and chosen.key == f"agent:{AGENT.spiffe_id}:{'s' * MAX_SESSION_ID}"


async def test_a_committed_call_counts_a_released_one_does_not() -> None:
    tracker = SessionTracker(MemoryStore(), SessionsConfig())
    first = await tracker.reserve(AGENT, None, {}, maybe_write=True)
    second = await tracker.reserve(AGENT, None, {}, maybe_write=True)
    assert first is not None and second is not None
    assert (second.view.calls, second.view.writes) == (1, 1), "the first call is in flight: counted"
    await first.commit(True, ["pii_read"], {"method": "POST", "path": "/api/tickets"})
    await second.release()
    await second.release()  # a second release is a no-op
    await first.release()  # released after its commit: no-op, the commit stands
    after = await tracker.reserve(AGENT, None, {}, maybe_write=False)
    assert after is not None
    assert (after.view.calls, after.view.writes, after.view.labels) == (1, 1, ["pii_read"])
    assert [entry["path"] for entry in after.view.recent] == ["/api/tickets"]
    assert after.history.calls_last_minute == 1 and set(after.history.labels) == {"pii_read"}


async def test_parallel_reservations_see_each_other() -> None:
    tracker = SessionTracker(MemoryStore(), SessionsConfig())
    held = await asyncio.gather(*(tracker.reserve(AGENT, None, {}, maybe_write=True) for _ in range(20)))
    assert sorted(r.view.writes for r in held if r is not None) == list(range(20))


async def test_recent_calls_and_labels_stay_within_their_limits() -> None:
    tracker = SessionTracker(MemoryStore(), SessionsConfig(recent_window=3, max_labels=2))
    for n in range(6):
        held = await tracker.reserve(AGENT, None, {}, maybe_write=False)
        assert held is not None
        await held.commit(False, [f"label-{n}"], {"n": n})
    view = (await tracker.reserve(AGENT, None, {}, maybe_write=False)).view  # type: ignore[union-attr]
    assert view.calls == 6
    assert [entry["n"] for entry in view.recent] == [5, 4, 3], "newest first"
    assert len(view.labels) == 2


class _Recording(MemoryStore):
    """The memory store, noting which task ran each agent-history update; ``in_process`` as given."""

    def __init__(self, in_process: bool, fail: Collection[str] = ()) -> None:
        super().__init__()
        self.in_process = in_process
        self.fail = fail
        self.tasks: list[asyncio.Task[object] | None] = []
        self.attempted: list[str] = []

    async def release_call(self, key: str, reservation: str) -> None:
        self.attempted.append("session")
        if "session" in self.fail:
            raise StoreError("session update failed")
        await super().release_call(key, reservation)

    async def release_agent_call(self, agent: str, reservation: str) -> None:
        self.tasks.append(asyncio.current_task())
        self.attempted.append("agent")
        if "agent" in self.fail:
            raise StoreError("agent update failed")
        await super().release_agent_call(agent, reservation)


async def test_an_in_process_store_updates_in_the_calls_own_task() -> None:
    # The memory store never waits: a call's two updates run in its own task, with no task and
    # gather added per call; a store that does I/O gets them concurrently, each in a task of its own.
    for in_process in (True, False):
        store = _Recording(in_process)
        reservation = await SessionTracker(store, SessionsConfig()).reserve(AGENT, None, {}, maybe_write=False)
        assert reservation is not None
        await reservation.release()
        assert (store.tasks == [asyncio.current_task()]) is in_process, in_process


async def test_both_updates_are_attempted_and_the_first_failure_is_raised() -> None:
    for in_process in (True, False):
        for fail, raised in (({"session"}, "session"), ({"agent"}, "agent"), ({"session", "agent"}, "session")):
            store = _Recording(in_process, fail)
            reservation = await SessionTracker(store, SessionsConfig()).reserve(AGENT, None, {}, maybe_write=False)
            assert reservation is not None
            try:
                await reservation.release()
            except StoreError as exc:
                assert raised in str(exc), (in_process, fail)
            else:
                raise AssertionError("a failed update must be raised")
            assert sorted(store.attempted) == ["agent", "session"], (in_process, fail)


async def test_a_delegates_labels_are_remembered_for_every_delegator() -> None:
    store, now = MemoryStore(), int(time.time())
    root, middle = "spiffe://demo.local/agent/root", "spiffe://demo.local/agent/middle"
    delegated = TaskRecord(
        "t-2", str(AGENT.spiffe_id), "triage", ["records:read"], now, now + 600, parent_id="t-1", root_id="t-0",
        depth=2, chain=[middle, root],
    )  # fmt: skip
    tracker = SessionTracker(store, SessionsConfig())
    unlabelled = await tracker.reserve(AGENT, delegated, {}, maybe_write=False)
    assert unlabelled is not None and unlabelled.delegators == (middle, root)
    await unlabelled.commit(False, [], {"method": "GET", "path": "/api/docs/a"})
    labelled = await tracker.reserve(AGENT, delegated, {}, maybe_write=False)
    assert labelled is not None
    await labelled.commit(False, ["pii_read"], {"method": "GET", "path": "/api/records/7"})
    for agent in (middle, root, str(AGENT.spiffe_id)):
        other = Identity(SpiffeId(agent), "jwt_svid")
        view = await tracker.reserve(other, None, {}, maybe_write=False)
        assert view is not None and set(view.history.labels) == {"pii_read"}, agent
        await view.release()
    counted = await tracker.reserve(Identity(SpiffeId(root), "jwt_svid"), None, {}, maybe_write=False)
    assert counted is not None and counted.history.calls_last_minute == 0, "the delegate's calls are not the root's"
