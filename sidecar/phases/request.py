"""The request line and body: parsed once, never judged when Envoy sent only part of it."""

from __future__ import annotations

from dataclasses import replace

from sidecar.body import parse_body
from sidecar.call import Call
from sidecar.errors import Kind, SidecarError
from sidecar.mcp import BodyError
from sidecar.mcp_headers import HEADER_MISMATCH, HeaderMismatch
from sidecar.outcome import Decision, RpcContext
from sidecar.request import request_line_problem


class ReadRequest:
    stage = "body"

    def __init__(self, *, allow_partial_body: bool, body_buffer_limit: int, param_headers: bool = True) -> None:
        self._allow_partial_body = allow_partial_body
        self._body_buffer_limit = body_buffer_limit
        self._param_headers = param_headers  # False: ReadToolPin checks Mcp-Param-* with the tool's annotations

    async def run(self, call: Call) -> Decision | None:
        request = call.request
        problem = request_line_problem(request.method, request.path)
        if problem is not None:
            return call.refused(SidecarError(problem, kind=Kind.INVALID))
        if len(request.body) >= self._body_buffer_limit and not request.body_truncated:
            call.request = request = replace(request, at_buffer_limit=True)
        if request.body_truncated and not self._allow_partial_body:
            return call.refused(SidecarError("request body is larger than the inspection limit", kind=Kind.TOO_LARGE))
        if "," in request.headers.get("host", ""):  # RFC 9112: exactly one Host; routing and judging must agree
            return call.refused(SidecarError("the request has more than one Host header", kind=Kind.INVALID))
        try:
            call.body = parse_body(
                request.body, request.headers, request.body_truncated, param_headers=self._param_headers
            )
        except HeaderMismatch as exc:  # the spec's JSON-RPC error, with the request's id
            call.rpc = RpcContext(exc.request_id, code=HEADER_MISMATCH)
            return call.refused(exc)
        except BodyError as exc:
            return call.refused(exc, f"request body rejected: {exc}")
        if call.body.mcp is not None:
            call.rpc = RpcContext(call.body.mcp.id)
        return None
