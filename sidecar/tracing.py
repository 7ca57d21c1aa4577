"""W3C trace context and OpenTelemetry tracing.

Always, at almost no cost: the ``traceparent`` Envoy sends with each check becomes the current
context (an aiohttp middleware; the gRPC server does the same with the call's metadata), the
decision record carries its trace id, and OPA queries pass it on (OPA's decision log then carries
the same trace id). A malformed ``traceparent`` is ignored, never an error.

With ``tracing.endpoint`` set, OpenTelemetry's SDK also records spans (a server span per check and
API call, a client span per OPA query from the aiohttp client instrumentation) and exports them
over OTLP in a background thread: a slow or dead collector drops spans, never delays a decision.
Sampling is decided on the trace id (``tracing.sampling_ratio``), never on the caller's sampled
flag, which a hostile agent controls.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from opentelemetry import context, trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from sidecar.config import TracingConfig
from sidecar.logs import DecisionRecord

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger(__name__)

# W3C Trace Context only: baggage and vendor formats are not read from the request path.
PROPAGATOR = TraceContextTextMapPropagator()


def current_trace_id() -> str | None:
    """The current trace's id as 32 lower-case hex digits, or None outside any trace."""
    span_context = trace.get_current_span().get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else None


def inject(headers: MutableMapping[str, str]) -> None:
    """Add the current context's ``traceparent`` (and ``tracestate``) to outgoing ``headers``.

    Where the sidecar records no span it passes the trace on as not sampled, as an SDK that dropped
    the span would: OPA (which samples by its parent) then logs the trace id but exports no span
    that would hang under one nobody exported. Formatted here rather than by the propagator: this
    runs on every OPA query, and the W3C format is four fixed fields."""
    span = trace.get_current_span()
    span_context = span.get_span_context()
    if not span_context.is_valid:
        return
    flags = span_context.trace_flags if span.is_recording() else trace.TraceFlags.DEFAULT
    headers["traceparent"] = f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{flags:02x}"
    if span_context.trace_state:
        headers["tracestate"] = span_context.trace_state.to_header()


def annotate(record: DecisionRecord) -> None:
    """A pipeline observer: the decision on the current span (a no-op unless it is recording)."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes(
            {
                "authz.decision_id": record.decision_id,
                "authz.verdict": record.verdict,
                "authz.stage": record.stage,
                "authz.status": record.status,
            }
        )


class Tracing:
    """The process's tracing, built from ``tracing:``; off (no SDK, no exporter) by default."""

    def __init__(self, config: TracingConfig, exporter: SpanExporter | None = None) -> None:
        """``exporter`` replaces the configured OTLP exporter (tests export to memory)."""
        self.config = config
        self.provider: TracerProvider | None = None
        if config.enabled or exporter is not None:
            self.provider = _provider(config, exporter or _otlp_exporter(config))
        self._tracer = (self.provider or trace.NoOpTracerProvider()).get_tracer("sidecar")

    @property
    def enabled(self) -> bool:
        return self.provider is not None

    def middleware(self) -> Middleware:
        """The aiohttp middleware for the check and API apps: the request's trace context, and its
        server span when tracing is on.

        Not opentelemetry-instrumentation-aiohttp-server: it patches ``aiohttp.web.Application``
        process-wide (every app, the probes and /metrics too) and its middleware works only after
        that patch; this is the same span, on the apps that decide."""

        @web.middleware
        async def trace_request(request: web.Request, handler: Handler) -> web.StreamResponse:
            if self.provider is None and "traceparent" not in request.headers:
                return await handler(request)  # off and no trace: nothing to do
            resource = request.match_info.route.resource
            name = f"{request.method} {resource.canonical if resource is not None else request.path}"
            with self.server_span(request.headers, name) as span:
                response = await handler(request)
                if span.is_recording():
                    span.set_attribute("http.response.status_code", response.status)
                return response

        return trace_request

    def client_trace_configs(self) -> list[aiohttp.TraceConfig]:
        """aiohttp client hooks recording a span per OPA query (none when tracing is off)."""
        if self.provider is None:
            return []
        from opentelemetry.instrumentation.aiohttp_client import create_trace_config

        return [create_trace_config(tracer_provider=self.provider)]

    @contextmanager
    def server_span(self, carrier: Mapping[str, str], name: str) -> Iterator[trace.Span]:
        """Run the block in the trace context ``carrier`` (request headers, gRPC metadata) names, in
        a server span when tracing is on; a missing or malformed ``traceparent`` starts no trace
        (off) or a new one (on)."""
        parent = PROPAGATOR.extract(carrier)
        if self.provider is None:
            token = context.attach(parent)
            try:
                yield trace.get_current_span()
            finally:
                context.detach(token)
            return
        with self._tracer.start_as_current_span(name, context=parent, kind=trace.SpanKind.SERVER) as span:
            yield span

    def shutdown(self) -> None:
        """Export what is buffered (bounded by the export timeout) and stop the exporter."""
        if self.provider is not None:
            self.provider.shutdown()


def _provider(config: TracingConfig, exporter: SpanExporter) -> TracerProvider:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

    provider = TracerProvider(
        resource=Resource.create({"service.name": config.service_name}),
        sampler=TraceIdRatioBased(config.sampling_ratio),
    )
    provider.add_span_processor(BatchSpanProcessor(exporter, export_timeout_millis=config.export_timeout_ms))
    return provider


def _otlp_exporter(config: TracingConfig) -> SpanExporter:
    endpoint, timeout = config.endpoint, config.export_timeout_ms / 1000
    if config.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        insecure = endpoint is not None and endpoint.startswith("http://")
        return GrpcExporter(endpoint=endpoint, insecure=insecure, timeout=timeout)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter(endpoint=endpoint, timeout=timeout)
