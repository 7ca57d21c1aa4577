"""The shared agent client without a stack: the requests it builds (what the bench's load sends
too), token reuse, and what it sends on the wire to a loopback server standing in for Envoy."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest

from devstack.agent_client import AgentClient, AgentClientError, Tokens, agent_headers, approval_id, jsonrpc


class _Minter:
    def __init__(self) -> None:
        self.minted: list[tuple[str, int, dict[str, Any] | None]] = []

    def mint_jwt(self, spiffe_id: str, /, *, ttl: int = 300, extra_claims: dict[str, Any] | None = None) -> str:
        self.minted.append((spiffe_id, ttl, extra_claims))
        return f"jwt-{len(self.minted)}"


def test_agent_headers_carry_what_the_agent_holds_and_extra_wins() -> None:
    assert agent_headers(None) == {}
    assert agent_headers("t", task="g", approval="a") == {
        "authorization": "Bearer t",
        "x-agent-task-token": "g",
        "x-agent-approval-id": "a",
    }
    assert agent_headers("t", extra={"authorization": "Bearer forged"}) == {"authorization": "Bearer forged"}


def test_jsonrpc_builds_the_mcp_headers_and_envelope() -> None:
    headers, body = jsonrpc("tools/call", "search_docs", {"q": "vpn"}, rpc_id=9, _meta={"intent": "x"})
    assert headers == {"mcp-method": "tools/call", "mcp-name": "search_docs"}
    assert body == {
        "jsonrpc": "2.0",
        "id": 9,
        "method": "tools/call",
        "params": {"name": "search_docs", "arguments": {"q": "vpn"}, "_meta": {"intent": "x"}},
    }
    assert jsonrpc("tools/list") == (
        {"mcp-method": "tools/list"},
        {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}},
    )


def test_tokens_are_fresh_by_default_and_reused_only_when_asked() -> None:
    minter = _Minter()
    fresh = Tokens(minter)
    assert fresh.token("a") != fresh.token("a")
    now = [0.0]
    reused = Tokens(minter, ttl=100, reuse_s=60, clock=lambda: now[0])
    first = reused.token("a")
    now[0] = 59.9
    assert reused.token("a") == first and reused.token("b") != first
    now[0] = 60.0
    assert reused.token("a") != first, "re-minted before it expires"
    assert reused.token("a", acr="mfa") != reused.token("a"), "a token with claims is never the cached one"
    assert minter.minted[-1] == ("a", 100, {"acr": "mfa"})
    with pytest.raises(ValueError):
        Tokens(minter, ttl=60, reuse_s=60)


class _Envoy(BaseHTTPRequestHandler):
    seen: ClassVar[list[tuple[str, str, dict[str, str], bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        _Envoy.seen.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        status, answer = (201, {"id": "t-1", "token": "grant"}) if self.path == "/v1/tasks" else (401, {})
        payload = json.dumps(answer).encode()
        self.send_response(status)
        if status == 401:
            self.send_header("x-authz-approval-id", "ap-1")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        return None


class _Stack:
    def __init__(self, url: str) -> None:
        self.egress_url = self.sidecar_url = url
        self.trust_domain = _Minter()


@pytest.fixture
def stack() -> Iterator[_Stack]:
    _Envoy.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Envoy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield _Stack(f"http://127.0.0.1:{server.server_address[1]}")
    server.shutdown()


def test_a_call_through_envoy_and_the_task_api(stack: _Stack) -> None:
    client = AgentClient(stack)  # type: ignore[arg-type]
    grant = client.open_task("spiffe://demo.local/agent/writer", "triage", ["tickets:write"])
    assert grant == {"id": "t-1", "token": "grant"}
    answer = client.mcp("spiffe://demo.local/agent/writer", "tools/call", "delete_record", {"id": 1}, task="grant")
    assert approval_id(answer) == "ap-1"
    (_, task_path, task_headers, task_body), (_, path, headers, body) = _Envoy.seen
    assert task_path == "/v1/tasks" and task_headers["authorization"] == "Bearer jwt-1"
    assert json.loads(task_body) == {"purpose": "triage", "scopes": ["tickets:write"], "ttl_seconds": 300}
    assert path == "/mcp" and headers["authorization"] == "Bearer jwt-2" and headers["x-agent-task-token"] == "grant"
    assert (headers["mcp-method"], headers["mcp-name"]) == ("tools/call", "delete_record")
    assert json.loads(body)["params"] == {"name": "delete_record", "arguments": {"id": 1}}
    with pytest.raises(AgentClientError) as refused:
        client.delegate("spiffe://demo.local/agent/writer", "t-1", "spiffe://demo.local/agent/reader", ["x"])
    assert refused.value.response.status_code == 401
