"""The demo upstream: a small REST API and an MCP Streamable-HTTP tool server.

It trusts only credentials minted by the sidecar: every write needs a valid one (signature
from the sidecar's JWKS, ``aud``, ``exp``, ``typ``, bound to this very request, never seen
before), so an agent's own token, a replayed or an expired credential, or one minted for another
method, path, query or body fail here. As the reference for upstream authors, it recomputes the
binding from what it received (method, raw request target, body bytes) before it spends the
``jti`` (docs/tokens.md). Every answer says what the upstream saw, so the demo and the e2e
tests can show it, and every request is one JSON access line on stdout
(``"logger": "upstream.access"``: method, path, decision id, agent, credential ``jti``; never a
token), which ``authz-sidecar audit`` reads to find calls that reached the upstream without a
decision.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt
from aiohttp import web

from devstack.mcp_tools import HOLDS, TOOL_SERVER, TOOLS, ToolServer, answer, release, rug_pull, tool_result
from sidecar.logs import rfc3339, setup_logging

WRITE_TOOLS = {"create_ticket", "delete_record", "send_email"}
# Headers some frameworks read as "use this method instead": Envoy removes them (envoy.yaml), the
# access line says whether one ever arrived.
METHOD_OVERRIDE_HEADERS = ("x-http-method-override", "x-http-method", "x-method-override")
# Headers some frameworks route by instead of the request target (IIS, Symfony, Laravel): a
# credential bound to one target must not be spent on a request that names another.
# Envoy removes every one of these (envoy/envoy.yaml request_headers_to_remove).
TARGET_OVERRIDE_HEADERS = (
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
    "x-original-path",
    "x-original-method",
    "x-forwarded-uri",
    "x-forwarded-path",
    "x-forwarded-prefix",
    "x-envoy-original-path",
    "x-envoy-original-url",
)
BINDING_CLAIMS = ("req_method", "req_target", "req_body_sha256")
AUDIENCE = "demo-upstream"
ISSUER = "authz-sidecar"
_ids = itertools.count(1)


@dataclass(frozen=True)
class ReceivedRequest:
    """What this upstream received, in the terms of the sidecar's binding claims."""

    method: str  # as received: methods are case-sensitive
    target: str  # the raw request target (path and query), never decoded or normalised
    body: bytes  # the body bytes as received (this app does not undo content codings)
    headers: Mapping[str, str]


def binding_mismatch(claims: Mapping[str, Any], request: ReceivedRequest) -> str | None:
    """Which part of ``request`` differs from the one the credential was minted for, or None."""
    method, target, body_hash = (claims.get(k) for k in BINDING_CLAIMS)
    if not (isinstance(method, str) and isinstance(target, str) and isinstance(body_hash, str)):
        return "the credential is not bound to a request"
    if request.method != method:
        return f"method {request.method!r}, minted for {method!r}"
    if request.target != target:
        return "request target (path or query) differs"
    digest = base64.urlsafe_b64encode(hashlib.sha256(request.body).digest()).rstrip(b"=").decode("ascii")
    if not hmac.compare_digest(digest, body_hash):
        return "body differs"
    overrides = [h for h in (*METHOD_OVERRIDE_HEADERS, *TARGET_OVERRIDE_HEADERS) if h in request.headers]
    if overrides:  # Envoy removes them; one here would name another method or target than bound
        return f"override header {overrides[0]} present"
    return None


class CredentialCheck:
    """Verifies sidecar-minted credentials against the sidecar's JWKS; remembers ``jti`` to refuse replays."""

    def __init__(self, jwks_url: str | None) -> None:
        self._client = jwt.PyJWKClient(jwks_url, cache_keys=True, lifespan=30) if jwks_url else None
        self._seen: set[str] = set()
        self.last_token: str | None = None  # demo only: lets the demo replay a credential

    async def verify(self, authorization: str | None, request: ReceivedRequest) -> dict[str, Any] | None:
        """Verified claims, None when no credential was sent; raises ValueError when it is bad
        or was minted for another request than ``request``."""
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ValueError("not a bearer credential")
        if self._client is None:
            raise ValueError("this upstream has no JWKS to verify credentials with")
        try:
            if jwt.get_unverified_header(token).get("typ") != "at+jwt":
                raise ValueError("not a sidecar-minted credential (typ)")
            key = await asyncio.to_thread(self._client.get_signing_key_from_jwt, token)
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=["ES256", "ES384", "RS256"],
                audience=AUDIENCE,
                issuer=ISSUER,
                options={"require": ["exp", "jti", "sub", "aud", "iss"]},
            )
        except jwt.PyJWTError as exc:
            raise ValueError(f"credential rejected: {type(exc).__name__}") from exc
        mismatch = binding_mismatch(claims, request)
        if mismatch is not None:  # before the jti is spent: the right request can still use it
            raise ValueError(f"credential rejected: minted for another request ({mismatch})")
        if claims["jti"] in self._seen:
            raise ValueError("credential rejected: replayed (jti already used)")
        self._seen.add(claims["jti"])
        self.last_token = token
        return claims


CHECK = web.AppKey("credential_check", CredentialCheck)
CLAIMS = "verified_credential"  # request key: the credential claims _verified() accepted


@web.middleware
async def access_log(request: web.Request, handler: Any) -> web.StreamResponse:
    """One JSON line per request: what reached the upstream, and under which decision."""
    status = 500
    try:
        response: web.StreamResponse = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        if request.path != "/healthz":
            claims = request.get(CLAIMS) or {}
            line = {
                "time": rfc3339(time.time()),
                "logger": "upstream.access",
                "method": request.method,
                "path": request.path,
                "host": request.host,
                "status": status,
                "decision_id": request.headers.get("x-authz-decision-id"),
                "spiffe_id": request.headers.get("x-authz-spiffe-id"),
                "authorization_present": "authorization" in request.headers,
                "credential": {k: claims.get(k) for k in ("jti", "decision_id", "task_id", "sub")} if claims else None,
                "method_override": [h for h in METHOD_OVERRIDE_HEADERS if h in request.headers],
                "target_override": [h for h in TARGET_OVERRIDE_HEADERS if h in request.headers],
            }
            sys.stdout.write(json.dumps(line, separators=(",", ":")) + "\n")
            sys.stdout.flush()


