"""Limits the agent cannot reset: its own history reaches the policy whatever the session or task,
and the task policy sees how many tasks it already has open (pipeline and task service on the
memory store, with a stand-in OPA that records what it is asked)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from spiffe import SpiffeId

from sidecar.config import load_config
from sidecar.identity import Identity
from sidecar.keys import KeySet
from sidecar.opa import OpaClient
from sidecar.opa_fake import FakeOpa, Query
from sidecar.pipeline import Pipeline
from sidecar.request import CheckRequest
from sidecar.sessions import SessionTracker
from sidecar.state.memory import MemoryStore
from sidecar.tasks import TaskError, TaskService
from tests.pipelines import QUIET, make_pipeline

DEFAULTS = load_config(None, {})
AGENT = "spiffe://demo.local/agent/reader"


class _Opa(FakeOpa):
    """Records every input document (FakeOpa does); answers with the verdicts it is given, in order."""

    def __init__(self, answers: list[dict[str, Any]]) -> None:
        super().__init__(self._next)
        self.answers = answers

    async def _next(self, query: Query) -> dict[str, Any]:
        await asyncio.sleep(0)  # let parallel requests interleave here, as with a real OPA
        return self.answers.pop(0)


class _Resolver:
    def resolve(self, headers: dict[str, str], peer_principal: str | None = None) -> Identity:
        return Identity(SpiffeId(AGENT), "jwt_svid")


def _pipeline(opa: OpaClient, store: MemoryStore) -> Pipeline:
    return make_pipeline(_Resolver(), opa, QUIET, sessions=SessionTracker(store, DEFAULTS.sessions))


def _call(session_id: str) -> CheckRequest:
    return CheckRequest("GET", "/api/records/1", {"host": "demo.local", "mcp-session-id": session_id}, b"")


def _allow(*remember: str) -> dict[str, Any]:
    return {"verdict": "allow", "reasons": ["ok"], "remember": list(remember)}


async def test_a_new_session_starts_empty_but_the_agent_history_does_not() -> None:
    deny = {"verdict": "deny", "reasons": ["no"]}
    opa = _Opa([_allow("pii_read"), deny, _allow(), _allow()])
    pipeline = _pipeline(opa, MemoryStore())
    statuses = [(await pipeline.check(_call(f"session-{i}"))).status for i in range(4)]
    assert statuses == [200, 403, 200, 200]
    first, second, third, fourth = opa.inputs
    assert first["agent_history"] == {"calls_last_minute": 0, "labels": {}}
    assert second["session"]["calls"] == 0 and second["session"]["labels"] == [], "a fresh MCP session"
    assert second["agent_history"]["calls_last_minute"] == 1
    assert set(second["agent_history"]["labels"]) == {"pii_read"}
    assert third["agent_history"]["calls_last_minute"] == 1, "the denied call was released, not counted"
    assert fourth["agent_history"]["calls_last_minute"] == 2


async def test_parallel_calls_in_fresh_sessions_see_each_other() -> None:
    opa = _Opa([_allow() for _ in range(10)])
    pipeline = _pipeline(opa, MemoryStore())
    await asyncio.gather(*(pipeline.check(_call(f"s{i}")) for i in range(10)))
    assert sorted(i["agent_history"]["calls_last_minute"] for i in opa.inputs) == list(range(10))


def _tasks(opa: OpaClient, store: MemoryStore) -> TaskService:
    return TaskService(DEFAULTS.tasks, store, KeySet(None, "ES256", 10), opa, ["demo.local"])


def _grant(ttl: int = 300) -> dict[str, Any]:
    return {"verdict": "allow", "reasons": ["ok"], "scopes": ["docs:read"], "ttl_seconds": ttl}


OPEN = {"purpose": "research", "scopes": ["docs:read"], "ttl_seconds": 300}


async def test_the_task_policy_sees_the_open_tasks_of_the_creator() -> None:
    store = MemoryStore()
    caller = Identity(SpiffeId("spiffe://demo.local/agent/writer"), "jwt_svid")
    refused = {"verdict": "deny", "reasons": ["capped"]}
    opa = _Opa([_grant(), _grant(), refused, _grant(), _grant(60)])
    service = _tasks(opa, store)
    first = await service.open(caller, OPEN)
    await service.open(caller, OPEN)
    with pytest.raises(TaskError):
        await service.open(caller, OPEN)
    await service.end(caller, first.task.id)
    parent = (await service.open(caller, OPEN)).task.id
    delegated = await service.delegate(caller, parent, {"to": AGENT, "scopes": ["docs:read"], "ttl_seconds": 60})
    assert [i["open_tasks"] for i in opa.inputs] == [0, 1, 2, 1, 2], "refused and ended tasks are not open"
    # The delegate's count is its own: the delegation counted against the writer.
    opa.answers.append(_grant())
    await service.open(Identity(SpiffeId(AGENT), "jwt_svid"), OPEN)
    assert opa.inputs[-1]["open_tasks"] == 0 and delegated.task.sub == AGENT


async def test_parallel_opens_see_each_other() -> None:
    store = MemoryStore()
    caller = Identity(SpiffeId("spiffe://demo.local/agent/writer"), "jwt_svid")
    opa = _Opa([_grant() for _ in range(8)])
    service = _tasks(opa, store)
    await asyncio.gather(*(service.open(caller, OPEN) for _ in range(8)))
    assert sorted(i["open_tasks"] for i in opa.inputs) == list(range(8))
