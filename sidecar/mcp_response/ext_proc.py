"""Envoy ext_proc (``envoy.service.ext_proc.v3.ExternalProcessor/Process``) on ``grpc.aio``.

Envoy is configured (envoy/envoy.yaml, the MCP route only) to send the request headers, the
response headers and the whole response body (``BUFFERED``, bounded by the route's buffer
limit: Envoy itself refuses a larger response) with ``failure_mode_allow: false``. The request
headers carry the decision id the check set (``x-authz-decision-id``, which the sidecar always
overwrites); it finds the call's :class:`ResponseContext`. The body is judged once, whole; the
answer replaces it (and its content-length), or replaces the response with a JSON-RPC error.

An SSE response (``text/event-stream``) of a judged call is switched to ``STREAMED`` at its
headers (``mode_override``; Envoy's config allows exactly that mode) and loses its content-length:
each chunk is answered with the events completed so far, judged (:class:`EventStream`), so a long
tool call's notifications reach the agent while it runs and the stream is not bounded by the
buffer limit.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc
from envoy.type.v3 import http_status_pb2
from prometheus_client import Counter

from sidecar.mcp_response.judge import EventStream, ResponseJudge, is_event_stream, unjudged_error
from sidecar.mcp_response.pending import PendingResponses, ResponseContext
from sidecar.outcome import DECISION_ID_HEADER

log = logging.getLogger(__name__)
UNJUDGED_STATUS = 502  # the upstream answered, but not in a way the agent may see
RESPONSES = Counter("authz_mcp_responses_total", "MCP responses judged on the response path", ["verdict"])


def header(headers: Any, name: str) -> str | None:
    """A header of an ext_proc ``HttpHeaders`` (values arrive in ``raw_value`` on Envoy ≥ 1.27)."""
    for entry in headers.headers.headers:
        if entry.key.lower() == name:
            return entry.raw_value.decode("utf-8", errors="replace") if entry.raw_value else str(entry.value)
    return None


def _set_header(name: str, value: str) -> Any:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=name, raw_value=value.encode()),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )


def refusal(body: bytes) -> Any:
    """Replace the whole response with ``body`` (a JSON-RPC error)."""
    return pb.ProcessingResponse(
        immediate_response=pb.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=UNJUDGED_STATUS),
            headers=pb.HeaderMutation(set_headers=[_set_header("content-type", "application/json")]),
            body=body,
            details="mcp_response_withheld",
        )
    )


_MODE = processing_mode_pb2.ProcessingMode
# The configured mode with the response body streamed: the one override Envoy's config allows.
STREAMED = _MODE(
    request_header_mode=_MODE.SEND,
    response_header_mode=_MODE.SEND,
    request_body_mode=_MODE.NONE,
    response_body_mode=_MODE.STREAMED,
    request_trailer_mode=_MODE.SKIP,
    response_trailer_mode=_MODE.SKIP,
)


def streamed_headers() -> Any:
    """Stream this response's body to us chunk by chunk; its length changes, so it goes."""
    common = pb.CommonResponse(header_mutation=pb.HeaderMutation(remove_headers=["content-length"]))
    return pb.ProcessingResponse(response_headers=pb.HeadersResponse(response=common), mode_override=STREAMED)


def streamed_chunk(body: bytes) -> Any:
    """This chunk replaced by ``body`` (cleared when there is nothing to send yet)."""
    mutation = pb.BodyMutation(body=body) if body else pb.BodyMutation(clear_body=True)
    return pb.ProcessingResponse(response_body=pb.BodyResponse(response=pb.CommonResponse(body_mutation=mutation)))


def replaced_body(body: bytes) -> Any:
    mutation = pb.HeaderMutation(set_headers=[_set_header("content-length", str(len(body)))])
    common = pb.CommonResponse(header_mutation=mutation, body_mutation=pb.BodyMutation(body=body))
    return pb.ProcessingResponse(response_body=pb.BodyResponse(response=common))


class ResponseProcessor(external_processor_pb2_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    """One Process stream per HTTP request on the MCP route."""

    def __init__(self, pending: PendingResponses, judge: ResponseJudge) -> None:
        self._pending = pending
        self._judge = judge

    async def Process(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        call: ResponseContext | None = None
        content_type: str | None = None
        events: EventStream | None = None  # an SSE response judged as it streams
        # Envoy sends the request headers first whenever the request goes on to the upstream; a
        # stream that starts with the response carries a reply a filter before this one made
        # (the check's own refusal), which never reached the tool server: it passes as it is.
        forwarded = False
        try:
            async for message in requests:
                kind = message.WhichOneof("request")
                if kind == "request_headers":
                    forwarded = True
                    decision_id = header(message.request_headers, DECISION_ID_HEADER)
                    call = self._pending.take(decision_id) if decision_id else None
                    yield pb.ProcessingResponse(request_headers=pb.HeadersResponse())
                elif kind == "response_headers":
                    content_type = header(message.response_headers, "content-type")
                    streams = not message.response_headers.end_of_stream  # a body follows
                    if forwarded and call is not None and streams and is_event_stream(content_type):
                        events = self._judge.stream(call)
                        yield streamed_headers()
                    else:
                        yield pb.ProcessingResponse(response_headers=pb.HeadersResponse())
                elif kind == "response_body" and not forwarded:
                    yield pb.ProcessingResponse(response_body=pb.BodyResponse())
                elif kind == "response_body" and events is not None:
                    was_done = events.done
                    sent = await events.feed(bytes(message.response_body.body), message.response_body.end_of_stream)
                    if events.done and not was_done:  # one count per response, at its end or failure
                        RESPONSES.labels("error" if events.judgment.refused else "allow").inc()
                    yield streamed_chunk(sent)
                elif kind == "response_body":
                    judgment = await self._judge.judge(call, content_type, bytes(message.response_body.body))
                    RESPONSES.labels("error" if judgment.refused else "allow").inc()
                    if judgment.error is not None:
                        yield refusal(judgment.error)
                    elif judgment.body is not None:
                        yield replaced_body(judgment.body)
                    else:
                        yield pb.ProcessingResponse(response_body=pb.BodyResponse())
                elif kind == "request_body":
                    yield pb.ProcessingResponse(request_body=pb.BodyResponse())
                elif kind == "request_trailers":
                    yield pb.ProcessingResponse(request_trailers=pb.TrailersResponse())
                elif kind == "response_trailers":
                    yield pb.ProcessingResponse(response_trailers=pb.TrailersResponse())
                else:  # a message this server does not know: refuse rather than pass unjudged
                    yield refusal(unjudged_error(call.request_id if call else None, None, f"unexpected {kind} message"))
        finally:
            if events is not None:
                events.close()  # a stream cut short still gets its decision-log line


async def start_ext_proc_server(pending: PendingResponses, judge: ResponseJudge, address: str) -> grpc.aio.Server:
    """Serve ext_proc on ``address`` (``unix:/path`` in the pod; only Envoy reaches it)."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    external_processor_pb2_grpc.add_ExternalProcessorServicer_to_server(ResponseProcessor(pending, judge), server)
    if server.add_insecure_port(address) == 0:
        raise OSError(f"cannot listen for ext_proc on {address}")
    await server.start()
    return server
