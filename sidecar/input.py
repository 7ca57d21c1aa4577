"""Check request + verified context → the OPA input document (schema/input.schema.json).

The opa-envoy-plugin-compatible part comes first so that policies written for it run
unchanged; the agent fields sit beside it.
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import parse_qs, unquote

from sidecar.body import ParsedBody
from sidecar.identity import Identity
from sidecar.request import CheckRequest
from sidecar.state import ApprovalRecord

READ_ONLY_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Credentials never reach OPA whole: OPA masks its decision log only while a policy with a mask
# is loaded, so with no bundle (or one without system.log.mask) the input is logged as it is.
# A JWT keeps its header and claims (io.jwt.decode still reads them; the sidecar has verified it)
# but loses its signature, so nothing in the input can be replayed; other values keep only the
# auth scheme. The verified identity and task are in input.agent and input.task.
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "x-agent-task-token", "x-api-key", "cookie"})
SCHEMED_HEADERS = frozenset({"authorization", "proxy-authorization"})
WITHHELD = "[withheld]"
VERSION = {"ext_authz": "v3", "encoding": "protojson"}


def build_input(
    request: CheckRequest,
    *,
    identity: Identity | None,
    body: ParsedBody,
    intent: dict[str, Any] | None,
    task: dict[str, Any] | None = None,
    delegation_chain: tuple[str, ...] = (),
    session: dict[str, Any] | None = None,
    agent_history: dict[str, Any] | None = None,
    approval: dict[str, Any] | None = None,
    approval_view: dict[str, Any] | None = None,
    hidden_headers: frozenset[str] = frozenset(),
    credential_headers: frozenset[str] = CREDENTIAL_HEADERS,
) -> dict[str, Any]:
    """The whole input document for one check."""
    path, query = split_target(request.path)
    parsed_path = unquote(path).lstrip("/").split("/")
    headers = {
        k: (without_secret(k, v) if k in credential_headers else v)
        for k, v in request.headers.items()
        if k not in hidden_headers
    }
    host = headers.get("host") or headers.get(":authority", "")
    http: dict[str, Any] = {
        "id": headers.get("x-request-id", ""),
        "method": request.method,
        "path": request.path,
        "host": host,
        "scheme": headers.get("x-forwarded-proto", "http"),
        "protocol": "HTTP/1.1",
        "headers": headers,
        "body": "",
        "size": str(len(request.body)),
    }
    try:
        http["body"] = request.body.decode("utf-8")
    except UnicodeDecodeError:
        http["rawBody"] = base64.b64encode(request.body).decode("ascii")
    principal = str(identity.spiffe_id) if identity and identity.source == "xfcc" else ""
    return {
        "attributes": {
            "source": {"address": {}, "principal": principal},
            "destination": {"address": {}, "principal": ""},
            "metadataContext": {},
            "contextExtensions": {},
            "request": {"http": http},
        },
        "parsed_path": parsed_path,
        "parsed_query": parse_qs(query, keep_blank_values=True),
        "parsed_body": body.parsed_body,
        "truncated_body": request.body_truncated,
        "version": VERSION,
        "action": {
            "method": request.method,  # as the upstream receives it; lower case is refused (request.py)
            "host": normalise_host(host),
            "path": "/" + "/".join(parsed_path),
            "read_only": request.method in READ_ONLY_METHODS,
        },
        "agent": identity.as_input() if identity else None,
        "delegation": {"chain": list(delegation_chain), "depth": len(delegation_chain)},
        "task": task,
        "session": session,
        "agent_history": agent_history,
        "mcp": body.mcp.as_input() if body.mcp else None,
        "approval": approval,
        "approval_view": approval_view,
        "intent": intent,
    }


def approval_input(approval: ApprovalRecord | None) -> dict[str, Any] | None:
    """``input.approval``: the approval redeemed on this retry, or None."""
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


def without_secret(name: str, value: str) -> str:
    """A credential header as the policy sees it: ``Bearer h.p.`` for a JWT, else ``Basic [withheld]``."""
    scheme, rest = "", value.strip()
    if name in SCHEMED_HEADERS and " " in rest:
        scheme, _, rest = rest.partition(" ")
        rest = rest.strip()
    parts = rest.split(".")
    shown = f"{parts[0]}.{parts[1]}." if len(parts) == 3 and parts[0] and parts[1] else WITHHELD
    return f"{scheme} {shown}" if scheme else shown


def split_target(target: str) -> tuple[str, str]:
    """Path and query of an origin-form request target, exactly as Envoy routes it.

    Not ``urlsplit``: it reads a leading ``//x/y`` as the authority ``x`` and path ``/y``, and drops
    a ``#...`` fragment, so the policy would judge another path than the one the upstream gets."""
    path, _, query = target.partition("?")
    return path, query


def normalise_host(host: str) -> str:
    """Lower-case, without port and trailing dot: ``API.Example.com.:443`` → ``api.example.com``."""
    host = host.strip().lower()
    if host.startswith("["):  # IPv6 literal
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0].rstrip(".") if ":" in host else host.rstrip(".")
