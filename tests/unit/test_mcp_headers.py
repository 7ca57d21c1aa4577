"""MCP 2026-07-28 request headers against the body: accepted, mismatched, and the JSON-RPC answer."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from sidecar.body import parse_body
from sidecar.config import IdentityConfig
from sidecar.identity import IdentityResolver
from sidecar.mcp_headers import HEADER_MISMATCH, HeaderMismatch, decode_value
from sidecar.opa_fake import FakeOpa, always
from sidecar.request import CheckRequest
from tests.pipelines import QUIET, make_pipeline

JSON = {"content-type": "application/json"}
V2026 = "2026-07-28"


def rpc(method: str = "tools/call", rpc_id: Any = 7, version: str | None = None, **params: Any) -> bytes:
    if version is not None:
        params["_meta"] = {"io.modelcontextprotocol/protocolVersion": version}
    return json.dumps({"jsonrpc": "2.0", "id": rpc_id, "method": method, "params": params}).encode()


def b64(text: str) -> str:
    return "=?base64?" + base64.b64encode(text.encode()).decode() + "?="


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (rpc(name="search_docs", arguments={"q": "vpn"}), JSON),  # a 2025-06-18 client: no headers
        (rpc(name="search_docs", version=V2026), {**JSON, "mcp-method": "tools/call", "mcp-name": "search_docs"}),
        (rpc(name="Hello, 世界"), {**JSON, "mcp-method": "tools/call", "mcp-name": b64("Hello, 世界")}),
        (rpc("tools/list", version=V2026), {**JSON, "mcp-method": "tools/list", "mcp-protocol-version": V2026}),
        (
            rpc(name="t", arguments={"Region": "us-west1", "n": 42, "on": True}),
            {**JSON, "mcp-param-region": "us-west1", "mcp-param-n": "42", "mcp-param-on": "true"},
        ),
    ],
)
def test_headers_that_agree_are_accepted(body: bytes, headers: dict[str, str]) -> None:
    assert parse_body(body, headers, truncated=False).mcp is not None


@pytest.mark.parametrize(
    ("body", "headers", "message"),
    [
        (rpc(name="search_docs"), {**JSON, "mcp-name": "delete_record"}, "Mcp-Name header 'delete_record'"),
        (rpc(name="x"), {**JSON, "mcp-method": "tools/list"}, "Mcp-Method header"),
        (rpc(name="x", version=V2026), JSON, "requires the Mcp-Method"),
        (rpc(name="x", version=V2026), {**JSON, "mcp-method": "tools/call"}, "requires the Mcp-Name"),
        (
            rpc("tools/list", version=V2026),
            {**JSON, "mcp-method": "tools/list", "mcp-protocol-version": "2025-06-18"},
            "MCP-Protocol-Version",
        ),
        (rpc(name="x"), {**JSON, "mcp-name": "=?base64?***?="}, "Base64"),
        (rpc(name="x"), {**JSON, "mcp-name": "x\u00e9"}, "visible ASCII"),
        (rpc(name="t", arguments={"region": "eu"}), {**JSON, "mcp-param-region": "us-west1"}, "does not match"),
        (rpc(name="t", arguments={}), {**JSON, "mcp-param-region": "us-west1"}, "no argument"),
        (rpc(name="t", arguments={"n": 42}), {**JSON, "mcp-param-n": "43"}, "does not match"),
        (rpc(name="t", arguments={"n": 42}), {**JSON, "mcp-param-n": "forty"}, "does not match"),
        (rpc(name="t", arguments={"on": True}), {**JSON, "mcp-param-on": "True"}, "does not match"),
        (rpc(name="t", arguments={"f": 1.5}), {**JSON, "mcp-param-f": "1.5"}, "does not match"),
    ],
)
def test_mismatches_are_header_mismatch_errors(body: bytes, headers: dict[str, str], message: str) -> None:
    with pytest.raises(HeaderMismatch, match=message) as caught:
        parse_body(body, headers, truncated=False)
    assert caught.value.request_id == 7


def test_decode_value_plain_and_encoded() -> None:
    assert decode_value("us-west1") == "us-west1"
    assert decode_value(b64(" padded ")) == " padded "


async def test_mismatch_answers_the_spec_error_with_the_request_id() -> None:
    opa = FakeOpa(always({"verdict": "allow", "reasons": ["ok"]}))
    identity = IdentityConfig.model_validate({"sources": ["pod"], "pod": {"spiffe_id": "spiffe://demo.local/agent/x"}})
    pipeline = make_pipeline(IdentityResolver(identity, None, None), opa, QUIET)
    headers = {**JSON, "host": "tools", "mcp-method": "tools/call", "mcp-name": "delete_record"}
    decision = await pipeline.check(CheckRequest("POST", "/mcp", headers, rpc(name="search_docs", rpc_id="abc")))
    assert decision.status == 400 and not decision.allowed
    answer = json.loads(decision.body)
    assert answer["id"] == "abc" and answer["error"]["code"] == HEADER_MISMATCH
    assert "Mcp-Name" in answer["error"]["message"]
    assert opa.inputs == []  # never judged: headers and body disagree
