"""Built input documents must validate against the shipped JSON Schema, as must the examples."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from spiffe import SpiffeId

from sidecar.body import EMPTY, parse_body
from sidecar.identity import Identity
from sidecar.input import build_input, normalise_host
from sidecar.request import CheckRequest
from sidecar.state import TaskRecord

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "sidecar" / "schema"
SCHEMA = json.loads((SCHEMA_DIR / "input.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def request(
    method: str = "GET", path: str = "/api/docs/a%20b?x=1&x=2&y=", body: bytes = b"", /, **headers: str
) -> CheckRequest:
    return CheckRequest(method, path, {"host": "Tools.Demo.Local.:8080", "x-request-id": "r1", **headers}, body)


def test_schema_is_valid_and_examples_validate() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    examples = sorted((SCHEMA_DIR / "examples").glob("*.json"))
    assert examples
    for example in examples:
        VALIDATOR.validate(json.loads(example.read_text()))


def test_rest_input() -> None:
    identity = Identity(
        SpiffeId("spiffe://demo.local/agent/reader"),
        "jwt_svid",
        {"sub": "x"},
        ("spiffe://demo.local/agent/boss",),
    )
    task = TaskRecord(
        id="t",
        sub="spiffe://demo.local/agent/a",
        purpose="p",
        scopes=["docs:read"],
        issued_at=1,
        expires_at=2,
        root_id="t",
    )
    doc = build_input(
        request(), identity=identity, body=EMPTY, intent=None, task=task, delegation_chain=identity.delegation_chain
    )
    VALIDATOR.validate(doc)
    assert doc["parsed_path"] == ["api", "docs", "a b"]
    assert doc["parsed_query"] == {"x": ["1", "2"], "y": [""]}
    assert doc["action"] == {
        "method": "GET",
        "host": "tools.demo.local",
        "path": "/api/docs/a b",
        "read_only": True,
    }
    assert doc["attributes"]["request"]["http"]["id"] == "r1"
    assert doc["attributes"]["source"]["principal"] == ""  # only a peer certificate sets it
    assert doc["delegation"] == {"chain": ["spiffe://demo.local/agent/boss"], "depth": 1}
    assert doc["task"] == {
        "id": "t",
        "purpose": "p",
        "scopes": ["docs:read"],
        "issued_at": 1,
        "expires_at": 2,
        "parent_id": None,
        "root_id": "t",
        "depth": 0,
    }
    assert doc["agent"]["identity_source"] == "jwt_svid"


def test_mcp_input_with_xfcc_identity_hides_internal_headers() -> None:
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": "a",
            "method": "tools/call",
            "params": {"name": "t", "arguments": {}},
        }
    ).encode()
    req = request(
        "POST",
        "/mcp",
        body,
        **{"content-type": "application/json", "x-authz-xfcc-secret": "s3cret"},
    )
    identity = Identity(SpiffeId("spiffe://demo.local/agent/writer"), "xfcc")
    doc = build_input(
        req,
        identity=identity,
        body=parse_body(body, req.headers, False),
        intent={"purpose": None, "confidence": 0.5, "source": "header", "asserted": True},
        hidden_headers=frozenset({"x-authz-xfcc-secret"}),
    )
    VALIDATOR.validate(doc)
    assert "x-authz-xfcc-secret" not in doc["attributes"]["request"]["http"]["headers"]
    assert doc["attributes"]["source"]["principal"] == "spiffe://demo.local/agent/writer"
    assert doc["mcp"]["name"] == "t"
    assert doc["action"]["read_only"] is False


def test_anonymous_binary_and_root_inputs() -> None:
    doc = build_input(request("PUT", "/", b"\xff\x00"), identity=None, body=EMPTY, intent=None)
    VALIDATOR.validate(doc)
    assert doc["agent"] is None
    assert doc["parsed_path"] == [""]
    assert doc["action"]["path"] == "/"
    assert doc["attributes"]["request"]["http"]["rawBody"] == "/wA="


def test_truncated_flag() -> None:
    doc = build_input(
        request("POST", "/x", b"{", **{"x-envoy-auth-partial-body": "true"}),
        identity=None,
        body=EMPTY,
        intent=None,
    )
    assert doc["truncated_body"] is True and doc["parsed_body"] is None


MCP_CALL = json.dumps(
    {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "t", "arguments": {"q": "x" * 300}}}
).encode()


def body_forms(body: bytes, content_type: str, *, once: bool, truncated: bool = False) -> dict[str, object]:
    """Where the body is in the input: the text, parsed_body and input.mcp's arguments."""
    headers = {"content-type": content_type, **({"x-envoy-auth-partial-body": "true"} if truncated else {})}
    req = request("POST", "/mcp", body, **headers)
    doc = build_input(req, identity=None, body=parse_body(body, req.headers, truncated), intent=None, body_once=once)
    VALIDATOR.validate(doc)
    http = doc["attributes"]["request"]["http"]
    assert http["size"] == len(body)
    return {
        "text": http.get("body"),
        "raw": http.get("rawBody"),
        "parsed_body": doc["parsed_body"],
        "arguments": doc["mcp"]["arguments"] if doc["mcp"] else None,
    }


