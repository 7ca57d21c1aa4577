"""The request path, top to bottom.

read body → identify → declared intent → build input → ask OPA → read the decision →
answer in Envoy's terms → log and count. Every failure ends in a deny or a 503.
"""

from __future__ import annotations

import logging
import time
import uuid
from urllib.parse import urlsplit

from sidecar import metrics, wire
from sidecar.body import parse_body
from sidecar.decision import DecisionError, Verdict, to_verdict
from sidecar.identity import Identity, IdentityError, IdentityResolver
from sidecar.input import build_input
from sidecar.intent import declared_intent
from sidecar.logs import DecisionRecord
from sidecar.mcp import BodyError
from sidecar.opa import OpaClient, OpaError
from sidecar.request import CheckRequest

log = logging.getLogger(__name__)


class Pipeline:
    """Decides one check request. Framework-free: takes a CheckRequest, returns a WireResponse."""

    def __init__(
        self,
        resolver: IdentityResolver,
        opa: OpaClient,
        *,
        allow_partial_body: bool,
        strip_jwt_svid: bool,
        hidden_headers: frozenset[str],
        log_decisions: bool = True,
    ) -> None:
        self._resolver = resolver
        self._opa = opa
        self._allow_partial_body = allow_partial_body
        self._strip_jwt_svid = strip_jwt_svid
        self._hidden_headers = hidden_headers
        self._log_decisions = log_decisions

    async def check(self, request: CheckRequest) -> wire.WireResponse:
        started = time.perf_counter()
        record = DecisionRecord(
            decision_id=str(uuid.uuid4()),
            method=request.method,
            host=request.headers.get("host", ""),
            path=urlsplit(request.path).path,
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

    async def _decide(self, request: CheckRequest, record: DecisionRecord) -> wire.WireResponse:
        rpc: wire.RpcContext | None = None

        # 1. The body: parsed once, never judged when Envoy sent only part of it.
        record.stage = "body"
        if request.body_truncated and not self._allow_partial_body:
            return self._reject(record, 413, "request body is larger than the inspection limit", rpc)
        try:
            body = parse_body(request.body, request.headers, request.body_truncated)
        except BodyError as exc:
            return self._reject(record, 400, f"request body rejected: {exc}", rpc)
        if body.mcp is not None:
            rpc = wire.RpcContext(body.mcp.id)
            record.mcp_method, record.tool = body.mcp.method, body.mcp.name

        # 2. Who is calling.
        record.stage = "identity"
        try:
            identity = self._resolver.resolve(request.headers)
        except IdentityError as exc:
            record.verdict, record.reasons = "deny", [exc.reason]
            return wire.unauthenticated(
                exc.reason, decision_id=record.decision_id, invalid_token=exc.invalid_token, rpc=rpc
            )
        if identity is not None:
            record.agent, record.identity_source = str(identity.spiffe_id), identity.source

        # 3. What the agent says it is doing (it can only restrict).
        record.stage = "intent"
        try:
            intent = declared_intent(request.headers, body.mcp)
        except BodyError as exc:
            return self._reject(record, 400, f"declared intent rejected: {exc}", rpc)

        # 4. Ask the policy.
        record.stage = "opa"
        input_doc = build_input(
            request,
            identity=identity,
            body=body,
            intent=intent,
            hidden_headers=self._hidden_headers,
        )
        try:
            answer = await self._opa.decide(input_doc)
        except OpaError as exc:
            metrics.OPA_ERRORS.labels(exc.kind).inc()
            return self._unavailable(record, exc.reason, rpc)
        metrics.OPA_SECONDS.observe(answer.seconds)
        record.opa_ms = round(answer.seconds * 1000, 3)
        if answer.decision_id:
            record.decision_id = answer.decision_id

        # 5. Read the decision.
        record.stage = "decision"
        try:
            verdict = to_verdict(answer.result)
        except DecisionError as exc:
            metrics.OPA_ERRORS.labels("shape").inc()
            return self._unavailable(record, f"policy answer unusable: {exc}", rpc)

        # 6. Answer in Envoy's terms.
        record.stage = "policy"
        record.verdict, record.reasons = verdict.kind, list(verdict.reasons)
        return self._respond(verdict, identity, request, record.decision_id, rpc)

    def _respond(
        self,
        verdict: Verdict,
        identity: Identity | None,
        request: CheckRequest,
        decision_id: str,
        rpc: wire.RpcContext | None,
    ) -> wire.WireResponse:
        if verdict.kind == "allow":
            # A JWT-SVID is addressed to this sidecar, not to the upstream.
            strip = ("authorization",) if identity and identity.source == "jwt_svid" and self._strip_jwt_svid else ()
            return wire.allow(
                verdict,
                decision_id=decision_id,
                spiffe_id=str(identity.spiffe_id) if identity else None,
                client_headers=request.headers,
                strip=strip,
            )
        if verdict.kind == "step_up":
            return wire.step_up(verdict, decision_id=decision_id, rpc=rpc)
        return wire.deny(verdict, decision_id=decision_id, rpc=rpc)

    @staticmethod
    def _reject(record: DecisionRecord, status: int, reason: str, rpc: wire.RpcContext | None) -> wire.WireResponse:
        record.verdict, record.reasons = "deny", [reason]
        return wire.rejected(status, reason, decision_id=record.decision_id, rpc=rpc)

    @staticmethod
    def _unavailable(record: DecisionRecord, reason: str, rpc: wire.RpcContext | None) -> wire.WireResponse:
        record.verdict, record.reasons = "error", [reason]
        return wire.unavailable(reason, decision_id=record.decision_id, rpc=rpc)
