"""The benchmark's upstream: the demo upstream's routes and answers, without its credential check.

The demo upstream (devstack/upstream.py) is also a resource server: it verifies the credential
the sidecar mints and refuses the agent's own JWT-SVID. Only the sidecar setups could pass that,
and verifying is the upstream's work, not mediation's, so every setup of the benchmark gets this
same plain upstream instead: same paths, same JSON shape, no checks.
"""

from __future__ import annotations

import argparse
import itertools
import json
from typing import Any

from aiohttp import web

_ids = itertools.count(1)


def _seen(request: web.Request) -> dict[str, Any]:
    return {
        "decision_id": request.headers.get("x-authz-decision-id"),
        "spiffe_id": request.headers.get("x-authz-spiffe-id"),
        "rule": request.headers.get("x-authz-rule"),
    }


async def docs(request: web.Request) -> web.Response:
    name = request.match_info.get("name", "index")
    return web.json_response({"doc": name, "content": f"Contents of {name}", "upstream_saw": _seen(request)})


async def tickets(request: web.Request) -> web.Response:
    if request.method == "POST":
        await request.read()
        return web.json_response({"ticket": next(_ids), "upstream_saw": _seen(request)}, status=201)
    return web.json_response({"tickets": [], "upstream_saw": _seen(request)})


async def mcp(request: web.Request) -> web.Response:
    message = json.loads(await request.read())
    params = message.get("params") or {}
    text = f"{params.get('name')} done"
    result = {"content": [{"type": "text", "text": text}], "isError": False, "_meta": {"upstream_saw": _seen(request)}}
    return web.json_response({"jsonrpc": "2.0", "id": message.get("id"), "result": result})


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def build_app() -> web.Application:
    app = web.Application(client_max_size=1 << 20)
    app.router.add_get("/api/docs/{name:.+}", docs)
    app.router.add_route("*", "/api/tickets", tickets)
    app.router.add_post("/mcp", mcp)
    app.router.add_get("/healthz", healthz)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args, _ = parser.parse_known_args()
    web.run_app(build_app(), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
