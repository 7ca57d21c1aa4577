"""The AuthZEN 1.0 HTTP binding as aiohttp handlers, on the sidecar's API listener.

PEPs authenticate with a JWT-SVID of a trusted trust domain (the task API's resolver, JWT-SVID
source only: the pod's own identity is never enough here, since an agent shares the pod's
loopback), optionally limited to ``authzen.callers``. A bad request is a 400 with the reason as
the body (the specification's error string), never a decision.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from sidecar import agent_api
from sidecar.authzen.discovery import EVALUATION, EVALUATIONS, SEARCH_ACTION, metadata
from sidecar.authzen.evaluate import Evaluator, Outcome, PolicyAnswerError
from sidecar.authzen.log import log_outcome
from sidecar.authzen.model import AuthzenError, Evaluation, parse_action_search, parse_evaluation, parse_evaluations
from sidecar.config import AuthzenConfig
from sidecar.errors import Kind
from sidecar.identity import Identity, IdentityError
from sidecar.opa import OpaError
from sidecar.wire_status import HTTP_STATUS

EVALUATOR = web.AppKey("authzen_evaluator", Evaluator)
SETTINGS = web.AppKey("authzen_settings", AuthzenConfig)
DISCOVERY = "/.well-known/authzen-configuration"
DECISION_ID_HEADER = "x-authz-decision-id"
REQUEST_ID_HEADER = "x-request-id"

Handler = Callable[[web.Request, Identity, dict[str, str]], Awaitable[web.Response]]


def add_authzen_routes(app: web.Application, evaluator: Evaluator, settings: AuthzenConfig) -> None:
    """Needs ``agent_api.API_RESOLVER`` on ``app`` (the sidecar's API app has it)."""
    app[EVALUATOR] = evaluator
    app[SETTINGS] = settings
    app.router.add_get(DISCOVERY, configuration)
    app.router.add_post(EVALUATION, _pep(evaluation))
    app.router.add_post(EVALUATIONS, _pep(evaluations))
    if evaluator.searches_actions:
        app.router.add_post(SEARCH_ACTION, _pep(search_action))


async def configuration(request: web.Request) -> web.Response:
    base = request.app[SETTINGS].base_url or f"{request.scheme}://{request.host}"
    return web.json_response(metadata(base, request.app[EVALUATOR].searches_actions))


async def evaluation(request: web.Request, caller: Identity, headers: dict[str, str]) -> web.Response:
    parsed = parse_evaluation(await _body(request))
    return await _single(request, caller, headers, parsed, "evaluation")


async def evaluations(request: web.Request, caller: Identity, headers: dict[str, str]) -> web.Response:
    parsed = parse_evaluations(await _body(request), request.app[SETTINGS].max_evaluations)
    if isinstance(parsed, Evaluation):  # no evaluations array: a single evaluation, answered as one
        return await _single(request, caller, headers, parsed, "evaluations")
    outcomes = await request.app[EVALUATOR].batch(parsed)
    _log_batch(outcomes, caller, "evaluations", headers)
    headers[DECISION_ID_HEADER] = ",".join(o.decision_id for o in outcomes)
    return _json({"evaluations": [o.response() for o in outcomes]}, headers)


async def search_action(request: web.Request, caller: Identity, headers: dict[str, str]) -> web.Response:
    """The policy names candidate actions; each is evaluated, and the permitted ones are the results."""
    query = parse_action_search(await _body(request))
    evaluator = request.app[EVALUATOR]
    try:
        candidates = await evaluator.candidate_actions(query)
    except OpaError as exc:
        raise AuthzenError(Kind.UNAVAILABLE, exc.reason) from None
    except PolicyAnswerError as exc:
        raise AuthzenError(Kind.UNAVAILABLE, str(exc)) from None
    limit = request.app[SETTINGS].max_evaluations
    if len(candidates) > limit:
        raise AuthzenError(
            Kind.UNAVAILABLE, f"policy names {len(candidates)} candidate actions; at most {limit} are evaluated"
        )
    outcomes = await evaluator.all(
        [Evaluation(query.subject, action, query.resource, query.context) for action in candidates]
    )
    _log_batch(outcomes, caller, "search/action", headers)
    if any(o.error for o in outcomes):  # a partial list would read as "nothing else is permitted"
        raise AuthzenError(Kind.UNAVAILABLE, "some candidate actions could not be evaluated: " + _first_error(outcomes))
    return _json({"results": [o.evaluation.action for o in outcomes if o.decision]}, headers)


async def _single(
    request: web.Request, caller: Identity, headers: dict[str, str], parsed: Evaluation, endpoint: str
) -> web.Response:
    outcome = await request.app[EVALUATOR].one(parsed)
    log_outcome(outcome, caller, endpoint, headers.get(REQUEST_ID_HEADER), None, None)
    headers[DECISION_ID_HEADER] = outcome.decision_id
    return _json(outcome.response(), headers)


def _log_batch(outcomes: list[Outcome], caller: Identity, endpoint: str, headers: dict[str, str]) -> None:
    batch = str(uuid.uuid4())
    for index, outcome in enumerate(outcomes):
        log_outcome(outcome, caller, endpoint, headers.get(REQUEST_ID_HEADER), batch, index)


def _first_error(outcomes: list[Outcome]) -> str:
    return next(o.error for o in outcomes if o.error)


def _pep(handler: Handler) -> Callable[[web.Request], Awaitable[web.Response]]:
    """Authenticate the PEP, echo its X-Request-ID (the specification's MUST), map errors."""

    async def wrapped(request: web.Request) -> web.Response:
        headers: dict[str, str] = {}
        request_id = request.headers.get(REQUEST_ID_HEADER)
        if request_id is not None:
            headers[REQUEST_ID_HEADER] = request_id
        try:
            caller = _authenticate(request)
            return await handler(request, caller, headers)
        except AuthzenError as exc:
            unauthenticated = exc.kind is Kind.UNAUTHENTICATED
            extra = {"www-authenticate": 'Bearer realm="authz-sidecar"'} if unauthenticated else {}
            return web.Response(status=HTTP_STATUS[exc.kind], text=exc.reason, headers={**headers, **extra})

    return wrapped


def _authenticate(request: web.Request) -> Identity:
    headers = {k.lower(): v for k, v in request.headers.items()}
    try:
        caller = request.app[agent_api.API_RESOLVER].resolve(headers)
    except IdentityError as exc:
        raise AuthzenError(Kind.UNAUTHENTICATED, exc.reason) from None
    if caller is None or caller.source != "jwt_svid":
        raise AuthzenError(Kind.UNAUTHENTICATED, "a JWT-SVID is required")
    allowed = request.app[SETTINGS].callers
    if allowed and str(caller.spiffe_id) not in allowed:
        raise AuthzenError(Kind.FORBIDDEN, f"{caller.spiffe_id} may not ask this PDP (authzen.callers)")
    return caller


async def _body(request: web.Request) -> Any:
    if request.content_type != "application/json":
        raise AuthzenError(Kind.INVALID, "Content-Type must be application/json")
    limit = request.app[SETTINGS].max_body_bytes
    raw = bytearray()
    while len(raw) <= limit:  # read() returns what has arrived, up to n: a large body comes in chunks
        chunk = await request.content.read(limit + 1 - len(raw))
        if not chunk:
            break
        raw += chunk
    if len(raw) > limit:
        raise AuthzenError(Kind.TOO_LARGE, f"request body is larger than {limit} bytes")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise AuthzenError(Kind.INVALID, "request body is not valid JSON") from None


def _json(document: dict[str, Any], headers: dict[str, str]) -> web.Response:
    return web.Response(body=orjson.dumps(document), content_type="application/json", headers=headers)
