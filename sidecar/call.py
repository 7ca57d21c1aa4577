"""One call on its way through the pipeline: the facts the phases have established so far.

Each phase adds what it learned (the parsed body, the verified identity, the task, the policy's
verdict, …) and registers how to undo what it did should the call not go through; the pipeline
runs those undos in one place and writes the decision record from these facts once, at the end.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from sidecar import outcome
from sidecar.approvals import request_summary
from sidecar.body import EMPTY, ParsedBody
from sidecar.decision import Verdict
from sidecar.errors import Kind, SidecarError
from sidecar.fingerprint import request_fingerprint
from sidecar.identity import Identity
from sidecar.input import READ_ONLY_METHODS, split_target
from sidecar.logs import DecisionRecord
from sidecar.request import CheckRequest
from sidecar.sessions import Reservation
from sidecar.state import ApprovalRecord, StoreError, TaskRecord
from sidecar.tracing import current_trace_id

log = logging.getLogger(__name__)

Undo = Callable[[], Awaitable[None]]


@dataclass
class Call:
    """What the pipeline knows about one call; phases contribute facts, the pipeline reads them."""

    request: CheckRequest
    decision_id: str  # ours until OPA names its own decision
    body: ParsedBody = EMPTY
    rpc: outcome.RpcContext | None = None  # set for JSON-RPC requests: refusals answer in JSON-RPC
    identity: Identity | None = None
    task: TaskRecord | None = None
    refused_task: str | None = None  # a genuine task token that was refused: audited under its task
    intent: dict[str, Any] | None = None
    approval: ApprovalRecord | None = None  # redeemed on this retry
    approval_id: str | None = None  # the approval the record links: presented, redeemed or requested
    pending: outcome.PendingApproval | None = None  # requested for this step-up
    reservation: Reservation | None = None
    input_doc: dict[str, Any] | None = None
    opa_seconds: float | None = None
    policy_answer: Any = None
    verdict: Verdict | None = None
    credential: str | None = None
    undo: list[tuple[Undo, str]] = field(default_factory=list)

    # -- what phases derive from the facts -------------------------------------------------
    @property
    def chain(self) -> tuple[str, ...]:
        """The delegation chain: the task's when the call is made under one, else the token's."""
        if self.task is not None:
            return tuple(self.task.chain)
        return self.identity.delegation_chain if self.identity else ()

    @property
    def fingerprint(self) -> str | None:
        """What an approval binds to; None when Envoy sent only part of the body (nothing binds it)."""
        request = self.request
        if request.body_truncated:
            return None
        jsonrpc = self.body.mcp is not None
        return request_fingerprint(
            request.method, request.headers.get("host", ""), request.path, request.headers, request.body, jsonrpc
        )

    @cached_property
    def summary(self) -> dict[str, Any]:
        """What an approver would see of the request (before the policy's redaction)."""
        return request_summary(self.request, self.body, self.task, self.chain)

    @property
    def read_only(self) -> bool:
        return self.request.method in READ_ONLY_METHODS

    @property
    def decided(self) -> Verdict:
        """The policy's verdict; only phases after the policy's read it."""
        if self.verdict is None:  # a phase list out of order: fail closed
            raise SidecarError("no policy verdict to act on", kind=Kind.UNAVAILABLE)
        return self.verdict

    # -- answers ---------------------------------------------------------------------------
    def refused(self, error: SidecarError, reason: str | None = None) -> outcome.Decision:
        """A refusal for ``error`` (a 503 when its kind means no decision could be made)."""
        return outcome.refused(error, decision_id=self.decision_id, rpc=self.rpc, reason=reason)

    def unavailable(self, reason: str) -> outcome.Decision:
        return outcome.unavailable(reason, decision_id=self.decision_id, rpc=self.rpc)

    # -- undo ------------------------------------------------------------------------------
    def on_failure(self, action: Undo, warning: str) -> None:
        """Run ``action`` if the call does not go through; ``warning`` is logged if it fails."""
        self.undo.append((action, warning))

    async def roll_back(self) -> None:
        """Undo, latest first, what the phases did for a call that does not go through."""
        for action, warning in reversed(self.undo):
            try:
                await action()
            except StoreError:
                log.warning(warning)

    # -- the record ------------------------------------------------------------------------
    def record(self, decision: outcome.Decision, stage: str, latency_ms: float) -> DecisionRecord:
        """The decision record, written once from the facts and the decision."""
        request, mcp = self.request, self.body.mcp
        return DecisionRecord(
            decision_id=decision.decision_id,
            request_id=request.headers.get("x-request-id", ""),
            method=request.method,
            host=request.headers.get("host", ""),
            path=split_target(request.path)[0],
            agent=str(self.identity.spiffe_id) if self.identity else None,
            identity_source=self.identity.source if self.identity else None,
            task=self.task.id if self.task else self.refused_task,
            approval=self.approval_id,
            mcp_method=mcp.method if mcp else None,
            tool=mcp.name if mcp else None,
            verdict=decision.verdict,
            status=decision.status,
            stage=stage,
            reasons=list(decision.reasons),
            latency_ms=latency_ms,
            opa_ms=round(self.opa_seconds * 1000, 3) if self.opa_seconds is not None else None,
            trace_id=current_trace_id(),  # the adapter made the check's trace context current
        )
