"""The demo upstream: a small REST API and an MCP Streamable-HTTP tool server.

Every answer says what the upstream saw of the authz headers, so the demo and the e2e
tests can show that identity and decision id arrived and the agent's token did not.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from aiohttp import web

TOOLS = {
    "search_docs": "Search the handbook",
    "get_record": "Read a customer record (restricted data)",
    "create_ticket": "Open a support ticket",
    "delete_record": "Delete a customer record",
    "send_email": "Send an email",
}
_ids = itertools.count(1)


def _seen(request: web.Request) -> dict[str, Any]:
    return {
        "decision_id": request.headers.get("x-authz-decision-id"),
        "spiffe_id": request.headers.get("x-authz-spiffe-id"),
        "rule": request.headers.get("x-authz-rule"),
        "authorization_present": "authorization" in request.headers,
    }


async def docs(request: web.Request) -> web.Response:
    name = request.match_info.get("name", "index")
    return web.json_response({"doc": name, "content": f"Contents of {name}", "upstream_saw": _seen(request)})


async def tickets(request: web.Request) -> web.Response:
    if request.method == "POST":
        return web.json_response({"ticket": next(_ids), "upstream_saw": _seen(request)}, status=201)
    return web.json_response({"tickets": [], "upstream_saw": _seen(request)})


async def records(request: web.Request) -> web.Response:
    record = request.match_info["record"]
    if request.method == "DELETE":
        return web.json_response({"deleted": record, "upstream_saw": _seen(request)})
    return web.json_response({"record": record, "name": "Ada Lovelace", "upstream_saw": _seen(request)})


async def payments(request: web.Request) -> web.Response:
    return web.json_response({"payment": next(_ids), "upstream_saw": _seen(request)}, status=201)


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
    if method == "initialize":
        result: dict[str, Any] = {
            "protocolVersion": "2025-06-18",
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "demo-tools", "version": "0.1.0"},
        }
    elif method == "tools/list":
        result = {"tools": [{"name": n, "description": d, "inputSchema": {"type": "object"}} for n, d in TOOLS.items()]}
    elif method == "tools/call" and params.get("name") in TOOLS:
        text = f"{params['name']} done with {json.dumps(params.get('arguments', {}), sort_keys=True)}"
        result = {"content": [{"type": "text", "text": text}], "isError": False}
    else:
        return _rpc_error(rpc_id, -32601, f"unknown method or tool: {method}")
    result["_meta"] = {"upstream_saw": _seen(request)}
    return web.json_response({"jsonrpc": "2.0", "id": rpc_id, "result": result})


def _rpc_error(rpc_id: Any, code: int, message: str) -> web.Response:
    return web.json_response({"jsonrpc": "2.0", "id": rpc_id, "error": {"code": code, "message": message}})


def build_upstream() -> web.Application:
    app = web.Application()
    app.router.add_get("/api/docs", docs)
    app.router.add_get("/api/docs/{name:.+}", docs)
    app.router.add_route("*", "/api/tickets", tickets)
    app.router.add_route("*", "/api/records/{record}", records)
    app.router.add_post("/api/payments", payments)
    app.router.add_post("/mcp", mcp)
    app.router.add_get("/healthz", lambda _: _ok())
    return app


async def _ok() -> web.Response:
    return web.json_response({"status": "ok"})


def run_upstream(host: str, port: int) -> None:
    web.run_app(build_upstream(), host=host, port=port, access_log=None, print=None)
