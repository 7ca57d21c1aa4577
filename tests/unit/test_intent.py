import json

import pytest

from sidecar.body import parse_body
from sidecar.intent import declared_intent
from sidecar.mcp import BodyError


def mcp_with_meta(meta: object) -> object:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "x", "_meta": {"intent": meta}},
    }
    return parse_body(json.dumps(body).encode(), {"content-type": "application/json"}, False).mcp


def test_nothing_declared() -> None:
    assert declared_intent({}, None) is None


def test_header_intent() -> None:
    intent = declared_intent({"x-agent-purpose": "triage", "x-agent-confidence": "0.7"}, None)
    assert intent == {"purpose": "triage", "confidence": 0.7, "source": "header", "asserted": True}


def test_lower_confidence_wins_when_both_are_declared() -> None:
    mcp = mcp_with_meta({"purpose": "cleanup", "confidence": 0.2})
    intent = declared_intent({"x-agent-confidence": "0.9"}, mcp)  # type: ignore[arg-type]
    assert intent is not None
    assert intent["confidence"] == 0.2
    assert intent["purpose"] == "cleanup"


def test_tool_arguments_never_set_intent() -> None:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {
            "name": "x",
            "arguments": {"intent": {"purpose": "admin", "confidence": 1}, "confidence": 1},
        },
    }
    mcp = parse_body(json.dumps(body).encode(), {"content-type": "application/json"}, False).mcp
    assert declared_intent({}, mcp) is None


@pytest.mark.parametrize("value", ["high", "1.5", "-0.1", "nan", "inf", ""])
def test_bad_confidence_header(value: str) -> None:
    with pytest.raises(BodyError, match="confidence"):
        declared_intent({"x-agent-confidence": value}, None)


@pytest.mark.parametrize("meta", ["x", {"confidence": True}, {"purpose": 5}, {"purpose": "p" * 600}])
def test_bad_meta_intent(meta: object) -> None:
    with pytest.raises(BodyError):
        declared_intent({}, mcp_with_meta(meta))  # type: ignore[arg-type]
