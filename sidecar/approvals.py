"""Step-up approvals: a human (or an approval service) approves one exact request.

On a ``step_up`` of kind ``approval`` the sidecar records a pending approval bound to the
agent, its task and a fingerprint of the request (at most ``approvals.max_pending_per_agent``
per agent; asking again for the same request returns the pending one). Approvers list and
decide pending approvals; who may decide what is an OPA decision (``approvals.decision_path``),
and neither the agent nor anyone in its delegation chain ever may. The agent retries the
identical request with the approval id; the sidecar checks binding and fingerprint and consumes
it atomically (single use).

What approvers see of the request is bounded (``MAX_VIEW_ITEMS`` items per list,
``MAX_VIEW_STRING`` characters per string), never silently: every cut says in place what it
left out, and the record lists the cuts (``summary_cuts``). Before asking the policy, the
sidecar tells it what the view would cut (``input.approval_view``), so a policy can refuse to
ask a human to approve what they cannot see.
"""

from __future__ import annotations

import base64
import copy
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from sidecar import metrics
from sidecar.body import ParsedBody
from sidecar.config import ApprovalsConfig
from sidecar.decision import StepUp
from sidecar.errors import Kind, SidecarError
from sidecar.fingerprint import BOUND_HEADERS
from sidecar.identity.approvers import Approver
from sidecar.input import approver_input, approver_policy_input, split_target
from sidecar.mcp import NAME_PARAM
from sidecar.opa import OpaClient, OpaError
from sidecar.request import CheckRequest
from sidecar.state import ApprovalConflict, ApprovalRecord, ApprovalStatus, Store, TaskRecord, TooManyApprovals
from sidecar.webhook import Webhook

REDACTED = "[redacted]"
MAX_VIEW_ITEMS = 50  # per list
MAX_VIEW_STRING = 200  # characters per string
MAX_LISTED_CUTS = 20  # pointers in input.approval_view.cut (cut_count counts them all)


