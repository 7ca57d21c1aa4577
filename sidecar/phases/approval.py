"""Step-up approvals on the check path: redeemed on a retry, requested on a step-up.

A redeemed approval is consumed (single use); if the call then does not go through, the
pipeline gives it back (the undo this phase registers).
"""

from __future__ import annotations

import uuid

from sidecar.approvals import ApprovalError, ApprovalService
from sidecar.call import Call
from sidecar.errors import Kind, SidecarError
from sidecar.outcome import Decision, PendingApproval
from sidecar.phases.identity import unauthenticated
from sidecar.state import StoreError


class RedeemApproval:
    """On a retry after a step-up: the approval must match this agent, task and exact request."""

    stage = "approval"

    def __init__(self, approvals: ApprovalService, header: str) -> None:
        self._approvals = approvals
        self._header = header

    async def run(self, call: Call) -> Decision | None:
        approval_id = call.request.headers.get(self._header)
        if approval_id is None:
            return None
        if call.identity is None:
            return unauthenticated(call, "an approval needs a verified agent identity", False)
        try:
            approval = await self._approvals.redeem(
                approval_id,
                agent=str(call.identity.spiffe_id),
                task_id=call.task.id if call.task else None,
                fingerprint=call.fingerprint,
            )
        except ApprovalError as exc:
            call.approval_id = _presented_id(approval_id)  # the refused retry is audited with its approval
            return call.refused(exc)
        except StoreError as exc:
            return call.refused(exc)
        call.approval, call.approval_id = approval, approval.id
        call.on_failure(
            lambda: self._approvals.restore(approval.id),
            f"could not give back approval {approval.id} after a failed call",
        )
        return None


class RefuseApprovals:
    """Approvals are off on this sidecar: a presented approval id cannot be honoured."""

    stage = "approval"

    def __init__(self, header: str) -> None:
        self._header = header

    async def run(self, call: Call) -> Decision | None:
        if self._header not in call.request.headers:
            return None
        return call.refused(SidecarError("approvals are not enabled on this sidecar", kind=Kind.INVALID))


class RequestApproval:
    """A step-up of kind ``approval`` for a verified agent: record the pending approval."""

    stage = "approval"

    def __init__(self, approvals: ApprovalService, header: str) -> None:
        self._approvals = approvals
        self._header = header

    async def run(self, call: Call) -> Decision | None:
        verdict = call.decided
        if verdict.step_up is None or verdict.step_up.kind != "approval" or call.identity is None:
            return None
        try:
            pending = await self._approvals.request(
                verdict.step_up,
                agent=str(call.identity.spiffe_id),
                task_id=call.task.id if call.task else None,
                chain=call.chain,
                fingerprint=call.fingerprint,
                decision_id=call.decision_id,
                reasons=list(verdict.reasons),
                summary=call.summary,
            )
        except (ApprovalError, StoreError) as exc:  # too many pending, a request it cannot be bound to
            return call.refused(exc)
        call.approval_id = pending.id  # the audit trail links the step-up to its approval
        call.pending = PendingApproval(
            pending.id, pending.expires_at, self._approvals.status_url(pending.id), self._header
        )
        return None


def _presented_id(value: str) -> str | None:
    """An approval id as the agent sent it, if it has the shape of one (never arbitrary header text)."""
    try:
        return str(uuid.UUID(value)) if len(value) == 36 else None
    except ValueError:
        return None
