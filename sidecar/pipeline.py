"""The request path, top to bottom.

read body → identify → task grant → declared intent → approval on a retry → reserve the call
in its session → ask OPA → read the decision → commit the session, mint the upstream
credential or record a pending approval → answer in Envoy's terms → log and count.
Every failure ends in a deny or a 503; a reservation or a consumed approval is always
released when the call does not go through.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

from sidecar import metrics, outcome
from sidecar.approvals import ApprovalError, ApprovalService, approval_view, request_summary
from sidecar.body import ParsedBody, parse_body
from sidecar.credentials import CredentialMinter, RequestBinding
from sidecar.decision import DecisionError, Verdict, to_verdict
from sidecar.errors import Kind, SidecarError
from sidecar.fingerprint import request_fingerprint
from sidecar.identity import Identity, IdentityError, IdentityResolver
from sidecar.input import CREDENTIAL_HEADERS, READ_ONLY_METHODS, build_input, split_target
from sidecar.intent import declared_intent
from sidecar.logs import DecisionRecord
from sidecar.mcp import BodyError
from sidecar.opa import OpaClient, OpaError
from sidecar.request import CheckRequest, request_line_problem
from sidecar.sessions import Reservation, SessionTracker
from sidecar.shadow import Shadow
from sidecar.state import ApprovalRecord, StoreError, TaskRecord
from sidecar.tasks import TaskError, TaskService, task_input

log = logging.getLogger(__name__)


@dataclass
class Call:
    """What the pipeline learned about one call, passed between its later steps."""

    request: CheckRequest
    record: DecisionRecord
    body: ParsedBody
    rpc: outcome.RpcContext | None
    identity: Identity | None = None
    task: TaskRecord | None = None
    chain: tuple[str, ...] = ()
    intent: dict[str, Any] | None = None
    approval: ApprovalRecord | None = None

    @property
    def fingerprint(self) -> str | None:
        """What an approval binds to; None when Envoy sent only part of the body (nothing binds it)."""
        if self.request.body_truncated:
            return None
        request = self.request
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


class Pipeline:
    """Decides one check request. Framework-free: takes a CheckRequest, returns a WireResponse."""

    def __init__(
        self,
        resolver: IdentityResolver,
        opa: OpaClient,
        *,
        allow_partial_body: bool,
        body_buffer_limit: int,
        strip_jwt_svid: bool,
        hidden_headers: frozenset[str],
        tasks: TaskService | None = None,
        task_header: str = "x-agent-task-token",
        minter: CredentialMinter | None = None,
        sessions: SessionTracker | None = None,
        approvals: ApprovalService | None = None,
        approval_header: str = "x-agent-approval-id",
        log_decisions: bool = True,
        shadow: Shadow | None = None,
    ) -> None:
        self._resolver = resolver
        self._opa = opa
        self._allow_partial_body = allow_partial_body
        self._body_buffer_limit = body_buffer_limit
        self._strip_jwt_svid = strip_jwt_svid
        self._hidden_headers = hidden_headers
        self._tasks = tasks
        self._task_header = task_header
        self._minter = minter
        self._sessions = sessions
        self._approvals = approvals
        self._approval_header = approval_header
        self._log_decisions = log_decisions
        self._shadow = shadow

    async def check(self, request: CheckRequest) -> outcome.Decision:
        started = time.perf_counter()
        record = DecisionRecord(
            decision_id=str(uuid.uuid4()),
            method=request.method,
            host=request.headers.get("host", ""),
            path=split_target(request.path)[0],
            request_id=request.headers.get("x-request-id", ""),
        )
        try:
            response = await self._decide(request, record)
        except Exception:  # a bug must fail closed, never reach Envoy as a 500 without a record
            log.exception("check failed", extra={"decision_id": record.decision_id})
            response = self._unavailable(record, "internal error in the authorization sidecar", None)
        record.status = response.status
        record.latency_ms = round((time.perf_counter() - started) * 1000, 3)
        metrics.DECISIONS.labels(record.verdict, record.stage).inc()
        metrics.DECISION_SECONDS.observe(time.perf_counter() - started)
        if self._log_decisions:
            record.emit()
        return response

    async def _decide(self, request: CheckRequest, record: DecisionRecord) -> outcome.Decision:
        # 1. The request line and body: parsed once, never judged when Envoy sent only part of it.
        record.stage = "body"
        problem = request_line_problem(request.method, request.path)
        if problem is not None:
            return self._reject(record, Kind.INVALID, problem, None)
        if len(request.body) >= self._body_buffer_limit and not request.body_truncated:
            request = replace(request, at_buffer_limit=True)
        if request.body_truncated and not self._allow_partial_body:
            return self._reject(record, Kind.TOO_LARGE, "request body is larger than the inspection limit", None)
        if "," in request.headers.get("host", ""):  # RFC 9112: exactly one Host; routing and judging must agree
            return self._reject(record, Kind.INVALID, "the request has more than one Host header", None)
        try:
            body = parse_body(request.body, request.headers, request.body_truncated)
        except BodyError as exc:
            return self._reject(record, Kind.INVALID, f"request body rejected: {exc}", None)
        call = Call(request, record, body, outcome.RpcContext(body.mcp.id) if body.mcp else None)
        if body.mcp is not None:
            record.mcp_method, record.tool = body.mcp.method, body.mcp.name

        # 2. Who is calling.
        record.stage = "identity"
        try:
            call.identity = self._resolver.resolve(request.headers, request.peer_principal)
        except IdentityError as exc:
            return self._unauthenticated(call, exc.reason, exc.invalid_token)
        if call.identity is not None:
            record.agent, record.identity_source = str(call.identity.spiffe_id), call.identity.source

        # 3. The task grant the call is made under, if any: verified, active, bound to this agent.
        record.stage = "task"
        token = request.headers.get(self._task_header)
        if token is not None:
            if self._tasks is None:
                return self._reject(
                    record, Kind.UNAUTHENTICATED, "task grants are not enabled on this sidecar", call.rpc
                )
            try:
                call.task = await self._tasks.verify_presented(token, call.identity)
            except TaskError as exc:
                record.task = exc.task_id  # a refused but genuine token: the audit shows it under its task
                if exc.kind is Kind.UNAUTHENTICATED:
                    return self._unauthenticated(call, exc.reason, True)
                return self._reject(record, exc.kind, exc.reason, call.rpc)
            except StoreError as exc:
                return self._unavailable(record, str(exc), call.rpc)
            record.task = call.task.id
        call.chain = tuple(call.task.chain) if call.task else (call.identity.delegation_chain if call.identity else ())

        # 4. What the agent says it is doing (it can only restrict).
        record.stage = "intent"
        try:
            call.intent = declared_intent(request.headers, body.mcp)
        except BodyError as exc:
            return self._reject(record, Kind.INVALID, f"declared intent rejected: {exc}", call.rpc)

        # 5. On a retry after a step-up: the approval must match this agent, task and exact request.
        approval_id = request.headers.get(self._approval_header)
        if approval_id is not None:
            record.stage = "approval"
            rejected = await self._redeem(call, approval_id)
            if rejected is not None:
                return rejected

        # 6. Reserve the call in its session, ask the policy, apply what it decided.
        try:
            return await self._governed(call)
        finally:
            if call.approval is not None and record.verdict != "allow":
                await self._restore(call.approval)

    async def _governed(self, call: Call) -> outcome.Decision:
        record = call.record
        record.stage = "session"
        reservation: Reservation | None = None
        if self._sessions is not None:
            try:
                reservation = await self._sessions.reserve(
                    call.identity, call.task, call.request.headers, maybe_write=not call.read_only
                )
            except StoreError as exc:
                return self._unavailable(record, str(exc), call.rpc)
        try:
            return await self._ask_policy(call, reservation)
        finally:
            if reservation is not None and not reservation.done:
                try:
                    await reservation.release()
                except StoreError:
                    log.warning("could not release a session reservation; it expires on its own")

    async def _ask_policy(self, call: Call, reservation: Reservation | None) -> outcome.Decision:
        record = call.record
        record.stage = "opa"
        input_doc = build_input(
            call.request,
            identity=call.identity,
            body=call.body,
            intent=call.intent,
            task=task_input(call.task) if call.task else None,
            delegation_chain=call.chain,
            session=reservation.view.to_json() if reservation else None,
            agent_history=reservation.history.to_json() if reservation else None,
            approval=_approval_input(call.approval),
            approval_view=approval_view(call.summary) if self._approvals is not None and call.identity else None,
            hidden_headers=self._hidden_headers,
            credential_headers=CREDENTIAL_HEADERS | {self._task_header},
        )
        try:
            answer = await self._opa.decide(input_doc)
        except OpaError as exc:
            metrics.OPA_ERRORS.labels(exc.code).inc()
            return self._unavailable(record, exc.reason, call.rpc)
        metrics.OPA_SECONDS.observe(answer.seconds)
        record.opa_ms = round(answer.seconds * 1000, 3)
        if answer.decision_id:
            record.decision_id = answer.decision_id

        record.stage = "decision"
        try:
            verdict = to_verdict(answer.result)
        except DecisionError as exc:
            metrics.OPA_ERRORS.labels("shape").inc()
            return self._unavailable(record, f"policy answer unusable: {exc}", call.rpc)
        if self._shadow is not None:  # the candidate policy on the same input, in the background, never enforced
            self._shadow.observe(record.decision_id, input_doc, verdict)

        record.stage = "policy"
        if verdict.kind == "step_up":
            return await self._step_up(call, verdict)
        if verdict.kind == "deny":
            record.verdict, record.reasons = "deny", list(verdict.reasons)
            return outcome.deny(verdict, decision_id=record.decision_id, rpc=call.rpc)
        return await self._allow(call, verdict, reservation)

    async def _allow(self, call: Call, verdict: Verdict, reservation: Reservation | None) -> outcome.Decision:
        record = call.record
        credential = None
        if verdict.credential is not None:
            record.stage = "credential"
            if call.identity is None or self._minter is None:
                return self._unavailable(record, "policy asked for a credential that cannot be minted here", call.rpc)
            if call.request.body_truncated:  # the body hash would cover only the part Envoy buffered
                return self._reject(
                    record, Kind.TOO_LARGE, "request body is larger than a credential can be bound to", call.rpc
                )
            credential = self._minter.mint(
                verdict.credential,
                request=RequestBinding(call.request.method, call.request.path, call.request.body),
                agent=str(call.identity.spiffe_id),
                chain=call.chain,
                decision_id=record.decision_id,
                task_id=call.task.id if call.task else None,
                not_after=call.task.expires_at if call.task else None,
            )
        if reservation is not None:
            record.stage = "session"
            write = verdict.write if verdict.write is not None else not call.read_only
            entry = {
                "at": int(time.time()),
                "method": call.request.method,
                "path": record.path,
                "tool": call.body.mcp.name if call.body.mcp else None,
                "write": write,
            }
            try:
                await reservation.commit(write, list(verdict.remember), entry)
            except StoreError as exc:
                return self._unavailable(record, str(exc), call.rpc)
        record.stage = "policy"
        record.verdict, record.reasons = "allow", list(verdict.reasons)
        return outcome.allow(
            verdict,
            decision_id=record.decision_id,
            request_headers=call.request.headers,
            identity=call.identity,
            sidecar_headers=(self._task_header, self._approval_header),
            forward_jwt_svid=not self._strip_jwt_svid,
            credential=credential,
        )

    async def _step_up(self, call: Call, verdict: Verdict) -> outcome.Decision:
        record = call.record
        assert verdict.step_up is not None
        record.verdict, record.reasons = "step_up", list(verdict.reasons)
        if verdict.step_up.kind != "approval":
            return outcome.step_up(verdict, decision_id=record.decision_id, rpc=call.rpc)
        if self._approvals is None or call.identity is None:
            return outcome.step_up(verdict, decision_id=record.decision_id, rpc=call.rpc)
        record.stage = "approval"
        try:
            pending = await self._approvals.request(
                verdict.step_up,
                agent=str(call.identity.spiffe_id),
                task_id=call.task.id if call.task else None,
                chain=call.chain,
                fingerprint=call.fingerprint,
                decision_id=record.decision_id,
                reasons=list(verdict.reasons),
                summary=call.summary,
            )
        except ApprovalError as exc:  # too many pending, or a request it cannot be bound to
            return self._reject(record, exc.kind, exc.reason, call.rpc)
        except StoreError as exc:
            return self._unavailable(record, str(exc), call.rpc)
        record.approval = pending.id  # the audit trail links the step-up to its approval
        record.stage = "policy"
        return outcome.step_up(
            verdict,
            decision_id=record.decision_id,
            rpc=call.rpc,
            approval=outcome.PendingApproval(
                pending.id, pending.expires_at, self._approvals.status_url(pending.id), self._approval_header
            ),
        )

    async def _redeem(self, call: Call, approval_id: str) -> outcome.Decision | None:
        if self._approvals is None:
            return self._reject(call.record, Kind.INVALID, "approvals are not enabled on this sidecar", call.rpc)
        if call.identity is None:
            return self._unauthenticated(call, "an approval needs a verified agent identity", False)
        try:
            call.approval = await self._approvals.redeem(
                approval_id,
                agent=str(call.identity.spiffe_id),
                task_id=call.task.id if call.task else None,
                fingerprint=call.fingerprint,
            )
        except ApprovalError as exc:
            call.record.approval = _presented_id(approval_id)  # the refused retry is audited with its approval
            return self._reject(call.record, exc.kind, exc.reason, call.rpc)
        except StoreError as exc:
            return self._unavailable(call.record, str(exc), call.rpc)
        call.record.approval = call.approval.id
        return None

    async def _restore(self, approval: ApprovalRecord) -> None:
        assert self._approvals is not None
        try:
            await self._approvals.restore(approval.id)
        except StoreError:
            log.warning("could not give back approval %s after a failed call", approval.id)

    @staticmethod
    def _unauthenticated(call: Call, reason: str, invalid_token: bool) -> outcome.Decision:
        call.record.verdict, call.record.reasons = "deny", [reason]
        return outcome.unauthenticated(
            reason, decision_id=call.record.decision_id, invalid_token=invalid_token, rpc=call.rpc
        )

    @staticmethod
    def _reject(record: DecisionRecord, kind: Kind, reason: str, rpc: outcome.RpcContext | None) -> outcome.Decision:
        record.verdict, record.reasons = "deny", [reason]
        return outcome.refused(SidecarError(reason, kind=kind), decision_id=record.decision_id, rpc=rpc)

    @staticmethod
    def _unavailable(record: DecisionRecord, reason: str, rpc: outcome.RpcContext | None) -> outcome.Decision:
        record.verdict, record.reasons = "error", [reason]
        return outcome.unavailable(reason, decision_id=record.decision_id, rpc=rpc)


def _presented_id(value: str) -> str | None:
    """An approval id as the agent sent it, if it has the shape of one (never arbitrary header text)."""
    try:
        return str(uuid.UUID(value)) if len(value) == 36 else None
    except ValueError:
        return None


def _approval_input(approval: ApprovalRecord | None) -> dict[str, Any] | None:
    if approval is None:
        return None
    return {
        "id": approval.id,
        "status": "approved",
        "approver": {k: (approval.approver or {}).get(k) for k in ("kind", "id")},
        "reason": approval.decision_reason,
        "decided_at": approval.decided_at,
        "fingerprint": approval.fingerprint,
    }