class ApprovalError(SidecarError):
    """An approval cannot be requested, used or decided, for a reason of ``kind``."""

    CODE = "approval"

    def __init__(self, kind: Kind, reason: str) -> None:
        super().__init__(reason, kind=kind)


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
        fingerprint: str | None,
        decision_id: str,
        reasons: list[str],
        summary: dict[str, Any],
    ) -> ApprovalRecord:
        """The pending approval for this exact request: a new one, or the one this agent already
        waits for. ``fingerprint`` is None when the request cannot be bound (a partial body)."""
        if fingerprint is None:
            raise ApprovalError(
                Kind.TOO_LARGE, "an approval cannot be bound to a request whose body was only partly inspected"
            )
        now = int(time.time())
        ttl = min(step_up.ttl_seconds or self._config.default_ttl_seconds, self._config.max_ttl_seconds)
        shown, cuts = trim(redact(summary, step_up.redact))
        approval = ApprovalRecord(
            id=str(uuid.uuid4()),
            agent=agent,
            task_id=task_id,
            fingerprint=fingerprint,
            created_at=now,
            expires_at=now + ttl,
            decision_id=decision_id,
            reasons=reasons,
            summary=shown,
            summary_cuts=[cut.as_json() for cut in cuts],
            delegation_chain=list(chain),
            data_class=step_up.data_class or _as_str(step_up.approvers.get("data_class")),
            approvers=step_up.approvers,
        )
        limit = self._config.max_pending_per_agent
        try:
            stored = await self._store.create_approval(approval, limit, now)
        except TooManyApprovals as exc:
            raise ApprovalError(
                Kind.TOO_MANY,
                f"agent {agent} already has {exc.pending} pending approvals (at most {limit}); "
                "wait until approvers decide them or they expire",
            ) from None
        if stored.id == approval.id:  # only a new approval is counted and announced
            metrics.APPROVALS_REQUESTED.inc()
            if self._webhook is not None:
                self._webhook.notify("approval.pending", self.view(stored))
        return stored

    async def redeem(
        self, approval_id: str, *, agent: str, task_id: str | None, fingerprint: str | None
    ) -> ApprovalRecord:
        """Check an approval presented on a retry and consume it (single use)."""
        if fingerprint is None:
            raise ApprovalError(
                Kind.FORBIDDEN, "an approval cannot be used for a request whose body was only partly inspected"
            )
        approval = await self._store.get_approval(approval_id)
        if approval is None:
            raise ApprovalError(Kind.FORBIDDEN, f"approval {approval_id} is unknown or has expired")
        if approval.agent != agent:
            raise ApprovalError(Kind.FORBIDDEN, f"approval {approval_id} was requested by another agent")
        if approval.task_id != task_id:
            raise ApprovalError(Kind.FORBIDDEN, f"approval {approval_id} was requested under another task")
        if approval.fingerprint != fingerprint:
            raise ApprovalError(Kind.FORBIDDEN, f"approval {approval_id} was granted for a different request")
        if approval.expires_at <= time.time():
            raise ApprovalError(Kind.FORBIDDEN, f"approval {approval_id} has expired")
        if approval.status == "pending":
            raise ApprovalError(Kind.FORBIDDEN, f"approval {approval_id} is still pending")
        if approval.status == "rejected":
            raise ApprovalError(
                Kind.FORBIDDEN, f"approval {approval_id} was rejected: {approval.decision_reason or 'no reason'}"
            )
        if approval.status == "consumed":
            raise ApprovalError(Kind.FORBIDDEN, f"approval {approval_id} was already used")
        try:
            return await self._store.consume_approval(approval_id, int(time.time()))
        except ApprovalConflict:
            raise ApprovalError(Kind.FORBIDDEN, f"approval {approval_id} was already used") from None

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
        raise ApprovalError(Kind.NOT_FOUND, f"no approval {approval_id} for this caller")

    async def decide(self, approver: Approver, approval_id: str, approve: bool, reason: str | None) -> ApprovalRecord:
        approval = await self._store.get_approval(approval_id)
        if approval is None:
            raise ApprovalError(Kind.NOT_FOUND, f"no approval {approval_id}")
        operation = "approve" if approve else "reject"
        denied = await self._allowed(approver, approval, operation)
        if denied is not None:
            raise ApprovalError(Kind.FORBIDDEN, denied)
        status: ApprovalStatus = "approved" if approve else "rejected"
        try:
            decided = await self._store.decide_approval(
                approval_id, status, approver_input(approver) | {"claims": None}, reason, int(time.time())
            )
        except ApprovalConflict:
            raise ApprovalError(
                Kind.CONFLICT, f"approval {approval_id} is no longer pending (decided or expired)"
            ) from None
        metrics.APPROVALS_DECIDED.labels(status).inc()
        return decided

    @staticmethod
    def view(approval: ApprovalRecord) -> dict[str, Any]:
        """What the API shows (the fingerprint binds; it reveals nothing)."""
        data = approval.to_json()
        if data["approver"]:
            data["approver"] = {"kind": data["approver"]["kind"], "id": data["approver"]["id"]}
        if data["status"] == "pending" and approval.expires_at <= time.time():
            data["status"] = "expired"
        data["summary_truncated"] = bool(approval.summary_cuts)
        return data

    def status_url(self, approval_id: str) -> str:
        return f"{self._config.public_url.rstrip('/')}/v1/approvals/{approval_id}"

    async def _allowed(self, approver: Approver, approval: ApprovalRecord, operation: str) -> str | None:
        """None when ``approver`` may decide ``approval``, else the reason why not."""
        if approver.kind == "spiffe" and (approver.id == approval.agent or approver.id in approval.delegation_chain):
            return f"{approver.id} may not approve a request made by itself or by its delegation chain"
        input_doc = approver_policy_input(operation, approver, approval)
        try:
            result = (await self._opa.decide(input_doc, self._config.decision_path)).result
        except OpaError as exc:
            raise ApprovalError(Kind.UNAVAILABLE, exc.reason) from exc
        if not isinstance(result, dict) or result.get("verdict") not in ("allow", "deny"):
            raise ApprovalError(Kind.UNAVAILABLE, "approver policy answer is not a {verdict, reasons} object")
        if result["verdict"] == "allow":
            return None
        reasons = result.get("reasons")
        return "; ".join(r for r in reasons if isinstance(r, str)) if isinstance(reasons, list) else "denied by policy"


def request_summary(
    request: CheckRequest, body: ParsedBody, task: TaskRecord | None, chain: tuple[str, ...]
) -> dict[str, Any]:
    """What an approver sees of a request: everything the fingerprint binds (the MCP method and
    all its params, the query, the headers that change how the body is read, a non-JSON body as
    text), so nothing that is approved goes unseen. The MCP session id is bound, never shown."""
    mcp = body.mcp
    path, query = split_target(request.path)
    shown_apart = {"arguments", NAME_PARAM.get(mcp.method, "name")} if mcp else set()
    return {
        "method": request.method,
        "host": request.headers.get("host", ""),
        "path": path,
        "query": query or None,
        "headers": {n: request.headers[n] for n in BOUND_HEADERS if n in request.headers and n != "mcp-session-id"},
        "mcp_method": mcp.method if mcp else None,
        "tool": mcp.name if mcp else None,
        "arguments": mcp.arguments if mcp else None,
        "params": {k: v for k, v in mcp.params.items() if k not in shown_apart} if mcp else None,
        "body": None if mcp else _body_view(request.body, body.parsed_body),
        "task_id": task.id if task else None,
        "purpose": task.purpose if task else None,
        "delegation_chain": list(chain),
    }


