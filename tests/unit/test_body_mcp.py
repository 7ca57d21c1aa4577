import json

import pytest

from sidecar.body import parse_body
from sidecar.input import mcp_input
from sidecar.mcp import MAX_DEPTH, BodyError

JSON = {"content-type": "application/json"}


def rpc(method: str = "tools/call", **params: object) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": 7, "method": method, "params": params}).encode()


def test_tools_call() -> None:
    parsed = parse_body(rpc(name="search_docs", arguments={"q": "vpn"}), JSON, truncated=False)
    assert parsed.mcp is not None
    assert mcp_input(parsed.mcp) == {
        "method": "tools/call",
        "name": "search_docs",
        "arguments": {"q": "vpn"},
        "id": 7,
        "is_notification": False,
        "tool_pin": None,
    }
    assert parsed.parsed_body["params"]["name"] == "search_docs"


def test_headers_that_agree_and_notifications() -> None:
    headers = {**JSON, "mcp-method": "tools/call", "mcp-name": "x"}
    assert parse_body(rpc(name="x"), headers, truncated=False).mcp is not None
    note = json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}).encode()
    parsed = parse_body(note, JSON, truncated=False)
    assert parsed.mcp is not None and parsed.mcp.is_notification and parsed.mcp.id is None


def test_content_type_lie_is_still_read_as_json_rpc() -> None:
    parsed = parse_body(rpc(name="delete_record"), {"content-type": "text/plain"}, truncated=False)
    assert parsed.mcp is not None and parsed.mcp.name == "delete_record"
    assert parsed.parsed_body is None  # opa-envoy-plugin parses JSON content types only


def test_plain_rest_json_and_opaque_bodies() -> None:
    parsed = parse_body(b'{"title": "x"}', JSON, truncated=False)
    assert parsed.mcp is None and parsed.parsed_body == {"title": "x"}
    assert parse_body(b"hello", {}, truncated=False).mcp is None
    assert parse_body(b"{not json", {"content-type": "text/plain"}, truncated=False).mcp is None


def test_truncated_body_is_never_parsed() -> None:
    parsed = parse_body(rpc(name="x")[:20], JSON, truncated=True)
    assert parsed.mcp is None and parsed.parsed_body is None


@pytest.mark.parametrize(
    ("body", "headers", "message"),
    [
        (b"[" + rpc(name="x") + b"]", JSON, "batch"),
        (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","method":"ping"}', JSON, "duplicate"),
        (b"[" * 100_000 + b"]" * 100_000, JSON, "nested"),
        (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), JSON, "nested"),
        (b'{"a": "\xff\xfe"}', JSON, "UTF-8"),
        (b'{"a": NaN}', JSON, "NaN"),
        (b'{"a": 1e999}', JSON, "finite"),
        (b"{not json", JSON, "not valid JSON"),
        (rpc(name="search_docs"), {**JSON, "mcp-name": "delete_record"}, "Mcp-Name"),
        (rpc(name="x"), {**JSON, "mcp-method": "tools/list"}, "Mcp-Method"),
        (b"", {"mcp-method": "tools/call"}, "without a JSON-RPC body"),
        (b'{"title": "x"}', {**JSON, "mcp-method": "tools/call"}, "without a JSON-RPC body"),
        (b'{"jsonrpc": "1.0", "method": "x"}', JSON, "2.0"),
        (b'{"jsonrpc": "2.0", "id": 1, "result": {}}', JSON, "no method"),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": []}', JSON, "params"),
        (b'{"jsonrpc": "2.0", "id": true, "method": "ping"}', JSON, "id"),
        (
            b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"arguments": {}}}',
            JSON,
            "params.name",
        ),
        (rpc(name="x", arguments=[1]), JSON, "arguments"),
        (rpc(name="x", _meta="hi"), JSON, "_meta"),
    ],
)
def test_rejected_bodies(body: bytes, headers: dict[str, str], message: str) -> None:
    with pytest.raises(BodyError, match=message):
        parse_body(body, headers, truncated=False)
