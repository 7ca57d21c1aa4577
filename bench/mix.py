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
from typing import Any

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
    envelope: dict[str, Any] = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": "search_docs", "arguments": {}},
    }
    base = len(json.dumps({**envelope, "params": {**envelope["params"], "arguments": {"q": ""}}}).encode())
    padding = max(0, size - base)
    envelope["params"] = {"name": "search_docs", "arguments": {"q": "v" * padding}}
    return json.dumps(envelope).encode()


def mcp_call(reader_token: str, size: int) -> BenchRequest:
    headers = {
        "authorization": f"Bearer {reader_token}",
        "content-type": "application/json",
        "mcp-method": "tools/call",
        "mcp-name": "search_docs",
    }
    return BenchRequest(f"mcp tools/call {size // 1024} KiB", "POST", "/mcp", headers, mcp_body(size))


def read_under_task(reader_token: str, task_token: str) -> BenchRequest:
    """One REST read made under a task grant: every call lands in that task's session history."""
    headers = {"authorization": f"Bearer {reader_token}", "x-agent-task-token": task_token}
    return BenchRequest("REST read under a task", "GET", "/api/docs/handbook", headers)


def request_mix(reader_token: str, writer_token: str, task_token: str | None) -> list[BenchRequest]:
    reader = {"authorization": f"Bearer {reader_token}"}
    writer = {"authorization": f"Bearer {writer_token}", "content-type": "application/json"}
    if task_token:
        writer["x-agent-task-token"] = task_token
    ticket = b'{"title": "Printer on fire"}'
    return [
        BenchRequest("REST read", "GET", "/api/docs/handbook", reader),
        BenchRequest("REST write", "POST", "/api/tickets", writer, ticket, 201, 201),
        mcp_call(reader_token, 2048),
        BenchRequest("deny", "POST", "/api/tickets", {**reader, "content-type": "application/json"}, ticket, 403, 201),
    ]