def _body_view(raw: bytes, parsed: Any) -> Any:
    """A JSON body as parsed, any other as text, or base64 when it is not UTF-8."""
    if parsed is not None or not raw:
        return parsed
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(raw).decode("ascii")}


def redact(summary: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    """Hide what the policy marked: argument names, or JSON pointers into the body."""
    result = copy.deepcopy(summary)
    for name in fields:
        if name.startswith("/"):
            _redact_pointer(result.get("body"), [p.replace("~1", "/").replace("~0", "~") for p in name[1:].split("/")])
        elif isinstance(result.get("arguments"), dict) and name in result["arguments"]:
            result["arguments"][name] = REDACTED
    return result


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


@dataclass(frozen=True)
class Cut:
    """Something the approver's view leaves out: at ``pointer`` (a JSON pointer into the
    summary), ``hidden`` more list items or string characters than it shows."""

    pointer: str
    unit: Literal["items", "characters"]
    hidden: int

    def as_json(self) -> dict[str, Any]:
        return {"pointer": self.pointer, "unit": self.unit, "hidden": self.hidden}


def trim(summary: dict[str, Any]) -> tuple[dict[str, Any], list[Cut]]:
    """The summary as approvers see it: long lists and strings cut, each cut saying so in place
    ("… 37 more items not shown", "… [string truncated, 1,203 more characters]"), and the cuts."""
    cuts: list[Cut] = []
    shown: dict[str, Any] = _trim(summary, "", cuts)
    return shown, cuts


def approval_view(summary: dict[str, Any]) -> dict[str, Any] | None:
    """``input.approval_view``: what the approver's view of this request would cut before any
    redaction (the policy knows what it redacts), or None when it would show everything."""
    pointers: list[str] = []
    count = _count_cuts(summary, [], pointers)
    if count == 0:
        return None
    return {"cut": pointers, "cut_count": count, "max_items": MAX_VIEW_ITEMS, "max_string": MAX_VIEW_STRING}


def _trim(value: Any, pointer: str, cuts: list[Cut]) -> Any:
    if isinstance(value, str) and len(value) > MAX_VIEW_STRING:
        hidden = len(value) - MAX_VIEW_STRING
        cuts.append(Cut(pointer, "characters", hidden))
        return f"{value[:MAX_VIEW_STRING]}… [string truncated, {hidden:,} more characters]"
    if isinstance(value, dict):
        return {k: _trim(v, f"{pointer}/{_escape(k)}", cuts) for k, v in value.items()}
    if isinstance(value, list):
        shown = [_trim(v, f"{pointer}/{i}", cuts) for i, v in enumerate(value[:MAX_VIEW_ITEMS])]
        if len(value) > MAX_VIEW_ITEMS:
            hidden = len(value) - MAX_VIEW_ITEMS
            cuts.append(Cut(pointer, "items", hidden))
            shown.append(f"… {hidden:,} more items not shown")
        return shown
    return value


def _count_cuts(value: Any, path: list[str], pointers: list[str]) -> int:
    """How many cuts :func:`_trim` would make, listing the first pointers. It runs on every call,
    so it copies nothing and builds a pointer only for a cut."""
    count = 0
    if isinstance(value, dict):
        for key, item in value.items():
            path.append(_escape(key))
            count += _count_cuts(item, path, pointers)
            path.pop()
        return count
    if isinstance(value, list):
        for i, item in enumerate(value[:MAX_VIEW_ITEMS]):
            path.append(str(i))
            count += _count_cuts(item, path, pointers)
            path.pop()
        cut = len(value) > MAX_VIEW_ITEMS
    else:
        cut = isinstance(value, str) and len(value) > MAX_VIEW_STRING
    if cut:
        count += 1
        if len(pointers) < MAX_LISTED_CUTS:
            pointers.append("".join(f"/{p}" for p in path))
    return count


def _escape(key: str) -> str:
    """A key as a JSON pointer segment (RFC 6901)."""
    return key.replace("~", "~0").replace("/", "~1")


def _as_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None
