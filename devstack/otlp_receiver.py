"""A local OTLP/HTTP trace receiver for tests: what the sidecar's and OPA's exporters send.

``POST /v1/traces`` takes an ``ExportTraceServiceRequest`` (protobuf, optionally gzip), keeps each
span as a :class:`ReceivedSpan` and answers an empty ``ExportTraceServiceResponse``, as a collector
does. It runs on its own event loop in a thread, so sync tests and the exporters' threads reach it::

    with OtlpReceiver() as receiver:
        ...  # tracing.endpoint: receiver.traces_url; OPA's distributed_tracing.address: receiver.address
        spans = receiver.wait_for(lambda spans: any(s.service == "opa" for s in spans))
"""

from __future__ import annotations

import asyncio
import gzip
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

PROTOBUF = "application/x-protobuf"


@dataclass(frozen=True)
class ReceivedSpan:
    service: str  # the resource's service.name
    name: str
    trace_id: str  # 32 hex digits
    span_id: str
    parent_span_id: str  # "" for a root span
    kind: int  # OTLP SpanKind: 2 server, 3 client
    attributes: dict[str, Any]


def decode(body: bytes) -> list[ReceivedSpan]:
    """The spans of one export request."""
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        service=str(resource.get("service.name", "")),
                        name=span.name,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        kind=span.kind,
                        attributes=_attributes(span.attributes),
                    )
                )
    return spans


def _attributes(pairs: Any) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for pair in pairs:
        which = pair.value.WhichOneof("value")
        values[pair.key] = getattr(pair.value, which) if which else None
    return values


class OtlpReceiver:
    """An OTLP/HTTP receiver on 127.0.0.1 (a free port), in a thread of its own."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.requests = 0
        self.port = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="otlp-receiver", daemon=True)
        self._runner: web.AppRunner | None = None

    @property
    def address(self) -> str:
        """host:port, as OPA's ``distributed_tracing.address`` takes it."""
        return f"127.0.0.1:{self.port}"

    @property
    def traces_url(self) -> str:
        """The OTLP/HTTP traces endpoint, as the sidecar's ``tracing.endpoint`` takes it."""
        return f"http://{self.address}/v1/traces"

    def received(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self.spans)

    def wait_for(self, done: Callable[[list[ReceivedSpan]], bool], timeout: float = 20.0) -> list[ReceivedSpan]:
        """The spans received once ``done`` holds for them; AssertionError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            spans = self.received()
            if done(spans):
                return spans
            if time.monotonic() > deadline:
                raise AssertionError(f"OTLP receiver: condition not met after {timeout}s; got {spans}")
            time.sleep(0.1)

    async def _export(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("content-encoding", "").lower() == "gzip":
            body = gzip.decompress(body)
        if request.content_type != PROTOBUF:
            return web.Response(status=415, text="OTLP/HTTP protobuf only")
        try:
            spans = decode(body)
        except Exception:  # a malformed export is the exporter's bug: say so, as a collector does
            return web.Response(status=400, text="not an ExportTraceServiceRequest")
        with self._lock:
            self.requests += 1
            self.spans.extend(spans)
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(), content_type=PROTOBUF)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/traces", self._export)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def start(self) -> OtlpReceiver:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
