"""The sidecar's own API (task grants, approvals) and its JWKS, as aiohttp handlers.

Callers authenticate themselves: agents and approval services with a JWT-SVID, human
approvers with an OIDC ID token. Peer identity from headers (XFCC) is never accepted here,
because an agent can reach this port directly.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from sidecar.approvals import ApprovalError, ApprovalService
from sidecar.errors import Kind, SidecarError
from sidecar.events import ApprovalEvent, Outcome, TaskEvent, log_event, now
from sidecar.identity import Identity, IdentityError, IdentityResolver
from sidecar.identity.approvers import Approver, ApproverAuthenticator
from sidecar.keys import KeySet
from sidecar.state import StoreError
from sidecar.tasks import TaskError, TaskService, task_view
from sidecar.wire_status import HTTP_STATUS

API_RESOLVER = web.AppKey("api_resolver", IdentityResolver)
APPROVALS = web.AppKey("approvals", ApprovalService)
APPROVERS = web.AppKey("approvers", ApproverAuthenticator)
TASKS = web.AppKey("tasks", TaskService)
KEYS = web.AppKey("keys", KeySet)
MAX_BODY = 16_384

Handler = Callable[[web.Request, Identity], Awaitable[web.Response]]


def add_task_routes(app: web.Application) -> None:
    app.router.add_post("/v1/tasks", _authenticated(open_task))
    app.router.add_get("/v1/tasks/{task_id}", _authenticated(get_task))
    app.router.add_post("/v1/tasks/{task_id}/complete", _authenticated(end_task))
    app.router.add_delete("/v1/tasks/{task_id}", _authenticated(end_task))
    app.router.add_post("/v1/tasks/{task_id}/delegate", _authenticated(delegate_task))


def add_approval_routes(app: web.Application) -> None:
    app.router.add_get("/v1/approvals", _approver(list_approvals))
    app.router.add_get("/v1/approvals/{approval_id}", _approver(get_approval))
    app.router.add_post("/v1/approvals/{approval_id}/approve", _approver(approve))
    app.router.add_post("/v1/approvals/{approval_id}/reject", _approver(reject))


async def jwks(request: web.Request) -> web.Response:
    return web.json_response(request.app[KEYS].jwks(), headers={"cache-control": "max-age=60"})


async def open_task(request: web.Request, caller: Identity) -> web.Response:
    grant = await request.app[TASKS].open(caller, await _json(request))
    _audit("open", caller, grant.task.id, "allow")
    return web.json_response(grant.as_json(), status=201)


async def delegate_task(request: web.Request, caller: Identity) -> web.Response:
    parent = request.match_info["task_id"]
    grant = await request.app[TASKS].delegate(caller, parent, await _json(request))
    _audit("delegate", caller, grant.task.id, "allow", parent=parent, to=grant.task.sub)
    return web.json_response(grant.as_json(), status=201)


async def get_task(request: web.Request, caller: Identity) -> web.Response:
    task = await request.app[TASKS].get(caller, request.match_info["task_id"])
    return web.json_response(task_view(task))


async def end_task(request: web.Request, caller: Identity) -> web.Response:
    task_id = request.match_info["task_id"]
    ended = await request.app[TASKS].end(caller, task_id)
    _audit("complete", caller, task_id, "allow", revoked=tuple(ended))
    return web.json_response({"task_id": task_id, "ended": ended})


async def list_approvals(request: web.Request, approver: Approver) -> web.Response:
    service = request.app[APPROVALS]
    pending = await service.pending_for(approver)
    return web.json_response({"approvals": [service.view(a) for a in pending]})


async def get_approval(request: web.Request, approver: Approver) -> web.Response:
    service = request.app[APPROVALS]
    agent = approver.id if approver.kind == "spiffe" else None  # the requesting agent may poll its own
    approval = await service.get(request.match_info["approval_id"], agent=agent, approver=approver)
    return web.json_response(service.view(approval))


async def approve(request: web.Request, approver: Approver) -> web.Response:
    return await _decide(request, approver, approve=True)


async def reject(request: web.Request, approver: Approver) -> web.Response:
    return await _decide(request, approver, approve=False)


async def _decide(request: web.Request, approver: Approver, approve: bool) -> web.Response:
    body = await _json(request)
    reason = body.get("reason") if isinstance(body, dict) else None
    if reason is not None and (not isinstance(reason, str) or len(reason) > 1000):
        raise ApprovalError(Kind.INVALID, "invalid request: reason must be a string of at most 1000 characters")
    service = request.app[APPROVALS]
    approval_id = request.match_info["approval_id"]
    decided = await service.decide(approver, approval_id, approve, reason)
    log_event(
        ApprovalEvent(
            time=now(),
            operation="approve" if approve else "reject",
            approver=approver.id,
            approval=approval_id,
            agent=decided.agent,
            task=decided.task_id,
            reason=reason,
        )
    )
    return web.json_response(service.view(decided))


def _approver(
    handler: Callable[[web.Request, Approver], Awaitable[web.Response]],
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def wrapped(request: web.Request) -> web.Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            approver = await asyncio.to_thread(request.app[APPROVERS].authenticate, headers)
        except IdentityError as exc:
            return _unauthenticated(exc.reason)
        try:
            return await handler(request, approver)
        except (ApprovalError, TaskError, StoreError) as exc:
            return _error(exc)

    return wrapped


def _authenticated(handler: Handler) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def wrapped(request: web.Request) -> web.Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            caller = request.app[API_RESOLVER].resolve(headers)
        except IdentityError as exc:
            return _unauthenticated(exc.reason)
        if caller is None:
            return _unauthenticated("a JWT-SVID is required")
        try:
            return await handler(request, caller)
        except TaskError as exc:
            _audit(
                request.method + " " + request.path,
                caller,
                request.match_info.get("task_id"),
                "deny",
                reason=exc.reason,
            )
            return _error(exc)
        except StoreError as exc:
            return _error(exc)

    return wrapped


async def _json(request: web.Request) -> Any:
    # read(n) returns what has arrived, up to n: a body sent in pieces is read to its end.
    raw = b""
    while len(raw) <= MAX_BODY and (piece := await request.content.read(MAX_BODY + 1 - len(raw))):
        raw += piece
    if len(raw) > MAX_BODY:
        raise TaskError(Kind.TOO_LARGE, f"request body is larger than {MAX_BODY} bytes")
    try:
        return json.loads(raw or b"{}")
    except ValueError:
        raise TaskError(Kind.INVALID, "request body is not valid JSON") from None


def _error(error: SidecarError) -> web.Response:
    return web.json_response({"error": error.reason}, status=HTTP_STATUS[error.kind])


def _unauthenticated(reason: str) -> web.Response:
    status = HTTP_STATUS[Kind.UNAUTHENTICATED]
    return web.json_response(
        {"error": reason}, status=status, headers={"www-authenticate": 'Bearer realm="authz-sidecar"'}
    )


def _audit(
    operation: str,
    caller: Identity,
    task_id: str | None,
    outcome: Outcome,
    *,
    parent: str | None = None,
    to: str | None = None,
    revoked: tuple[str, ...] = (),
    reason: str | None = None,
) -> None:
    event = TaskEvent(
        time=now(),
        operation=operation,
        agent=str(caller.spiffe_id),
        task=task_id,
        outcome=outcome,
        parent=parent,
        to=to,
        revoked=revoked,
        reason=reason,
    )
    log_event(event)
