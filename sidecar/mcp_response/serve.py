"""Start the response path beside the check listener: same process, same OPA, same store."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sidecar.config import McpResponsesConfig
from sidecar.mcp_response.judge import ResponseJudge
from sidecar.mcp_response.pending import PendingResponses
from sidecar.opa import OpaClient
from sidecar.sockets import restrict_socket
from sidecar.state import Store

if TYPE_CHECKING:
    import grpc

log = logging.getLogger(__name__)


def make_pending(settings: McpResponsesConfig) -> PendingResponses | None:
    if not settings.enabled:
        return None
    return PendingResponses(settings.max_pending, settings.pending_ttl_seconds)


def address_of(settings: McpResponsesConfig) -> str:
    return f"unix:{settings.socket}" if settings.socket else f"{settings.host}:{settings.port}"


async def start_response_path(
    settings: McpResponsesConfig, opa: OpaClient, store: Store, pending: PendingResponses | None
) -> grpc.aio.Server | None:
    """The ext_proc server, when the response path is on."""
    if pending is None:
        return None
    # grpc and Envoy's ext_proc protos (~13 MB RSS): imported here, once, only with the response path on.
    from sidecar.mcp_response.ext_proc import start_ext_proc_server

    judge = ResponseJudge(opa, store, settings.decision_path, settings.pin_ttl_seconds)
    server = await start_ext_proc_server(pending, judge, address_of(settings))
    if settings.socket is not None:
        restrict_socket(settings.socket)  # as the check socket
    log.info("MCP response path listening", extra={"ext_proc": address_of(settings)})
    return server
