"""The request path's part in the response path: the pin state in the input, the context left for ext_proc."""

from __future__ import annotations

import json
from typing import Any

from sidecar.config import IdentityConfig
from sidecar.identity import IdentityResolver
from sidecar.mcp_headers import HEADER_MISMATCH, PROTOCOL_META, encode_declared
from sidecar.mcp_response.pending import PendingResponses, pin_scope
from sidecar.opa_fake import FakeOpa, Query
from sidecar.request import CheckRequest
from sidecar.state import StoreError
from sidecar.state.memory import MemoryStore
from tests.pipelines import QUIET, make_pipeline

AGENT = "spiffe://demo.local/agent/reader"
SCOPE = pin_scope(AGENT, None, None)


def verdict(query: Query) -> dict[str, Any]:
    mcp = query.input["mcp"] or {}
    if mcp.get("tool_pin") == "changed":
        return {"verdict": "deny", "reasons": ["changed"]}
    return {"verdict": "allow", "reasons": ["ok"]}


def setup() -> tuple[Any, FakeOpa, MemoryStore, PendingResponses]:
    identity = IdentityConfig.model_validate({"sources": ["pod"], "pod": {"spiffe_id": AGENT}})
    opa, store, pending = FakeOpa(verdict), MemoryStore(), PendingResponses()
    pipeline = make_pipeline(IdentityResolver(identity, None, None), opa, QUIET, responses=pending, store=store)
    return pipeline, opa, store, pending


def call(method: str, name: str | None = None) -> CheckRequest:
    params: dict[str, Any] = {"name": name, "arguments": {}} if name else {}
    body = json.dumps({"jsonrpc": "2.0", "id": 3, "method": method, "params": params}).encode()
    return CheckRequest("POST", "/mcp", {"host": "tools", "content-type": "application/json"}, body)


async def test_an_allowed_mcp_call_leaves_its_context_under_its_decision_id() -> None:
    pipeline, opa, _, pending = setup()
    decision = await pipeline.check(call("tools/call", "search_docs"))
    assert decision.allowed
    context = pending.take(decision.decision_id)
    assert context is not None and context.method == "tools/call" and context.name == "search_docs"
    assert context.request_id == 3 and context.pin_scope == SCOPE
    assert context.request_input == opa.inputs[0]


async def test_the_policy_sees_a_changed_tool_and_a_refused_call_leaves_nothing() -> None:
    pipeline, opa, store, pending = setup()
    await store.pin_tools(SCOPE, {"search_docs": "h1"}, 60)
    await store.pin_tools(SCOPE, {"search_docs": "h2"}, 60)
    decision = await pipeline.check(call("tools/call", "search_docs"))
    assert not decision.allowed and opa.inputs[0]["mcp"]["tool_pin"] == "changed"
    assert len(pending) == 0
    await pipeline.check(call("tools/call", "get_record"))
    assert opa.inputs[1]["mcp"]["tool_pin"] is None


async def test_the_store_down_fails_closed() -> None:
    pipeline, opa, store, _ = setup()

    async def down(scope: str, name: str) -> None:
        raise StoreError("store down")

    store.tool_pin = down  # type: ignore[method-assign]
    decision = await pipeline.check(call("tools/call", "search_docs"))
    assert decision.status == 503 and opa.inputs == []


def tools_call(arguments: dict[str, Any], headers: dict[str, str], version: str = "2026-07-28") -> CheckRequest:
    params = {"name": "search_docs", "arguments": arguments, "_meta": {PROTOCOL_META: version}}
    body = json.dumps({"jsonrpc": "2.0", "id": "c-1", "method": "tools/call", "params": params}).encode()
    mcp_headers = {"mcp-method": "tools/call", "mcp-name": "search_docs", "mcp-protocol-version": version}
    return CheckRequest(
        "POST", "/mcp", {"host": "tools", "content-type": "application/json", **mcp_headers, **headers}, body
    )


SEARCH = {"type": "object", "properties": {"index_name": {"type": "string", "x-mcp-header": "Index"}}}


async def test_param_headers_follow_the_annotations_the_session_listed() -> None:
    pipeline, opa, store, _ = setup()
    renamed = tools_call({"index_name": "eu"}, {"mcp-param-index": "eu"})
    # Never listed in this scope: the header is compared by name, and names no argument.
    before = await pipeline.check(renamed)
    assert before.status == 400 and json.loads(before.body)["error"]["code"] == HEADER_MISMATCH
    await store.pin_tools(SCOPE, {"search_docs": "h1"}, 60, {"search_docs": encode_declared(SEARCH)})
    assert (await pipeline.check(renamed)).allowed
    assert opa.inputs[-1]["mcp"]["arguments"] == {"index_name": "eu"}
    asked = len(opa.inputs)
    for lying in (
        tools_call({"index_name": "eu"}, {"mcp-param-index": "us"}),  # a router would act on "us"
        tools_call({"index_name": "eu"}, {}),  # the header a router needs, left out
        tools_call({}, {"mcp-param-index": "us"}),  # a header with no value behind it
    ):
        decision = await pipeline.check(lying)
        answer = json.loads(decision.body)
        assert decision.status == 400 and answer["id"] == "c-1" and answer["error"]["code"] == HEADER_MISMATCH
    assert len(opa.inputs) == asked  # never judged
    assert (await pipeline.check(tools_call({"index_name": "eu"}, {}, version="2025-06-18"))).allowed
