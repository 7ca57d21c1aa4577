"""Verdict → the HTTP answer Envoy's ext_authz HTTP service mode understands.

The only module that knows Envoy's conventions: 200 is allow (headers copied upstream per
``allowed_upstream_headers``; ``x-envoy-auth-headers-to-remove`` drops request headers),
any other status is a deny forwarded to the client, 5xx is an authz-service error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sidecar.decision import Verdict

DECISION_ID_HEADER = "x-authz-decision-id"
SPIFFE_ID_HEADER = "x-authz-spiffe-id"
OWN_HEADER_PREFIX = "x-authz-"
HEADERS_TO_REMOVE = "x-envoy-auth-headers-to-remove"

# JSON-RPC error codes used for MCP requests (implementation-defined range).
RPC_UNAUTHENTICATED = -32001
RPC_DENIED = -32003
RPC_UNAVAILABLE = -32603


@dataclass(frozen=True)
class WireResponse:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


@dataclass(frozen=True)
class RpcContext:
    """Set when the request was JSON-RPC: denials then answer with a JSON-RPC error."""

    request_id: str | int | None


def allow(
    verdict: Verdict,
    *,
    decision_id: str,
    spiffe_id: str | None,
    client_headers: dict[str, str],
    strip: tuple[str, ...] = (),
    credential: str | None = None,
) -> WireResponse:
    """200 with the upstream headers; spoofable ``x-authz-*`` request headers are dropped.

    A minted ``credential`` replaces the request's ``Authorization`` header upstream."""
    upstream = {**verdict.upstream_headers, DECISION_ID_HEADER: decision_id}
    if credential:
        upstream["authorization"] = f"Bearer {credential}"
    if spiffe_id:
        upstream[SPIFFE_ID_HEADER] = spiffe_id
    spoofed = [n for n in client_headers if n.startswith(OWN_HEADER_PREFIX) and n not in upstream]
    remove = list(dict.fromkeys([*verdict.remove_headers, *strip, *spoofed]))
    headers = [*upstream.items(), *verdict.response_headers.items()]
    if remove:
        headers.append((HEADERS_TO_REMOVE, ",".join(remove)))
    return WireResponse(200, tuple(headers), b"")


def deny(verdict: Verdict, *, decision_id: str, rpc: RpcContext | None) -> WireResponse:
    """403 (or the policy's status) with ``{verdict, reasons, decision_id}``."""
    status = verdict.status or 403
    headers = [*verdict.response_headers.items(), (DECISION_ID_HEADER, decision_id)]
    if verdict.body is not None and rpc is None:
        return WireResponse(status, tuple(headers), verdict.body.encode())
    return _json_answer(status, headers, _summary(verdict, decision_id), rpc, RPC_DENIED)


@dataclass(frozen=True)
class PendingApproval:
    """The approval recorded for a step-up: where to poll it and how to retry."""

    id: str
    expires_at: int
    status_url: str
    retry_header: str


def step_up(
    verdict: Verdict, *, decision_id: str, rpc: RpcContext | None, approval: PendingApproval | None = None
) -> WireResponse:
    """401: an RFC 9470 challenge for ``acr``; for ``approval`` the pending approval to wait for."""
    assert verdict.step_up is not None
    details = verdict.step_up
    summary = _summary(verdict, decision_id)
    headers = [*verdict.response_headers.items(), (DECISION_ID_HEADER, decision_id)]
    if details.kind == "acr":
        challenge = [
            'Bearer error="insufficient_user_authentication"',
            f'error_description="{_quote(details.reason or "stronger authentication is required")}"',
            f'acr_values="{_quote(" ".join(details.acr_values))}"',
        ]
        if details.max_age is not None:
            challenge.append(f"max_age={details.max_age}")
        headers.append(("www-authenticate", ", ".join(challenge)))
        summary["step_up"] = {
            "kind": "acr",
            "acr_values": list(details.acr_values),
            "max_age": details.max_age,
        }
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
            headers.append(("x-authz-approval-id", approval.id))
    return _json_answer(401, headers, summary, rpc, RPC_UNAUTHENTICATED)


def unauthenticated(reason: str, *, decision_id: str, invalid_token: bool, rpc: RpcContext | None) -> WireResponse:
    """401 for a missing or invalid identity (RFC 6750 challenge)."""
    challenge = 'Bearer realm="authz-sidecar"'
    if invalid_token:
        challenge += f', error="invalid_token", error_description="{_quote(reason)}"'
    headers = [("www-authenticate", challenge), (DECISION_ID_HEADER, decision_id)]
    body = {"verdict": "deny", "reasons": [reason], "decision_id": decision_id}
    return _json_answer(401, headers, body, rpc, RPC_UNAUTHENTICATED)


def rejected(status: int, reason: str, *, decision_id: str, rpc: RpcContext | None) -> WireResponse:
    """A deny decided before asking the policy (unreadable or partial body): 4xx with the reason."""
    body = {"verdict": "deny", "reasons": [reason], "decision_id": decision_id}
    return _json_answer(status, [(DECISION_ID_HEADER, decision_id)], body, rpc, RPC_DENIED)


def unavailable(reason: str, *, decision_id: str, rpc: RpcContext | None) -> WireResponse:
    """503: no decision could be made. Envoy answers its ``status_on_error`` (503)."""
    body = {"verdict": "error", "reasons": [reason], "decision_id": decision_id}
    return _json_answer(503, [(DECISION_ID_HEADER, decision_id)], body, rpc, RPC_UNAVAILABLE)


def _summary(verdict: Verdict, decision_id: str) -> dict[str, Any]:
    return {"verdict": verdict.kind, "reasons": list(verdict.reasons), "decision_id": decision_id}


def _json_answer(
    status: int,
    headers: list[tuple[str, str]],
    summary: dict[str, Any],
    rpc: RpcContext | None,
    rpc_code: int,
) -> WireResponse:
    document: dict[str, Any] = summary
    if rpc is not None:
        document = {
            "jsonrpc": "2.0",
            "id": rpc.request_id,
            "error": {"code": rpc_code, "message": "; ".join(summary["reasons"]), "data": summary},
        }
    body = json.dumps(document, separators=(",", ":")).encode()
    return WireResponse(status, (*headers, ("content-type", "application/json")), body)


def _quote(text: str) -> str:
    """Make text safe inside a quoted-string header parameter."""
    cleaned = "".join(c if c.isprintable() and c not in '"\\' else " " for c in text)
    return cleaned[:300]
