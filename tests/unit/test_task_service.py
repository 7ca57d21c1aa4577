"""Task grants in the task service on the memory store and the fake OPA: what the code enforces
whatever the policy says (narrowing, cycles, depth, expiry, revocation of the whole tree) and how
it reads the policy's answer (fail closed). The e2e suite covers the same through the real API."""

from __future__ import annotations

import time
from typing import Any

import pytest
from spiffe import SpiffeId

from sidecar.config import TasksConfig
from sidecar.identity import Identity
from sidecar.keys import KeySet
from sidecar.opa_fake import FakeOpa, Query, always, unreachable
from sidecar.state.memory import MemoryStore
from sidecar.tasks import TaskError, TaskService
from sidecar.wire_status import HTTP_STATUS

WRITER = "spiffe://demo.local/agent/writer"
ASSISTANT = "spiffe://demo.local/agent/assistant"
READER = "spiffe://demo.local/agent/reader"
OPEN = {"purpose": "triage", "scopes": ["docs:read", "tickets:write"], "ttl_seconds": 600}


def _grant_requested(query: Query) -> dict[str, Any]:
    """The policy grants what was asked for."""
    request = query.input["request"]
    return {"verdict": "allow", "reasons": ["ok"], "scopes": request["scopes"], "ttl_seconds": request["ttl_seconds"]}


def _agent(spiffe_id: str) -> Identity:
    return Identity(SpiffeId(spiffe_id), "jwt_svid")


def _service(opa: FakeOpa, **config: Any) -> TaskService:
    return TaskService(TasksConfig(**config), MemoryStore(), KeySet(None, "ES256", 10), opa, ["demo.local"])


async def test_an_open_grant_is_what_the_policy_granted_and_binds_the_agent() -> None:
    opa = FakeOpa(_grant_requested)
    service = _service(opa, max_ttl_seconds=300)
    grant = await service.open(_agent(WRITER), OPEN)
    assert (grant.task.sub, grant.task.scopes, grant.task.depth) == (WRITER, ["docs:read", "tickets:write"], 0)
    assert grant.task.expires_at - grant.task.issued_at == 300, "the sidecar's cap on the policy's ttl"
    [query] = opa.queries
    assert query.path == "agent/tasks/decision"
    assert query.input["operation"] == "open" and query.input["agent"]["spiffe_id"] == WRITER
    assert (await service.verify_presented(grant.token, _agent(WRITER))).id == grant.task.id
    with pytest.raises(TaskError) as other:
        await service.verify_presented(grant.token, _agent(READER))
    assert HTTP_STATUS[other.value.kind] == 403 and "another agent" in other.value.reason
    with pytest.raises(TaskError) as forged:
        await service.verify_presented(grant.token[:-4] + "AAAA", _agent(WRITER))
    assert HTTP_STATUS[forged.value.kind] == 401


@pytest.mark.parametrize(
    ("answer", "status"),
    [
        ({"verdict": "deny", "reasons": ["not during a freeze"]}, 403),
        (unreachable(), 503),
        ({"verdict": "allow", "reasons": [], "scopes": ["admin"], "ttl_seconds": 60}, 503),
        ({"verdict": "allow", "reasons": [], "scopes": ["docs:read"], "ttl_seconds": 99_999}, 503),
        ({"verdict": "allow"}, 503),
        (True, 503),
    ],
    ids=["deny", "opa-down", "unrequested-scope", "ttl-beyond-request", "no-reasons", "boolean"],
)
async def test_no_grant_unless_the_policy_granted_a_subset_of_the_request(answer: Any, status: int) -> None:
    service = _service(FakeOpa(always(answer)))
    with pytest.raises(TaskError) as refused:
        await service.open(_agent(WRITER), OPEN)
    assert HTTP_STATUS[refused.value.kind] == status
    if status == 403:
        assert refused.value.reason == "not during a freeze"


async def test_delegation_narrows_records_the_chain_and_never_outlives_the_parent() -> None:
    opa = FakeOpa(_grant_requested)
    service = _service(opa)
    parent = (await service.open(_agent(WRITER), {**OPEN, "ttl_seconds": 120})).task
    body = {"to": ASSISTANT, "scopes": ["tickets:write"], "ttl_seconds": 3000}
    child = (await service.delegate(_agent(WRITER), parent.id, body)).task
    assert (child.sub, child.scopes, child.chain, child.depth) == (ASSISTANT, ["tickets:write"], [WRITER], 1)
    assert (child.parent_id, child.root_id, child.purpose) == (parent.id, parent.id, "triage")
    assert child.expires_at <= parent.expires_at
    assert opa.inputs[-1]["delegation"] == {"chain": [WRITER], "depth": 1}
    asked = len(opa.queries)
    with pytest.raises(TaskError) as widened:
        await service.delegate(_agent(ASSISTANT), child.id, {"to": READER, "scopes": ["docs:read"], "ttl_seconds": 60})
    assert HTTP_STATUS[widened.value.kind] == 403 and "only narrow" in widened.value.reason
    assert len(opa.queries) == asked, "refused before the policy is asked"


