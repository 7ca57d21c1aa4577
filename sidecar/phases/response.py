"""The request path's part in the MCP response path: pinned tools in, a context out.

``ReadToolPin`` (before the policy) tells the policy whether the tool a ``tools/call`` names
changed its definition since the agent's session first listed it (``input.mcp.tool_pin``), and
checks the call's ``Mcp-Param-*`` headers against the ``x-mcp-header`` annotations of the
definition the session listed last (by argument name when it never listed the tool).
``ExpectResponse`` (after an allow) leaves the call's context for the ext_proc server under
the decision id, and on an approved retry of a changed tool accepts its new definition."""

from __future__ import annotations

from dataclasses import replace

from sidecar.call import Call
from sidecar.mcp_headers import HEADER_MISMATCH, HeaderMismatch, check_param_headers
from sidecar.mcp_response.judge import TOOL_CALL
from sidecar.mcp_response.pending import PendingResponses, ResponseContext, pin_scope
from sidecar.outcome import Decision, RpcContext
from sidecar.sessions import MCP_SESSION_HEADER
from sidecar.state import Store, StoreError


def scope_of(call: Call) -> str | None:
    if call.identity is None:
        return None
    task_id = call.task.id if call.task else None
    return pin_scope(str(call.identity.spiffe_id), task_id, call.request.headers.get(MCP_SESSION_HEADER))


class ReadToolPin:
    stage = "tool_pin"

    def __init__(self, store: Store) -> None:
        self._store = store

    async def run(self, call: Call) -> Decision | None:
        mcp, scope = call.body.mcp, scope_of(call)
        if mcp is None:
            return None
        listed: str | None = None
        if mcp.method == TOOL_CALL and mcp.name is not None and scope is not None:
            try:
                pin = await self._store.tool_pin(scope, mcp.name)
            except StoreError as exc:
                return call.refused(exc)
            if pin is not None:
                call.body = replace(call.body, mcp=replace(mcp, tool_pin=pin.state))
                listed = pin.param_headers
        try:
            check_param_headers(
                call.request.headers, arguments=mcp.arguments, meta=mcp.meta, request_id=mcp.id, declared=listed
            )
        except HeaderMismatch as exc:  # the spec's JSON-RPC error, as ReadRequest answers the others
            call.rpc = RpcContext(exc.request_id, code=HEADER_MISMATCH)
            return call.refused(exc)
        return None


class ExpectResponse:
    stage = "response"

    def __init__(self, pending: PendingResponses, store: Store) -> None:
        self._pending = pending
        self._store = store

    async def run(self, call: Call) -> Decision | None:
        mcp = call.body.mcp
        if mcp is None or call.decided.kind != "allow" or call.input_doc is None:
            return None
        scope = scope_of(call)
        if mcp.tool_pin == "changed" and call.approval is not None and scope is not None and mcp.name:
            try:  # a human approved the call to the changed tool: its new definition is the pin now
                await self._store.repin_tool(scope, mcp.name)
            except StoreError as exc:
                return call.refused(exc)
        self._pending.put(
            ResponseContext(
                decision_id=call.decision_id,
                method=mcp.method,
                name=mcp.name,
                request_id=mcp.id,
                agent=str(call.identity.spiffe_id) if call.identity else None,
                pin_scope=scope,
                request_input=call.input_doc,
            )
        )
        return None