@pytest.mark.parametrize("content_type", ["application/json", "text/plain"])
def test_a_json_rpc_body_reaches_the_policy_once_as_input_mcp(content_type: str) -> None:
    assert body_forms(MCP_CALL, content_type, once=True) == {
        "text": None,  # absent, not "": an equality test for an empty body cannot pass
        "raw": None,
        "parsed_body": None,
        "arguments": {"q": "x" * 300},
    }


def test_other_json_reaches_the_policy_once_as_parsed_body() -> None:
    assert body_forms(b'{"a": [1, 2]}', "application/json", once=True) == {
        "text": None,
        "raw": None,
        "parsed_body": {"a": [1, 2]},
        "arguments": None,
    }


@pytest.mark.parametrize(
    ("body", "content_type", "truncated", "text", "raw"),
    [
        (b"name=a&b=c", "application/x-www-form-urlencoded", False, "name=a&b=c", None),
        (b'{"a": 1', "application/json", True, '{"a": 1', None),  # cut at the buffer limit: never parsed
        (b"\xff\x00", "application/octet-stream", False, "", "/wA="),
    ],
)
def test_a_body_with_no_parsed_form_reaches_the_policy_as_it_came(
    body: bytes, content_type: str, truncated: bool, text: str, raw: str | None
) -> None:
    for once in (True, False):
        forms = body_forms(body, content_type, once=once, truncated=truncated)
        assert (forms["text"], forms["raw"], forms["parsed_body"]) == (text, raw, None)


def test_input_body_all_sends_every_form() -> None:
    """``opa.input_body: all``: the text and parsed_body as opa-envoy-plugin sends them, and input.mcp."""
    forms = body_forms(MCP_CALL, "application/json", once=False)
    assert forms["text"] == MCP_CALL.decode()
    assert forms["parsed_body"] == json.loads(MCP_CALL)
    assert forms["arguments"] == {"q": "x" * 300}


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("API.example.com.:443", "api.example.com"),
        ("a.b", "a.b"),
        ("[::1]:80", "[::1]"),
        ("x.", "x"),
    ],
)
def test_normalise_host(host: str, expected: str) -> None:
    assert normalise_host(host) == expected


def test_credential_headers_reach_the_policy_without_signatures() -> None:
    req = request(**{"authorization": "Bearer aaa.bbb.ccc", "x-custom-task": "ddd.eee.fff", "x-api-key": "k"})
    doc = build_input(
        req,
        identity=None,
        body=EMPTY,
        intent=None,
        credential_headers=frozenset({"authorization", "x-custom-task", "x-api-key"}),
    )
    headers = doc["attributes"]["request"]["http"]["headers"]
    assert headers["authorization"] == "Bearer aaa.bbb."
    assert headers["x-custom-task"] == "ddd.eee."
    assert headers["x-api-key"] == "[withheld]"
