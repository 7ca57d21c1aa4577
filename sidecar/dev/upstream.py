"""The demo upstream: a small REST API and an MCP Streamable-HTTP tool server.

It trusts only credentials minted by the sidecar: every write needs a valid one (signature
from the sidecar's JWKS, ``aud``, ``exp``, ``typ``, never seen before), so an agent's own
token, a replayed or an expired credential fail here. Every answer says what the upstream
saw, so the demo and the e2e tests can show it, and every request is one JSON access line on
stdout (``"logger": "upstream.access"``: method, path, decision id, agent, credential ``jti``;
never a token), which ``authz-sidecar audit`` reads to find calls that reached the upstream
without a decision.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
import time
from typing import Any

import jwt
from aiohttp import web

TOOLS = {
    "search_docs": "Search the handbook",
    "get_record": "Read a customer record (restricted data)",
    "create_ticket": "Open a support ticket",
    "delete_record": "Delete a customer record",
    "send_email": "Send an email",
}
WRITE_TOOLS = {"create_ticket", "delete_record", "send_email"}
# Headers some frameworks read as "use this method instead": Envoy removes them (envoy.yaml), the
# access line says whether one ever arrived.
METHOD_OVERRIDE_HEADERS = ("x-http-method-override", "x-http-method", "x-method-override")
AUDIENCE = "demo-upstream"
ISSUER = "authz-sidecar"
_ids = itertools.count(1)


class CredentialCheck:
    """Verifies sidecar-minted credentials against the sidecar's JWKS; remembers ``jti`` to refuse replays."""

    def __init__(self, jwks_url: str | None) -> None:
        self._client = jwt.PyJWKClient(jwks_url, cache_keys=True, lifespan=30) if jwks_url else None
        self._seen: set[str] = set()
        self.last_token: str | None = None  # demo only: lets the demo replay a credential

    async def verify(self, authorization: str | None) -> dict[str, Any] | None:
        """Verified claims, None when no credential was sent; raises ValueError when it is bad."""
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
                "time": time.time(),
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
            }
            sys.stdout.write(json.dumps(line, separators=(",", ":")) + "\n")
            sys.stdout.flush()


async def _verified(request: web.Request, required: bool) -> dict[str, Any]:
    """What the upstream saw; raises 401 when a credential is bad, or missing where required."""
    try:
        claims = await request.app[CHECK].verify(request.headers.get("authorization"))
    except ValueError as exc:
        raise web.HTTPUnauthorized(text=json.dumps({"error": str(exc)}), content_type="application/json") from exc
    if required and claims is None:
        raise web.HTTPUnauthorized(
            text=json.dumps({"error": "this write needs a credential minted by the authz sidecar"}),
            content_type="application/json",
        )
    credential = None
    if claims:
        credential = {k: claims.get(k) for k in ("sub", "aud", "scope", "act", "task_id", "decision_id", "exp", "jti")}
    request[CLAIMS] = claims
    return {
        "method": request.method,
        "path": request.path,
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


async def mcp(request: web.Request) -> web.Response:
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
        result = {"tools": [{"name": n, "description": d, "inputSchema": {"type": "object"}} for n, d in TOOLS.items()]}
    elif tool in TOOLS:
        text = f"{tool} done with {json.dumps(params.get('arguments', {}), sort_keys=True)}"
        result = {"content": [{"type": "text", "text": text}], "isError": False}
    else:
        return _rpc_error(rpc_id, -32601, f"unknown method or tool: {method}")
    result["_meta"] = {"upstream_saw": saw}
    return web.json_response({"jsonrpc": "2.0", "id": rpc_id, "result": result})


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
    app.router.add_get("/api/docs", docs)
    app.router.add_get("/api/docs/{name:.+}", docs)
    app.router.add_route("*", "/api/tickets", tickets)
    app.router.add_route("*", "/api/records/{record}", records)
    app.router.add_post("/api/payments", payments)
    app.router.add_post("/mcp", mcp)
    app.router.add_get("/healthz", _ok)
    app.router.add_get("/debug/last-credential", last_credential)
    return app


def run_upstream(host: str, port: int, jwks_url: str | None = None) -> None:
    web.run_app(build_upstream(jwks_url), host=host, port=port, access_log=None, print=None)
