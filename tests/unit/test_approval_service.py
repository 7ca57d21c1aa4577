"""The approval service on the memory store and the fake OPA: an approval is bound to one agent,
task and request, used exactly once, given back when its call did not go through, and decided only
by whom the approver policy allows (never the agent or its delegation chain)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from sidecar.approvals import ApprovalError, ApprovalService
from sidecar.config import ApprovalsConfig
from sidecar.decision import StepUp
from sidecar.identity.approvers import Approver
from sidecar.opa_fake import FakeOpa, Query, always, unreachable
from sidecar.state import ApprovalRecord
from sidecar.state.memory import MemoryStore
from sidecar.wire_status import HTTP_STATUS

WRITER = "spiffe://demo.local/agent/writer"
DELEGATOR = "spiffe://demo.local/agent/lead"
ALICE = Approver("oidc", "https://idp.demo.local#alice", {"groups": ["security-approvers"]})
STEP_UP = StepUp("approval", ttl_seconds=300)
ALLOW_APPROVER = {"verdict": "allow", "reasons": []}


def _service(opa: FakeOpa | None = None) -> ApprovalService:
    return ApprovalService(ApprovalsConfig(), MemoryStore(), opa or FakeOpa(always(ALLOW_APPROVER)), None)


async def _pending(service: ApprovalService, fingerprint: str = "fp-1", task_id: str | None = "t-1") -> ApprovalRecord:
    return await service.request(
        STEP_UP,
        agent=WRITER,
        task_id=task_id,
        chain=(DELEGATOR,),
        fingerprint=fingerprint,
        decision_id="d-1",
        reasons=["a human must approve"],
        summary={"method": "DELETE", "path": "/api/records/42"},
    )


async def _approved(service: ApprovalService) -> ApprovalRecord:
    pending = await _pending(service)
    return await service.decide(ALICE, pending.id, True, "checked")


async def _redeem(service: ApprovalService, approval_id: str, **binding: Any) -> ApprovalRecord:
    bound: dict[str, Any] = {"agent": WRITER, "task_id": "t-1", "fingerprint": "fp-1", **binding}
    return await service.redeem(approval_id, **bound)


async def test_a_request_is_bound_and_asking_again_returns_the_same_approval() -> None:
    service = _service()
    first = await _pending(service)
    assert (first.agent, first.task_id, first.fingerprint, first.status) == (WRITER, "t-1", "fp-1", "pending")
    assert first.expires_at - first.created_at == 300
    assert (await _pending(service)).id == first.id
    assert (await _pending(service, fingerprint="fp-2")).id != first.id
    with pytest.raises(ApprovalError) as unbound:
        await service.request(
            STEP_UP, agent=WRITER, task_id=None, chain=(), fingerprint=None, decision_id="d", reasons=[], summary={}
        )
    assert HTTP_STATUS[unbound.value.kind] == 413


async def test_an_approval_is_used_exactly_once_and_given_back_when_its_call_failed() -> None:
    service = _service()
    pending = await _pending(service)
    with pytest.raises(ApprovalError, match="still pending"):
        await _redeem(service, pending.id)
    await service.decide(ALICE, pending.id, True, "checked")
    used = await _redeem(service, pending.id)
    assert used.status == "consumed" and used.approver is not None and used.approver["id"] == ALICE.id
    with pytest.raises(ApprovalError, match="already used"):
        await _redeem(service, pending.id)
    await service.restore(pending.id)  # the call it was used for did not go through
    assert (await _redeem(service, pending.id)).status == "consumed"
    with pytest.raises(ApprovalError, match="already used"):
        await _redeem(service, pending.id)


async def test_parallel_retries_use_an_approval_once() -> None:
    service = _service()
    approved = await _approved(service)
    results = await asyncio.gather(*(_redeem(service, approved.id) for _ in range(20)), return_exceptions=True)
    assert sum(isinstance(r, ApprovalRecord) for r in results) == 1
    assert all(
        isinstance(r, ApprovalError) and HTTP_STATUS[r.kind] == 403
        for r in results
        if not isinstance(r, ApprovalRecord)
    )


@pytest.mark.parametrize(
    ("binding", "reason"),
    [
        ({"agent": "spiffe://demo.local/agent/reader"}, "requested by another agent"),
        ({"task_id": "t-2"}, "under another task"),
        ({"task_id": None}, "under another task"),
        ({"fingerprint": "fp-other"}, "granted for a different request"),
        ({"fingerprint": None}, "only partly inspected"),
    ],
)
async def test_an_approval_is_refused_for_anything_but_its_own_request(binding: dict[str, Any], reason: str) -> None:
    service = _service()
    approved = await _approved(service)
    with pytest.raises(ApprovalError, match=reason) as refused:
        await _redeem(service, approved.id, **binding)
    assert HTTP_STATUS[refused.value.kind] == 403
    assert (await _redeem(service, approved.id)).status == "consumed", "still usable by its own request"


async def test_a_rejected_unknown_or_expired_approval_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    service = _service()
    rejected = await _pending(service, fingerprint="fp-r")
    await service.decide(ALICE, rejected.id, False, "not today")
    with pytest.raises(ApprovalError, match="was rejected: not today"):
        await _redeem(service, rejected.id, fingerprint="fp-r")
    with pytest.raises(ApprovalError, match="unknown or has expired"):
        await _redeem(service, "00000000-0000-0000-0000-000000000000")
    approved = await _approved(service)
    later = approved.expires_at + 1
    monkeypatch.setattr(time, "time", lambda: later)
    with pytest.raises(ApprovalError, match="expired"):
        await _redeem(service, approved.id)


@pytest.mark.parametrize("who", [WRITER, DELEGATOR])
async def test_neither_the_agent_nor_its_delegation_chain_may_approve(who: str) -> None:
    opa = FakeOpa(always(ALLOW_APPROVER))
    service = _service(opa)
    pending = await _pending(service)
    with pytest.raises(ApprovalError) as refused:
        await service.decide(Approver("spiffe", who), pending.id, True, "me")
    assert HTTP_STATUS[refused.value.kind] == 403 and "may not approve" in refused.value.reason
    assert opa.queries == [], "refused whatever the policy would say"


async def test_the_approver_policy_decides_who_approves_and_fails_closed() -> None:
    answers: list[Any] = [{"verdict": "deny", "reasons": ["not in security-approvers"]}, unreachable(), True]

    def policy(query: Query) -> Any:
        assert query.path == "agent/approvals/decision"
        assert query.input["approver"]["id"] == ALICE.id and query.input["approval"]["agent"] == WRITER
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    service = _service(FakeOpa(policy))
    pending = await _pending(service)
    for status in (403, 503, 503):
        with pytest.raises(ApprovalError) as refused:
            await service.decide(ALICE, pending.id, True, "ok")
        assert HTTP_STATUS[refused.value.kind] == status
    assert (await _pending(service)).status == "pending", "nothing was decided"


async def test_an_approval_is_decided_once() -> None:
    service = _service()
    approved = await _approved(service)
    with pytest.raises(ApprovalError) as again:
        await service.decide(ALICE, approved.id, False, "changed my mind")
    assert HTTP_STATUS[again.value.kind] == 409
