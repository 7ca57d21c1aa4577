"""The fixed request mix: the same four requests, in the same order, for every setup.

1. REST read     reader  GET  /api/docs/handbook                        allow (200)
2. REST write    writer  POST /api/tickets under a task grant          allow (201)
3. MCP call      reader  POST /mcp tools/call search_docs, 2 KiB body  allow (200)
4. deny          reader  POST /api/tickets                              deny  (403)

Through Envoy without authz every request reaches the upstream (the deny becomes a 201).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from devstack.agent_client import agent_headers, jsonrpc

READER = "spiffe://demo.local/agent/reader"
WRITER = "spiffe://demo.local/agent/writer"
TOKEN_TTL = 4 * 3600  # JWT-SVIDs are reused for the whole run, as an agent reuses its SVID


@dataclass(frozen=True)
class BenchRequest:
    name: str
    method: str
    path: str
    headers: dict[str, str]
    body: bytes = b""
    expect_authz: int = 200  # status with an authorizer in front
    expect_direct: int = 200  # status through Envoy without authz
    extra: dict[str, str] = field(default_factory=dict)

    def expected(self, authz: bool) -> int:
        return self.expect_authz if authz else self.expect_direct


def mcp_body(size: int) -> bytes:
    """A JSON-RPC tools/call of exactly ``size`` bytes (the query argument pads it)."""

    def body(query: str) -> bytes:
        return json.dumps(jsonrpc("tools/call", "search_docs", {"q": query}, rpc_id=7)[1]).encode()

    return body("v" * max(0, size - len(body(""))))


def mcp_call(reader_token: str, size: int) -> BenchRequest:
    mcp_headers, _ = jsonrpc("tools/call", "search_docs")
    headers = agent_headers(reader_token, extra={"content-type": "application/json", **mcp_headers})
    return BenchRequest(f"mcp tools/call {size // 1024} KiB", "POST", "/mcp", headers, mcp_body(size))


def read_under_task(reader_token: str, task_token: str) -> BenchRequest:
    """One REST read made under a task grant: every call lands in that task's session history."""
    headers = agent_headers(reader_token, task=task_token)
    return BenchRequest("REST read under a task", "GET", "/api/docs/handbook", headers)


def request_mix(reader_token: str, writer_token: str, task_token: str | None) -> list[BenchRequest]:
    reader = agent_headers(reader_token)
    writer = agent_headers(writer_token, task=task_token or None, extra={"content-type": "application/json"})
    ticket = b'{"title": "Printer on fire"}'
    return [
        BenchRequest("REST read", "GET", "/api/docs/handbook", reader),
        BenchRequest("REST write", "POST", "/api/tickets", writer, ticket, 201, 201),
        mcp_call(reader_token, 2048),
        BenchRequest("deny", "POST", "/api/tickets", {**reader, "content-type": "application/json"}, ticket, 403, 201),
    ]
