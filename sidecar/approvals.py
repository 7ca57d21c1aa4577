"""Step-up approvals: a human (or an approval service) approves one exact request.

On a ``step_up`` of kind ``approval`` the sidecar records a pending approval bound to the
agent, its task and a fingerprint of the request. Approvers list and decide pending approvals;
who may decide what is an OPA decision (``approvals.decision_path``), and neither the agent nor
anyone in its delegation chain ever may. The agent retries the identical request with the
approval id; the sidecar checks binding and fingerprint and consumes it atomically (single use).
"""

from __future__ import annotations

import copy
import time
import uuid
from typing import Any

from sidecar.config import ApprovalsConfig
from sidecar.decision import StepUp
from sidecar.identity.approvers import Approver
from sidecar.opa import OpaClient, OpaError
from sidecar.state import ApprovalConflict, ApprovalRecord, Store
from sidecar.webhook import Webhook

REDACTED = "[redacted]"
MAX_SUMMARY_STRING = 200


class ApprovalError(Exception):
    """An approval cannot be used or decided; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class ApprovalService:
    def __init__(self, config: ApprovalsConfig, store: Store, opa: OpaClient, webhook: Webhook | None) -> None:
        self._config = config
        self._store = store
        self._opa = opa
        self._webhook = webhook

    # -- the check path ----------------------------------------------------------------------
    async def request(
        self,
        step_up: StepUp,
        *,
        agent: str,
        task_id: str | None,
        chain: tuple[str, ...],
        fingerprint: str,
        decision_id: str,
        reasons: list[str],
        summary: dict[str, Any],
    ) -> ApprovalRecord:
        """Record a pending approval for this exact request."""
        now = int(time.time())
        ttl = min(step_up.ttl_seconds or self._config.default_ttl_seconds, self._config.max_ttl_seconds)
        approval = ApprovalRecord(
            id=str(uuid.uuid4()),
            agent=agent,
            task_id=task_id,
            fingerprint=fingerprint,
            created_at=now,
            expires_at=now + ttl,
            decision_id=decision_id,
            reasons=reasons,
            summary=redact(summary, step_up.redact),
            delegation_chain=list(chain),
            data_class=step_up.data_class or _as_str(step_up.approvers.get("data_class")),
            approvers=step_up.approvers,
        )
        await self._store.create_approval(approval)
        if self._webhook is not None:
            self._webhook.notify("approval.pending", self.view(approval))
        return approval

    async def redeem(self, approval_id: str, *, agent: str, task_id: str | None, fingerprint: str) -> ApprovalRecord:
        """Check an approval presented on a retry and consume it (single use)."""
        approval = await self._store.get_approval(approval_id)
        if approval is None:
            raise ApprovalError(403, f"approval {approval_id} is unknown or has expired")
        if approval.agent != agent:
            raise ApprovalError(403, f"approval {approval_id} was requested by another agent")
        if approval.task_id != task_id:
            raise ApprovalError(403, f"approval {approval_id} was requested under another task")
        if approval.fingerprint != fingerprint:
            raise ApprovalError(403, f"approval {approval_id} was granted for a different request")
        if approval.expires_at <= time.time():
            raise ApprovalError(403, f"approval {approval_id} has expired")
        if approval.status == "pending":
            raise ApprovalError(403, f"approval {approval_id} is still pending")
        if approval.status == "rejected":
            raise ApprovalError(403, f"approval {approval_id} was rejected: {approval.decision_reason or 'no reason'}")
        if approval.status == "consumed":
            raise ApprovalError(403, f"approval {approval_id} was already used")
        try:
            return await self._store.consume_approval(approval_id, int(time.time()))
        except ApprovalConflict:
            raise ApprovalError(403, f"approval {approval_id} was already used") from None

    async def restore(self, approval_id: str) -> None:
        """Give a consumed approval back: the call it was consumed for did not go through."""
        await self._store.restore_approval(approval_id)

    # -- the approver API ------------------------------------------------------------------
    async def pending_for(self, approver: Approver) -> list[ApprovalRecord]:
        pending = await self._store.list_approvals("pending")
        return [a for a in pending if await self._allowed(approver, a, "approve") is None]

    async def get(
        self, approval_id: str, *, agent: str | None = None, approver: Approver | None = None
    ) -> ApprovalRecord:
        """The approval, to its agent or to an approver the policy lets decide it."""
        approval = await self._store.get_approval(approval_id)
        if approval is not None and agent is not None and approval.agent == agent:
            return approval
        if approval is not None and approver is not None and await self._allowed(approver, approval, "approve") is None:
            return approval
        raise ApprovalError(404, f"no approval {approval_id} for this caller")

    async def decide(self, approver: Approver, approval_id: str, approve: bool, reason: str | None) -> ApprovalRecord:
        approval = await self._store.get_approval(approval_id)
        if approval is None:
            raise ApprovalError(404, f"no approval {approval_id}")
        operation = "approve" if approve else "reject"
        denied = await self._allowed(approver, approval, operation)
        if denied is not None:
            raise ApprovalError(403, denied)
        try:
            return await self._store.decide_approval(
                approval_id,
                "approved" if approve else "rejected",
                approver.as_input() | {"claims": None},
                reason,
                int(time.time()),
            )
        except ApprovalConflict:
            raise ApprovalError(409, f"approval {approval_id} is no longer pending (decided or expired)") from None

    @staticmethod
    def view(approval: ApprovalRecord) -> dict[str, Any]:
        """What the API shows (the fingerprint binds; it reveals nothing)."""
        data = approval.to_json()
        if data["approver"]:
            data["approver"] = {"kind": data["approver"]["kind"], "id": data["approver"]["id"]}
        if data["status"] == "pending" and approval.expires_at <= time.time():
            data["status"] = "expired"
        return data

    def status_url(self, approval_id: str) -> str:
        return f"{self._config.public_url.rstrip('/')}/v1/approvals/{approval_id}"

    async def _allowed(self, approver: Approver, approval: ApprovalRecord, operation: str) -> str | None:
        """None when ``approver`` may decide ``approval``, else the reason why not."""
        if approver.kind == "spiffe" and (approver.id == approval.agent or approver.id in approval.delegation_chain):
            return f"{approver.id} may not approve a request made by itself or by its delegation chain"
        input_doc = {
            "operation": operation,
            "approver": approver.as_input(),
            "approval": {
                "id": approval.id,
                "agent": approval.agent,
                "task_id": approval.task_id,
                "delegation_chain": approval.delegation_chain,
                "data_class": approval.data_class,
                "approvers": approval.approvers,
                "reasons": approval.reasons,
                "summary": approval.summary,
                "expires_at": approval.expires_at,
            },
        }
        try:
            result = (await self._opa.decide(input_doc, self._config.decision_path)).result
        except OpaError as exc:
            raise ApprovalError(503, exc.reason) from exc
        if not isinstance(result, dict) or result.get("verdict") not in ("allow", "deny"):
            raise ApprovalError(503, "approver policy answer is not a {verdict, reasons} object")
        if result["verdict"] == "allow":
            return None
        reasons = result.get("reasons")
        return "; ".join(r for r in reasons if isinstance(r, str)) if isinstance(reasons, list) else "denied by policy"


def redact(summary: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    """Hide what the policy marked (argument names, or JSON pointers into the body) and trim long strings."""
    result = copy.deepcopy(summary)
    for name in fields:
        if name.startswith("/"):
            _redact_pointer(result.get("body"), [p.replace("~1", "/").replace("~0", "~") for p in name[1:].split("/")])
        elif isinstance(result.get("arguments"), dict) and name in result["arguments"]:
            result["arguments"][name] = REDACTED
    trimmed: dict[str, Any] = _trim(result)
    return trimmed


def _redact_pointer(node: Any, parts: list[str]) -> None:
    for part in parts[:-1]:
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return
    last = parts[-1]
    if isinstance(node, dict) and last in node:
        node[last] = REDACTED
    elif isinstance(node, list) and last.isdigit() and int(last) < len(node):
        node[int(last)] = REDACTED


def _trim(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_SUMMARY_STRING:
        return value[:MAX_SUMMARY_STRING] + "…"
    if isinstance(value, dict):
        return {k: _trim(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_trim(v) for v in value[:50]]
    return value


def _as_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None
