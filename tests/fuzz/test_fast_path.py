"""The policy's fast path never decides differently from the full policy (hypothesis, real OPA).

``data.agent.authz.decision`` is ``fast_allow`` where that is defined (one rule body for the common
allow) and ``full_decision`` otherwise (rego/agent/authz/fast.rego). A fast path that allowed one
call the full policy would deny is a bypass, so this asks a real OPA for both documents on the
sidecar's own input examples (moved in time so their task grants are current) with up to three
fields replaced by values an agent could bring about or a bug could produce: other agents,
methods, paths and tools, delegation, limits reached, labels, task scopes and expiry, approvals,
intents, wrong types, absent fields. Every answer must be the same document.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st

from bench.policy import BUILT_AT, shift_times
from tests.real_opa import serve_bundle

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "sidecar" / "schema" / "examples").glob("*.json"))
ABSENT = object()
FUTURE = 10**12
READER, WRITER = "spiffe://demo.local/agent/reader", "spiffe://demo.local/agent/writer"

# (where in the input, values to put there); ABSENT removes the field.
MUTATIONS: list[tuple[tuple[str, ...], list[Any]]] = [
    (("agent", "spiffe_id"), [READER, WRITER, "spiffe://evil.local/agent/reader", f"{READER}/", READER.upper(), None]),
    (("agent", "trust_domain"), ["evil.local", "", None, ABSENT]),
    (("agent",), [None, ABSENT]),
    (("action", "method"), ["GET", "POST", "PUT", "DELETE", "get", "", None]),
    (
        ("action", "path"),
        ["/api/docs/handbook", "/api/tickets", "/api//docs", "/api/docs/../tickets", "/api/docs;x", "/mcp", ""],
    ),
    (("action", "read_only"), [True, False, None]),
    (("parsed_path",), [["api", "docs", "handbook"], ["api", "tickets"], ["mcp"], [], None]),
    (("delegation",), [{"chain": [WRITER], "depth": 1}, {"chain": [], "depth": 1}, None, ABSENT]),
    (("session", "calls_last_minute"), [0, 10**6, -1, "5", None, ABSENT]),
    (("session", "writes"), [0, 10**6, "1", None, ABSENT]),
    (("session", "labels"), [{}, {"pii_read": True}, {"pii_read": "x"}, [], None]),
    (("session",), [None, ABSENT]),
    (("agent_history", "calls_last_minute"), [0, 10**6, None, ABSENT]),
    (("agent_history", "labels"), [{}, {"pii_read": 1}, None]),
    (("task",), [None, ABSENT, {"id": "t", "scopes": ["tickets:write"], "expires_at": FUTURE}]),
    (("task", "scopes"), [[], ["tickets:write"], ["docs:read"], "tickets:write", None]),
    (("task", "expires_at"), [0, FUTURE, "x", None]),
    (("approval",), [None, {"id": "a", "status": "approved"}, {"id": "a", "status": "rejected"}]),
    (
        ("approval_view",),
        [
            None,
            {},
            {"hidden": ["password"]},
            {"cut": ["/arguments/query"], "cut_count": 1, "max_items": 20, "max_string": 1024},
            {"cut": [], "cut_count": 3, "max_items": 20, "max_string": 1024},
        ],
    ),
    (("intent",), [None, {"purpose": "triage", "confidence": 0.1, "asserted": True}]),
    (("intent", "confidence"), [0, 0.1, 1, 1.5, "1", None]),
    (("mcp",), [None, ABSENT]),
    (("mcp", "method"), ["tools/call", "tools/list", "initialize", "resources/read", None]),
    (("mcp", "name"), ["search_docs", "create_ticket", "send_email", "delete_everything", "", None]),
    (("mcp", "tool_pin"), [None, "same", "changed"]),
    (("mcp", "arguments"), [{}, {"to": "someone@evil.example"}, {"recipients": ["a@demo.local"]}, None]),
    (("truncated_body",), [True, False, None]),
    (("parsed_body",), [None, {}, {"to": "someone@evil.example"}]),
]


def examples() -> list[dict[str, Any]]:
    delta = int(time.time()) - BUILT_AT
    return [shift_times(json.loads(path.read_text()), delta) for path in EXAMPLES]


def mutate(doc: dict[str, Any], where: tuple[str, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    parent: Any = out
    for key in where[:-1]:
        if not isinstance(parent.get(key), dict):
            parent[key] = {}
        parent = parent[key]
    if value is ABSENT:
        parent.pop(where[-1], None)
    else:
        parent[where[-1]] = copy.deepcopy(value)
    return out


@pytest.fixture(scope="module")
def opa(opa_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve_bundle(opa_bin, REPO / "rego", tmp_path_factory.mktemp("fast-path-opa")) as url:
        yield url


def ask(session: requests.Session, url: str, rule: str, doc: dict[str, Any]) -> Any:
    response = session.post(f"{url}/v1/data/agent/authz/{rule}", json={"input": doc}, timeout=10)
    response.raise_for_status()
    return response.json().get("result")


def test_the_examples_take_the_fast_path_where_they_are_allowed(opa: str) -> None:
    """Without this, the property below could pass because the fast path is never taken."""
    with requests.Session() as session:
        fast = [ask(session, opa, "fast_allow", doc) is not None for doc in examples()]
        verdicts = [ask(session, opa, "full_decision", doc)["verdict"] for doc in examples()]
    assert [v == "allow" for v in verdicts] == fast and any(fast), (fast, verdicts)


CHANGES = st.lists(
    st.sampled_from(MUTATIONS).flatmap(lambda m: st.tuples(st.just(m[0]), st.sampled_from(m[1]))),
    min_size=1,
    max_size=3,
)


@given(example=st.integers(0, len(EXAMPLES) - 1), changes=CHANGES)
def test_the_fast_path_decides_as_the_full_policy(
    opa: str, example: int, changes: list[tuple[tuple[str, ...], Any]]
) -> None:
    doc = examples()[example]
    for where, value in changes:
        doc = mutate(doc, where, value)
    with requests.Session() as session:
        decision, full = ask(session, opa, "decision", doc), ask(session, opa, "full_decision", doc)
    assert decision == full, (EXAMPLES[example].name, changes)
