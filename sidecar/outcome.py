"""The transport-neutral decision: what one check decided and everything the wires must say.

What reaches the upstream (headers set, headers removed, a minted credential in place of the
agent's own) and what the client is told (status, headers, body, a JSON-RPC error for MCP
requests) are decided here, in one place. :mod:`sidecar.wire_http` and :mod:`sidecar.wire_grpc`
only encode a :class:`Decision`; statuses and JSON-RPC codes come from :mod:`sidecar.wire_status`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from sidecar.decision import Verdict
from sidecar.errors import Kind, SidecarError
from sidecar.identity import Identity
from sidecar.logs import DecisionRecord
from sidecar.wire_status import HTTP_STATUS, JSONRPC_CHALLENGE, JSONRPC_CODE, verdict_of

DECISION_ID_HEADER = "x-authz-decision-id"
SPIFFE_ID_HEADER = "x-authz-spiffe-id"
APPROVAL_ID_HEADER = "x-authz-approval-id"
OWN_HEADER_PREFIX = "x-authz-"
JSON_CONTENT = ("content-type", "application/json")

Outcome = Literal["allow", "deny", "step_up", "error"]
Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class RpcContext:
    """Set when the request was JSON-RPC: refusals then answer with a JSON-RPC error."""

    request_id: str | int | None
    code: int | None = None  # a protocol-defined code that replaces the verdict's (MCP HeaderMismatch)


@dataclass(frozen=True)
class PluginEffect:
    """What only an opa-envoy-plugin profile answer carries, encoded as the plugin encodes it:
    headers appended (not overwritten), a deny is gRPC ``PERMISSION_DENIED`` whatever its status."""

    query_set: Headers = ()  # query parameters set on the upstream request (repeats allowed)
    query_remove: tuple[str, ...] = ()
    metadata: dict[str, Any] | None = None  # dynamic metadata (with decision_id); None: none at all
    bare: bool = False  # a plain boolean answer: only the status, no OK/denied response
    message: str = ""  # the gRPC status message (the plugin names a request_parse_error there)


@dataclass(frozen=True)
class Decision:
    """One check's answer, independent of the wire that carries it.

    ``upstream_headers`` are set on the upstream request and ``remove_headers`` dropped from it
    (allow only); ``client_headers`` go to the client with the refusal, or beside the upstream
    headers on allow; ``status`` is the HTTP status of the answer (200 only on allow)."""

    verdict: Outcome
    status: int
    decision_id: str
    reasons: tuple[str, ...]
    upstream_headers: Headers = ()
    client_headers: Headers = ()
    remove_headers: tuple[str, ...] = ()
    body: bytes = b""
    rpc: RpcContext | None = None
    record: DecisionRecord | None = None
    plugin: PluginEffect | None = None  # set in the opa-envoy-plugin profile

    @property
    def allowed(self) -> bool:
        return self.verdict == "allow"

    @property
    def failed(self) -> bool:
        """No decision could be made: every wire fails closed."""
        return self.verdict == "error"


@dataclass(frozen=True)
class PendingApproval:
    """The approval recorded for a step-up: where to poll it and how to retry."""

    id: str
    expires_at: int
    status_url: str
    retry_header: str


def allow(
    verdict: Verdict,
    *,
    decision_id: str,
    request_headers: dict[str, str],
    identity: Identity | None,
    sidecar_headers: tuple[str, ...] = (),
    forward_jwt_svid: bool = False,
    credential: str | None = None,
) -> Decision:
    """200: what the upstream gets, decided here whole.

    Headers addressed to the sidecar (``sidecar_headers``: the task grant, the approval id) never
    travel upstream. The caller's own ``Authorization`` (a JWT-SVID, or Basic/an API key beside an
    mTLS identity) never does either, unless it carried the verified JWT-SVID and the operator
    forwards those (``forward_jwt_svid``) or the policy sets its own; a minted ``credential``
    replaces it. Request headers named like the sidecar's own (``x-authz-*``) are dropped unless
    the sidecar sets them, so an agent cannot spoof them."""
    upstream = {**verdict.upstream_headers, DECISION_ID_HEADER: decision_id}
    if credential:
        upstream["authorization"] = f"Bearer {credential}"
    if identity is not None:
        upstream[SPIFFE_ID_HEADER] = str(identity.spiffe_id)
    strip = list(sidecar_headers)
    keeps_own = forward_jwt_svid and identity is not None and identity.source == "jwt_svid"
    policy_sets = "authorization" in verdict.upstream_headers
    if "authorization" in request_headers and not keeps_own and not policy_sets and not credential:
        strip.append("authorization")
    spoofed = [n for n in request_headers if n.startswith(OWN_HEADER_PREFIX) and n not in upstream]
    return Decision(
        "allow",
        200,
        decision_id,
        verdict.reasons,
        upstream_headers=tuple(upstream.items()),
        client_headers=tuple(verdict.response_headers.items()),
        remove_headers=tuple(dict.fromkeys([*verdict.remove_headers, *strip, *spoofed])),
    )


def deny(verdict: Verdict, *, decision_id: str, rpc: RpcContext | None) -> Decision:
    """403 (or the policy's status) with ``{verdict, reasons, decision_id}``, or the policy's own body."""
    status = verdict.status or HTTP_STATUS[Kind.FORBIDDEN]
    headers = [*verdict.response_headers.items(), (DECISION_ID_HEADER, decision_id)]
    if verdict.body is not None and rpc is None:
        return Decision(
            "deny", status, decision_id, verdict.reasons, client_headers=tuple(headers), body=verdict.body.encode()
        )
    return _json_answer("deny", status, headers, _summary(verdict, decision_id), rpc, JSONRPC_CODE["deny"])


def step_up(
    verdict: Verdict, *, decision_id: str, rpc: RpcContext | None, approval: PendingApproval | None = None
) -> Decision:
    """401: an RFC 9470 challenge for ``acr``; for ``approval`` the pending approval to wait for."""
    details = verdict.step_up
    if details is None:  # to_verdict never builds one, but an unreadable step-up must not allow
        return unavailable("policy asked for a step-up without details", decision_id=decision_id, rpc=rpc)
    summary = _summary(verdict, decision_id)
    headers = [*verdict.response_headers.items(), (DECISION_ID_HEADER, decision_id)]
    if details.kind == "acr":
        challenge = [
            'Bearer error="insufficient_user_authentication"',
            f'error_description="{quote(details.reason or "stronger authentication is required")}"',
            f'acr_values="{quote(" ".join(details.acr_values))}"',
        ]
        if details.max_age is not None:
            challenge.append(f"max_age={details.max_age}")
        headers.append(("www-authenticate", ", ".join(challenge)))
        summary["step_up"] = {"kind": "acr", "acr_values": list(details.acr_values), "max_age": details.max_age}
    else:
        summary["step_up"] = {
            "kind": "approval",
            "status": "pending" if approval else "approval_required",
            "reason": details.reason,
            "ttl_seconds": details.ttl_seconds,
            "approvers": details.approvers,
        }
        if approval is not None:
            summary["step_up"].update(
                {
                    "approval_id": approval.id,
                    "expires_at": approval.expires_at,
                    "status_url": approval.status_url,
                    "retry_with_header": approval.retry_header,
                }
            )
            headers.append((APPROVAL_ID_HEADER, approval.id))
    status = HTTP_STATUS[Kind.UNAUTHENTICATED]
    return _json_answer("step_up", status, headers, summary, rpc, JSONRPC_CODE["step_up"])


def unauthenticated(reason: str, *, decision_id: str, invalid_token: bool, rpc: RpcContext | None) -> Decision:
    """401 for a missing or invalid identity (RFC 6750 challenge)."""
    challenge = 'Bearer realm="authz-sidecar"'
    if invalid_token:
        challenge += f', error="invalid_token", error_description="{quote(reason)}"'
    headers = [("www-authenticate", challenge), (DECISION_ID_HEADER, decision_id)]
    body = {"verdict": "deny", "reasons": [reason], "decision_id": decision_id}
    return _json_answer("deny", HTTP_STATUS[Kind.UNAUTHENTICATED], headers, body, rpc, JSONRPC_CHALLENGE)


def refused(error: SidecarError, *, decision_id: str, rpc: RpcContext | None, reason: str | None = None) -> Decision:
    """A refusal decided without the policy's verdict: a deny with the status of the error's
    kind, or a 503 when no decision could be made. ``reason`` overrides the error's own."""
    reason = reason or error.reason
    if verdict_of(error.kind) == "error":
        return unavailable(reason, decision_id=decision_id, rpc=rpc)
    body = {"verdict": "deny", "reasons": [reason], "decision_id": decision_id}
    status = HTTP_STATUS[error.kind]
    return _json_answer("deny", status, [(DECISION_ID_HEADER, decision_id)], body, rpc, JSONRPC_CODE["deny"])


def unavailable(reason: str, *, decision_id: str, rpc: RpcContext | None) -> Decision:
    """503: no decision could be made (every wire fails closed)."""
    body = {"verdict": "error", "reasons": [reason], "decision_id": decision_id}
    status = HTTP_STATUS[Kind.UNAVAILABLE]
    return _json_answer("error", status, [(DECISION_ID_HEADER, decision_id)], body, rpc, JSONRPC_CODE["error"])


def _summary(verdict: Verdict, decision_id: str) -> dict[str, Any]:
    return {"verdict": verdict.kind, "reasons": list(verdict.reasons), "decision_id": decision_id}


def _json_answer(
    outcome: Outcome,
    status: int,
    headers: list[tuple[str, str]],
    summary: dict[str, Any],
    rpc: RpcContext | None,
    rpc_code: int,
) -> Decision:
    document: dict[str, Any] = summary
    if rpc is not None:
        document = {
            "jsonrpc": "2.0",
            "id": rpc.request_id,
            "error": {
                "code": rpc_code if rpc.code is None else rpc.code,
                "message": "; ".join(summary["reasons"]),
                "data": summary,
            },
        }
    body = json.dumps(document, separators=(",", ":")).encode()
    reasons = tuple(summary["reasons"])
    return Decision(
        outcome, status, summary["decision_id"], reasons, client_headers=(*headers, JSON_CONTENT), body=body, rpc=rpc
    )


def quote(text: str) -> str:
    """Make text safe inside a quoted-string header parameter."""
    cleaned = "".join(c if c.isprintable() and c not in '"\\' else " " for c in text)
    return cleaned[:300]