async def test_delegation_cannot_form_a_cycle_or_pass_the_depth_limit() -> None:
    service = _service(FakeOpa(_grant_requested), max_delegation_depth=1)
    root = (await service.open(_agent(WRITER), OPEN)).task
    to = {"scopes": ["tickets:write"], "ttl_seconds": 60}
    with pytest.raises(TaskError, match="cycle"):
        await service.delegate(_agent(WRITER), root.id, {**to, "to": WRITER})
    child = (await service.delegate(_agent(WRITER), root.id, {**to, "to": ASSISTANT})).task
    with pytest.raises(TaskError, match="cycle"):
        await service.delegate(_agent(ASSISTANT), child.id, {**to, "to": WRITER})
    with pytest.raises(TaskError, match="depth 2 exceeds the limit 1"):
        await service.delegate(_agent(ASSISTANT), child.id, {**to, "to": READER})


async def test_only_the_holder_delegates_and_only_to_a_trusted_domain() -> None:
    service = _service(FakeOpa(_grant_requested))
    root = (await service.open(_agent(WRITER), OPEN)).task
    child = (
        await service.delegate(_agent(WRITER), root.id, {"to": ASSISTANT, "scopes": ["docs:read"], "ttl_seconds": 60})
    ).task
    with pytest.raises(TaskError) as not_holder:  # the delegator may see the child, not delegate it
        await service.delegate(_agent(WRITER), child.id, {"to": READER, "scopes": ["docs:read"], "ttl_seconds": 60})
    assert HTTP_STATUS[not_holder.value.kind] == 404
    assert (await service.get(_agent(WRITER), child.id)).id == child.id
    with pytest.raises(TaskError) as foreign:
        await service.delegate(
            _agent(WRITER), root.id, {"to": "spiffe://evil.example/a", "scopes": ["docs:read"], "ttl_seconds": 60}
        )
    assert HTTP_STATUS[foreign.value.kind] == 403 and "evil.example" in foreign.value.reason


async def test_ending_a_task_revokes_everything_delegated_from_it() -> None:
    service = _service(FakeOpa(_grant_requested))
    root = await service.open(_agent(WRITER), OPEN)
    child = await service.delegate(
        _agent(WRITER), root.task.id, {"to": ASSISTANT, "scopes": ["docs:read"], "ttl_seconds": 60}
    )
    grandchild = await service.delegate(
        _agent(ASSISTANT), child.task.id, {"to": READER, "scopes": ["docs:read"], "ttl_seconds": 60}
    )
    ended = await service.end(_agent(WRITER), root.task.id)
    assert set(ended) == {root.task.id, child.task.id, grandchild.task.id}
    with pytest.raises(TaskError, match="was completed"):
        await service.verify_presented(root.token, _agent(WRITER))
    for grant, holder in ((child, ASSISTANT), (grandchild, READER)):
        with pytest.raises(TaskError) as revoked:
            await service.verify_presented(grant.token, _agent(holder))
        assert HTTP_STATUS[revoked.value.kind] == 403
        assert f"was revoked: ancestor task {root.task.id} ended" in revoked.value.reason
    with pytest.raises(TaskError, match="no longer active"):
        await service.delegate(
            _agent(ASSISTANT), child.task.id, {"to": READER, "scopes": ["docs:read"], "ttl_seconds": 60}
        )


async def test_an_expired_grant_is_refused_and_cannot_be_delegated(monkeypatch: pytest.MonkeyPatch) -> None:
    service = _service(FakeOpa(_grant_requested))
    grant = await service.open(_agent(WRITER), {**OPEN, "ttl_seconds": 60})
    later = time.time() + 61
    monkeypatch.setattr(time, "time", lambda: later)
    with pytest.raises(TaskError) as expired:
        await service.verify_presented(grant.token, _agent(WRITER))
    assert HTTP_STATUS[expired.value.kind] == 403 and "expired" in expired.value.reason
    with pytest.raises(TaskError, match="no longer active"):
        await service.delegate(
            _agent(WRITER), grant.task.id, {"to": ASSISTANT, "scopes": ["docs:read"], "ttl_seconds": 10}
        )
