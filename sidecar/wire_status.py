"""The one table from error kinds and verdicts to what each wire answers.

- HTTP (Envoy's HTTP service mode and the sidecar's own API): a status per :class:`Kind`.
- JSON-RPC (MCP requests): the error code of a refusal, by verdict; an authentication
  challenge has its own code.
- gRPC (Envoy's gRPC mode): a refusal is a ``DeniedHttpResponse`` whose status code follows its
  HTTP status; an ``error`` verdict fails the Check RPC with ``UNAVAILABLE`` so that Envoy answers
  its ``status_on_error``, exactly like a 5xx from the HTTP service.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal

from sidecar.errors import Kind

Refusal = Literal["deny", "step_up", "error"]

HTTP_STATUS: Final[Mapping[Kind, int]] = {
    Kind.INVALID: 400,
    Kind.UNAUTHENTICATED: 401,
    Kind.FORBIDDEN: 403,
    Kind.NOT_FOUND: 404,
    Kind.CONFLICT: 409,
    Kind.TOO_LARGE: 413,
    Kind.TOO_MANY: 429,
    Kind.UNAVAILABLE: 503,
}

# Implementation-defined JSON-RPC error codes (the -32000..-32099 server range, and internal error).
JSONRPC_CODE: Final[Mapping[Refusal, int]] = {"deny": -32003, "step_up": -32001, "error": -32603}
JSONRPC_CHALLENGE: Final = -32001  # a missing or invalid identity: authenticate and retry

# google.rpc.Code names, so this table needs no protobuf import.
GRPC_UNAVAILABLE: Final = "UNAVAILABLE"
GRPC_DENY_CODE: Final[Mapping[int, str]] = {401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED"}
GRPC_DENY_DEFAULT: Final = "PERMISSION_DENIED"


def verdict_of(kind: Kind) -> Refusal:
    """How a refusal of ``kind`` is recorded: ``error`` when no decision could be made, else ``deny``."""
    return "error" if kind is Kind.UNAVAILABLE else "deny"


def grpc_deny_code(status: int) -> str:
    """The gRPC status code (a ``google.rpc.Code`` name) of a refusal answered with HTTP ``status``."""
    return GRPC_DENY_CODE.get(status, GRPC_DENY_DEFAULT)