async def _verified(request: web.Request, required: bool) -> dict[str, Any]:
    """What the upstream saw; raises 401 when a credential is bad, or missing where required."""
    received = ReceivedRequest(request.method, request.raw_path, await request.read(), request.headers)
    try:
        claims = await request.app[CHECK].verify(request.headers.get("authorization"), received)
    except ValueError as exc:
        raise web.HTTPUnauthorized(text=json.dumps({"error": str(exc)}), content_type="application/json") from exc
    if required and claims is None:
        raise web.HTTPUnauthorized(
            text=json.dumps({"error": "this write needs a credential minted by the authz sidecar"}),
            content_type="application/json",
        )
    credential = None
    if claims:
        shown = ("sub", "aud", "scope", "act", "task_id", "decision_id", "exp", "jti", *BINDING_CLAIMS)
        credential = {k: claims.get(k) for k in shown}
    request[CLAIMS] = claims
    return {
        "method": request.method,
        "path": request.path,
        "target": request.raw_path,
        "host": request.host,
        "decision_id": request.headers.get("x-authz-decision-id"),
        "spiffe_id": request.headers.get("x-authz-spiffe-id"),
        "rule": request.headers.get("x-authz-rule"),
        "authorization_present": "authorization" in request.headers,
        "task_token_present": "x-agent-task-token" in request.headers,
        "credential": credential,
    }


async def docs(request: web.Request) -> web.Response:
    name = request.match_info.get("name", "index")
    saw = await _verified(request, required=False)
    return web.json_response({"doc": name, "content": f"Contents of {name}", "upstream_saw": saw})


async def tickets(request: web.Request) -> web.Response:
    saw = await _verified(request, required=request.method == "POST")
    if request.method == "POST":
        return web.json_response({"ticket": next(_ids), "upstream_saw": saw}, status=201)
    return web.json_response({"tickets": [], "upstream_saw": saw})


async def records(request: web.Request) -> web.Response:
    record = request.match_info["record"]
    saw = await _verified(request, required=request.method == "DELETE")
    if request.method == "DELETE":
        return web.json_response({"deleted": record, "upstream_saw": saw})
    return web.json_response({"record": record, "name": "Ada Lovelace", "upstream_saw": saw})


async def payments(request: web.Request) -> web.Response:
    saw = await _verified(request, required=True)
    return web.json_response({"payment": next(_ids), "upstream_saw": saw}, status=201)


async def mcp(request: web.Request) -> web.StreamResponse:
    try:
        message = json.loads(await request.read())
    except ValueError:
        return _rpc_error(None, -32700, "parse error")
    if not isinstance(message, dict):
        return _rpc_error(None, -32600, "invalid request")
    method, rpc_id = message.get("method"), message.get("id")
    if "id" not in message:
        return web.Response(status=202)
    params = message.get("params") or {}
    tool = params.get("name") if method == "tools/call" else None
    saw = await _verified(request, required=tool in WRITE_TOOLS)
    if method == "initialize":
        result: dict[str, Any] = {
            "protocolVersion": "2025-06-18",
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "demo-tools", "version": "0.1.0"},
        }
    elif method == "tools/list":
        result = {"tools": request.app[TOOL_SERVER].definitions()}
    elif tool in TOOLS:
        result = tool_result(tool, params.get("arguments", {}))
    else:
        return _rpc_error(rpc_id, -32601, f"unknown method or tool: {method}")
    result["_meta"] = {"upstream_saw": saw}
    return await answer(request, {"jsonrpc": "2.0", "id": rpc_id, "result": result})


async def last_credential(request: web.Request) -> web.Response:
    """Demo only: the last credential accepted, so the demo can show a replay failing."""
    return web.json_response({"token": request.app[CHECK].last_token})


def _rpc_error(rpc_id: Any, code: int, message: str) -> web.Response:
    return web.json_response({"jsonrpc": "2.0", "id": rpc_id, "error": {"code": code, "message": message}})


async def _ok(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def build_upstream(jwks_url: str | None = None) -> web.Application:
    app = web.Application(middlewares=[access_log])
    app[CHECK] = CredentialCheck(jwks_url)
    app[TOOL_SERVER] = ToolServer()
    app[HOLDS] = {}
    app.router.add_get("/api/docs", docs)
    app.router.add_get("/api/docs/{name:.+}", docs)
    app.router.add_route("*", "/api/tickets", tickets)
    app.router.add_route("*", "/api/records/{record}", records)
    app.router.add_post("/api/payments", payments)
    app.router.add_post("/mcp", mcp)
    app.router.add_get("/healthz", _ok)
    app.router.add_get("/debug/last-credential", last_credential)
    app.router.add_route("POST", "/debug/rug-pull", rug_pull)
    app.router.add_route("DELETE", "/debug/rug-pull", rug_pull)
    app.router.add_post("/debug/release/{hold}", release)
    return app


def run_upstream(host: str, port: int, jwks_url: str | None = None) -> None:
    setup_logging("INFO")  # aiohttp's own lines as JSON too, with RFC 3339 UTC times
    # auto_decompress off: the body hashed is the one received, as the sidecar hashed it.
    web.run_app(build_upstream(jwks_url), host=host, port=port, access_log=None, print=None, auto_decompress=False)
