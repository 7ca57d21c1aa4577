"""Every OPA input document the sidecar sends, built in this one module.

- :func:`build_input`: the check's document (``schema/input.schema.json``). The
  opa-envoy-plugin-compatible part comes first so that policies written for it run unchanged;
  the agent fields sit beside it.
- :func:`task_policy_input`: opening or delegating a task (``schema/task-input.schema.json``).
- :func:`approver_policy_input`: whether an approver may decide an approval
  (``schema/approver-input.schema.json``).

The parts they share (the agent, a task, an approver) are built by the small functions below.
"""

from __future__ import annotations

import base64
from typing import Any, Literal
from urllib.parse import parse_qs, unquote

from sidecar.authzen.model import Evaluation
from sidecar.body import ParsedBody
from sidecar.identity import Identity
from sidecar.identity.approvers import Approver
from sidecar.logs import DecisionRecord
from sidecar.mcp import McpRequest
from sidecar.request import CheckRequest
from sidecar.state import AgentHistory, ApprovalRecord, SessionView, TaskRecord

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
    task: TaskRecord | None = None,
    delegation_chain: tuple[str, ...] = (),
    session: SessionView | None = None,
    agent_history: AgentHistory | None = None,
    approval: ApprovalRecord | None = None,
    approval_view: dict[str, Any] | None = None,
    hidden_headers: frozenset[str] = frozenset(),
    credential_headers: frozenset[str] = CREDENTIAL_HEADERS,
    body_once: bool = True,
) -> dict[str, Any]:
    """The whole input document for one check.

    ``body_once`` (``opa.input_body: once``): the body appears once, in its most specific form: a
    JSON-RPC request as ``input.mcp`` (``parsed_body`` null), other JSON as ``parsed_body``, and
    only a body with neither as text in ``attributes.request.http.body``. OPA parses every byte of
    the input on every query, so a body sent three times cost three times (``input_body: all``)."""
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
        "size": len(request.body),  # a number, as the plugin sends it (Rego compares "5" > 1 as true)
    }
    parsed_body = body.parsed_body
    if body_once and body.mcp is not None:
        parsed_body = None  # the JSON-RPC request is input.mcp
    # Withheld text has no "body" key at all, so `http.body == ""` cannot read as an empty body.
    if not (body_once and (body.mcp is not None or parsed_body is not None)):
        try:
            http["body"] = request.body.decode("utf-8")
        except UnicodeDecodeError:
            http["body"] = ""
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
        "parsed_body": parsed_body,
        "truncated_body": request.body_truncated,
        "version": VERSION,
        "action": {
            "method": request.method,  # as the upstream receives it; lower case is refused (request.py)
            "host": normalise_host(host),
            "path": "/" + "/".join(parsed_path),
            "read_only": request.method in READ_ONLY_METHODS,
        },
        "agent": agent_input(identity) if identity else None,
        "delegation": delegation_input(delegation_chain),
        "task": task_input(task) if task else None,
        "session": session_input(session) if session else None,
        "agent_history": agent_history_input(agent_history) if agent_history else None,
        "mcp": mcp_input(body.mcp) if body.mcp else None,
        "approval": approval_input(approval),
        "approval_view": approval_view,
        "intent": intent,
    }


def task_policy_input(
    operation: Literal["open", "delegate"],
    *,
    caller: Identity,
    request: dict[str, Any],
    parent: TaskRecord | None,
    delegate_to: str | None,
    chain: list[str],
    open_tasks: int,
) -> dict[str, Any]:
    """The task policy's input: may ``caller`` open (or delegate) a task with these scopes and ttl?

    ``open_tasks`` counts the creator's open tasks and its other requests in flight."""
    return {
        "operation": operation,
        "agent": agent_input(caller),
        "request": request,
        "parent": task_input(parent) if parent else None,
        "delegate_to": delegate_to,
        "delegation": delegation_input(chain),
        "open_tasks": open_tasks,
    }


def approver_policy_input(operation: str, approver: Approver, approval: ApprovalRecord) -> dict[str, Any]:
    """The approver policy's input: may ``approver`` ``operation`` (approve, reject) ``approval``?"""
    return {
        "operation": operation,
        "approver": approver_input(approver),
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


# -- the parts ------------------------------------------------------------------------------
def refusal_policy_input(record: DecisionRecord) -> dict[str, Any]:
    """What OPA logs for a call the sidecar refused before asking the policy (``opa.refusals_path``)."""
    return {
        "refusal": {
            "decision_id": record.decision_id,
            "stage": record.stage,
            "status": record.status,
            "verdict": record.verdict,
            "reasons": list(record.reasons),
            "method": record.method,
            "host": record.host,
            "path": record.path,
            "request_id": record.request_id,
            "agent": record.agent,
            "task": record.task,
            "approval": record.approval,
        }
    }


def authzen_policy_input(evaluation: Evaluation) -> dict[str, Any]:
    """The AuthZEN entrypoint's input (``authzen.decision_path``): the evaluation as the PEP asked it."""
    return {
        "subject": evaluation.subject,
        "action": evaluation.action,
        "resource": evaluation.resource,
        "context": evaluation.context,
    }


def agent_input(identity: Identity) -> dict[str, Any]:
    """``input.agent``: the verified caller."""
    return {
        "spiffe_id": str(identity.spiffe_id),
        "trust_domain": identity.spiffe_id.trust_domain.name,
        "path": identity.spiffe_id.path,
        "identity_source": identity.source,
        "claims": identity.claims,
    }


def delegation_input(chain: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``input.delegation``: the actor chain, nearest first."""
    return {"chain": list(chain), "depth": len(chain)}


def task_input(task: TaskRecord) -> dict[str, Any]:
    """``input.task``: the verified task grant."""
    return {
        "id": task.id,
        "purpose": task.purpose,
        "scopes": task.scopes,
        "issued_at": task.issued_at,
        "expires_at": task.expires_at,
        "parent_id": task.parent_id,
        "root_id": task.root_id,
        "depth": task.depth,
    }


def session_input(session: SessionView) -> dict[str, Any]:
    """``input.session``: what this agent already did in this session (a fresh snapshot per call)."""
    # Shallow on purpose: the view is built for this call, and a deep copy showed in profiles.
    return {
        "key": session.key,
        "calls": session.calls,
        "writes": session.writes,
        "calls_last_minute": session.calls_last_minute,
        "labels": session.labels,
        "recent": session.recent,
        "started_at": session.started_at,
    }


def agent_history_input(history: AgentHistory) -> dict[str, Any]:
    """``input.agent_history``: what this agent did across all its sessions and tasks."""
    return {"calls_last_minute": history.calls_last_minute, "labels": dict(history.labels)}


def mcp_input(mcp: McpRequest) -> dict[str, Any]:
    """``input.mcp``: the JSON-RPC request (all its params stay for the approver's view only)."""
    return {
        "method": mcp.method,
        "name": mcp.name,
        "arguments": mcp.arguments,
        "id": mcp.id,
        "is_notification": mcp.is_notification,
        "tool_pin": mcp.tool_pin,
    }


def approver_input(approver: Approver) -> dict[str, Any]:
    """An approver as the approver policy sees it."""
    return {"kind": approver.kind, "id": approver.id, "claims": approver.claims}


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
        # What the step-up asked approvers for (its data_class decided who may approve): the
        # policy checks that it still covers what this request needs.
        "approvers": dict(approval.approvers),
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
