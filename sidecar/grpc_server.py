"""Envoy ext_authz gRPC mode: ``envoy.service.auth.v3.Authorization/Check`` on ``grpc.aio``.

Each Check becomes the same framework-free :class:`CheckRequest` the HTTP listener builds and
goes through the same :meth:`Pipeline.check`; :mod:`sidecar.wire_grpc` encodes its decision.

Peer identity: Envoy puts the verified mTLS peer's URI SAN in ``attributes.source.principal``.
Like XFCC in HTTP mode it is trusted only together with the per-deployment secret, which Envoy
sends as gRPC initial metadata (``grpc_service.initial_metadata``) under the configured
``identity.xfcc.secret_header`` name. The secret travels to the identity resolver in that header
slot; a header of that name sent by the client is always dropped first, so only Envoy's metadata
can fill it.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from envoy.service.auth.v3 import external_auth_pb2_grpc

from sidecar.config import TracingConfig
from sidecar.grpc_attributes import protomap
from sidecar.pipeline import Pipeline
from sidecar.request import CheckRequest
from sidecar.tracing import Tracing
from sidecar.wire_grpc import Unavailable, to_check_response

log = logging.getLogger(__name__)
CHECK_SPAN = "envoy.service.auth.v3.Authorization/Check"


def to_check_request(
    message: Any, metadata: tuple[tuple[str, str | bytes], ...], secret_header: str, *, attributes: bool = False
) -> CheckRequest:
    """An Envoy ``CheckRequest`` (and the call's metadata) → the pipeline's :class:`CheckRequest`;
    ``attributes``: keep all of them as opa-envoy-plugin maps them (that profile's input)."""
    attrs = message.attributes
    http = attrs.request.http
    header_map = http.headers
    if header_map:
        # Envoy sends lower-case names, one entry each: one pass; mixed case that collides after
        # lower-casing (only another client could send it) is joined as repeated headers are.
        headers = {name.lower(): value for name, value in header_map.items()}
        if len(headers) != len(header_map):
            headers = {}
            for name, value in header_map.items():
                _add(headers, name.lower(), value)
    else:  # Envoy's encode_raw_headers: repeated values as separate entries
        headers = {}
        for entry in http.header_map.headers:
            value = entry.raw_value.decode("utf-8", errors="replace") if entry.raw_value else entry.value
            _add(headers, entry.key.lower(), value)
    headers.pop(secret_header, None)
    for key, value in metadata:
        if key.lower() == secret_header and isinstance(value, str):
            headers[secret_header] = value
    if "host" not in headers and http.host:
        headers["host"] = http.host
    raw_body = http.raw_body
    return CheckRequest(
        method=http.method,
        path=http.path or "/",
        headers=headers,
        body=raw_body if raw_body else http.body.encode("utf-8"),
        peer_principal=attrs.source.principal or None,
        attributes=protomap(attrs) if attributes else None,
    )


def _add(headers: dict[str, str], key: str, value: str) -> None:
    headers[key] = f"{headers[key]},{value}" if key in headers else value


class AuthorizationService(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    """The Check RPC, sharing the whole decision path with HTTP mode."""

    def __init__(
        self, pipeline: Pipeline, secret_header: str, tracing: Tracing | None = None, *, attributes: bool = False
    ) -> None:
        self._pipeline = pipeline
        self._secret_header = secret_header.lower()
        self._tracing = tracing or Tracing(TracingConfig())
        self._attributes = attributes

    async def Check(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        metadata = tuple(context.invocation_metadata() or ())
        try:
            check = to_check_request(request, metadata, self._secret_header, attributes=self._attributes)
        except Exception:  # an unreadable request must fail closed, never allow
            log.exception("unreadable gRPC check request")
            await context.abort(grpc.StatusCode.UNAVAILABLE, "unreadable check request")
        # Envoy's gRPC client puts the trace context (its ext_authz span) in the call's metadata.
        carrier = {key.lower(): value for key, value in metadata if isinstance(value, str)}
        with self._tracing.server_span(carrier, CHECK_SPAN):
            decision = await self._pipeline.check(check)
        try:
            return to_check_response(decision)
        except Unavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, exc.reason)


async def start_grpc_server(
    pipeline: Pipeline,
    address: str,
    secret_header: str,
    tracing: Tracing | None = None,
    *,
    attributes: bool = False,
) -> grpc.aio.Server:
    """Start the Check service on ``address`` (``host:port`` or ``unix:/path``; plaintext: only Envoy
    reaches it); ``attributes`` for the opa-envoy-plugin profile."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    service = AuthorizationService(pipeline, secret_header, tracing, attributes=attributes)
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(service, server)
    if server.add_insecure_port(address) == 0:
        raise OSError(f"cannot listen for gRPC on {address}")
    await server.start()
    return server
