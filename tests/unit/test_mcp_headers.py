"""MCP 2026-07-28 request headers against the body: accepted, mismatched, and the JSON-RPC answer."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from sidecar.body import parse_body
from sidecar.config import IdentityConfig
from sidecar.identity import IdentityResolver
from sidecar.mcp_headers import (
    HEADER_MISMATCH,
    HeaderMismatch,
    InvalidAnnotation,
    ParamHeader,
    check_param_headers,
    declared_param_headers,
    decode_declared,
    decode_value,
    encode_declared,
)
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


# -- Mcp-Param-{Name} by the tool's x-mcp-header annotations ---------------------------------------

REGION = {"type": "string", "x-mcp-header": "Region"}


def schema(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties}


def test_annotations_are_read_from_statically_reachable_properties() -> None:
    declared = declared_param_headers(
        schema(
            tenant_id=REGION,
            query={"type": "string"},
            options=schema(limit={"type": "integer", "x-mcp-header": "Limit"}, dry={"type": "boolean"}),
            confirm={"type": "boolean", "x-mcp-header": "Confirm"},
            zone={"type": ["string", "null"], "x-mcp-header": "Zone"},  # optional: null is no value
        )
    )
    assert declared == (
        ParamHeader("confirm", ("confirm",)),
        ParamHeader("limit", ("options", "limit")),
        ParamHeader("region", ("tenant_id",)),
        ParamHeader("zone", ("zone",)),
    )
    assert declared_param_headers({"type": "object"}) == () and declared_param_headers(None) == ()
    # a property named like the keyword is a property; data keywords hold data, not annotations
    assert declared_param_headers(schema(**{"x-mcp-header": {"type": "string", "default": {"x-mcp-header": 1}}})) == ()


@pytest.mark.parametrize(
    ("tool_schema", "reason"),
    [
        (schema(n={"type": "number", "x-mcp-header": "N"}), "type is not"),
        (schema(n={"type": ["string", "integer"], "x-mcp-header": "N"}), "type is not"),
        (schema(n={"type": ["number", "null"], "x-mcp-header": "N"}), "type is not"),
        (schema(n={"x-mcp-header": "N"}), "type is not"),
        (schema(o={"type": "object", "x-mcp-header": "O"}), "type is not"),
        (schema(r={"type": "string", "x-mcp-header": ""}), "token"),
        (schema(r={"type": "string", "x-mcp-header": "Re gion"}), "token"),
        (schema(r={"type": "string", "x-mcp-header": "Region\r\nX-Evil: 1"}), "token"),
        (schema(r={"type": "string", "x-mcp-header": 7}), "token"),
        (schema(a=REGION, b={"type": "string", "x-mcp-header": "REGION"}), "unique"),
        ({"type": "object", "x-mcp-header": "Root"}, "not a property"),
        (schema(list={"type": "array", "items": REGION}), "not a property"),
        (schema(choice={"oneOf": [schema(r=REGION)]}), "not a property"),
        ({**schema(), "$defs": {"r": REGION}}, "not a property"),
        (schema(c={"if": schema(r=REGION), "then": {}}), "not a property"),
    ],
)
def test_invalid_annotations_make_the_definition_invalid(tool_schema: dict[str, Any], reason: str) -> None:
    with pytest.raises(InvalidAnnotation, match=reason):
        declared_param_headers(tool_schema)
    with pytest.raises(InvalidAnnotation, match=reason):
        decode_declared(encode_declared(tool_schema))


def test_a_schema_nested_past_the_bound_is_invalid() -> None:
    deep: dict[str, Any] = {"type": "string"}
    for _ in range(70):
        deep = schema(p=deep)
    with pytest.raises(InvalidAnnotation, match="deeper"):
        declared_param_headers(deep)


@pytest.mark.parametrize(
    "text", ["", "[]", "{}", '{"params": [["a"]]}', '{"params": [["a", []]]}', '{"params": [[1, ["a"]]]}']
)
def test_an_unreadable_record_is_invalid(text: str) -> None:
    with pytest.raises(InvalidAnnotation):
        decode_declared(text)


DECLARED = encode_declared(
    schema(tenant_id=REGION, options=schema(limit={"type": "integer", "x-mcp-header": "Limit"}), q={"type": "string"})
)
V2026_META = {"io.modelcontextprotocol/protocolVersion": V2026}


def params(headers: dict[str, str], arguments: dict[str, Any], meta: dict[str, Any] | None = None) -> None:
    check_param_headers(headers, arguments=arguments, meta=meta or V2026_META, request_id=7, declared=DECLARED)


@pytest.mark.parametrize(
    ("headers", "arguments"),
    [
        ({"mcp-param-region": "eu"}, {"tenant_id": "eu", "q": "x"}),  # named by the annotation, not the argument
        ({"mcp-param-region": b64("eu west")}, {"tenant_id": "eu west"}),
        ({"mcp-param-limit": "10", "mcp-param-region": "eu"}, {"tenant_id": "eu", "options": {"limit": 10}}),
        ({"mcp-param-limit": "10.0", "mcp-param-region": "eu"}, {"tenant_id": "eu", "options": {"limit": 10}}),
        ({}, {"q": "x"}),  # no value: no header
        ({}, {"tenant_id": None, "options": None}),  # null is no value
        ({"mcp-param-q": "x"}, {"q": "x"}),  # not annotated, but names an argument: it must agree
    ],
)
def test_annotated_headers_that_agree_are_accepted(headers: dict[str, str], arguments: dict[str, Any]) -> None:
    params(headers, arguments)


@pytest.mark.parametrize(
    ("headers", "arguments", "message"),
    [
        ({"mcp-param-region": "us"}, {"tenant_id": "eu"}, "does not match body value of argument 'tenant_id'"),
        ({}, {"tenant_id": "eu"}, "mcp-param-region header is missing"),  # a value in the body needs its header
        ({"mcp-param-region": "eu"}, {}, "has no value in the body"),
        ({"mcp-param-region": "eu"}, {"tenant_id": None}, "has no value in the body"),
        ({"mcp-param-region": "eu"}, {"tenant_id": "eu", "options": {"limit": 5}}, "mcp-param-limit header is missing"),
        ({"mcp-param-limit": "5", "mcp-param-region": "eu"}, {"tenant_id": "eu", "options": {"limit": 6}}, "limit"),
        ({"mcp-param-limit": "5"}, {"options": {"limit": 2**53 + 4}}, "does not match"),  # beyond the safe range
        ({"mcp-param-region": "=?base64?***?="}, {"tenant_id": "eu"}, "Base64"),
        ({"mcp-param-q": "y"}, {"q": "x"}, "does not match body value of argument 'q'"),
        ({"mcp-param-zone": "eu"}, {}, "has no argument 'zone'"),  # declared by nobody: a router may still act on it
        ({"mcp-param-tenant_id": "us", "mcp-param-region": "eu"}, {"tenant_id": "eu"}, "argument 'tenant_id'"),
    ],
)
def test_annotated_headers_that_disagree_are_mismatches(
    headers: dict[str, str], arguments: dict[str, Any], message: str
) -> None:
    with pytest.raises(HeaderMismatch, match=message) as caught:
        params(headers, arguments)
    assert caught.value.request_id == 7


def test_an_older_client_need_not_send_the_annotated_headers() -> None:
    params({}, {"tenant_id": "eu"}, meta={"io.modelcontextprotocol/protocolVersion": "2025-06-18"})
    with pytest.raises(HeaderMismatch, match="does not match"):  # but what it sends must agree
        params({"mcp-param-region": "us"}, {"tenant_id": "eu"}, meta={})


def test_a_tool_with_invalid_annotations_is_refused() -> None:
    invalid = encode_declared(schema(n={"type": "number", "x-mcp-header": "N"}))
    with pytest.raises(HeaderMismatch, match="annotations are invalid"):
        check_param_headers({}, arguments={}, meta={}, request_id=7, declared=invalid)
