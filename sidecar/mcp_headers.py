"""MCP 2026-07-28 request metadata headers, checked against the JSON-RPC body.

Streamable HTTP "Request Metadata" (basic/transports/streamable-http): ``Mcp-Method`` mirrors
``method``, ``Mcp-Name`` mirrors ``params.name`` / ``params.uri``, ``MCP-Protocol-Version``
mirrors ``params._meta["io.modelcontextprotocol/protocolVersion"]`` and ``Mcp-Param-{Name}``
mirrors a tool argument. Values may use the ``=?base64?…?=`` sentinel ("Value Encoding") and are
decoded before comparing. Any disagreement is a ``HeaderMismatch`` (JSON-RPC -32020, HTTP 400,
"Server Validation"): headers and body are never judged separately, because a router reading
the header and a server reading the body would otherwise act on different requests.

2025-06-18 clients send none of these headers and are accepted as before; a request that
declares protocol 2026-07-28 (or later) must carry ``Mcp-Method`` (and ``Mcp-Name`` where the
method has a name).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from sidecar.errors import Kind
from sidecar.mcp import BodyError

HEADER_MISMATCH = -32020  # the spec's HeaderMismatch error code
PROTOCOL_META = "io.modelcontextprotocol/protocolVersion"
HEADERS_REQUIRED_FROM = "2026-07-28"  # the first revision whose clients MUST send Mcp-Method
PARAM_PREFIX = "mcp-param-"
_SENTINEL = ("=?base64?", "?=")


class HeaderMismatch(BodyError):
    """The MCP headers disagree with the body (or are missing or malformed where required)."""

    KIND = Kind.INVALID
    CODE = "header_mismatch"

    def __init__(self, reason: str, request_id: str | int | None) -> None:
        super().__init__(f"Header mismatch: {reason}")
        self.request_id = request_id


def decode_value(raw: str) -> str:
    """A header value, with the Base64 sentinel encoding undone; invalid characters are an error."""
    if raw.startswith(_SENTINEL[0]) and raw.endswith(_SENTINEL[1]) and len(raw) >= len("".join(_SENTINEL)):
        encoded = raw[len(_SENTINEL[0]) : -len(_SENTINEL[1])]
        try:
            return base64.b64decode(encoded, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise ValueError("invalid Base64 sentinel value") from exc
    if any(not (0x20 <= ord(c) <= 0x7E) for c in raw):
        raise ValueError("value has characters outside visible ASCII")
    return raw


def check_headers(
    headers: dict[str, str],
    *,
    method: str,
    name: str | None,
    arguments: dict[str, Any],
    meta: dict[str, Any],
    request_id: str | int | None,
) -> None:
    """Raise :class:`HeaderMismatch` unless every MCP header present agrees with the body."""

    def mismatch(reason: str) -> HeaderMismatch:
        return HeaderMismatch(reason, request_id)

    version_header = headers.get("mcp-protocol-version")
    body_version = meta.get(PROTOCOL_META)
    if version_header is not None and body_version is not None and version_header != body_version:
        raise mismatch(f"MCP-Protocol-Version header {version_header!r} does not match body value {body_version!r}")
    declared = version_header if version_header is not None else body_version
    requires = isinstance(declared, str) and declared >= HEADERS_REQUIRED_FROM
    header_method = headers.get("mcp-method")
    if header_method is None and requires:
        raise mismatch(f"protocol {declared} requires the Mcp-Method header")
    if header_method is not None and header_method != method:
        raise mismatch(f"Mcp-Method header {header_method[:80]!r} does not match body value {method[:80]!r}")
    raw_name = headers.get("mcp-name")
    if raw_name is None and requires and name is not None:
        raise mismatch(f"protocol {declared} requires the Mcp-Name header for {method}")
    if raw_name is not None:
        try:
            header_name = decode_value(raw_name)
        except ValueError as exc:
            raise mismatch(f"Mcp-Name header: {exc}") from exc
        if header_name != name:
            raise mismatch(f"Mcp-Name header {header_name[:80]!r} does not match body value {str(name)[:80]!r}")
    _check_params(headers, arguments, mismatch)


def _check_params(headers: dict[str, str], arguments: dict[str, Any], mismatch: Any) -> None:
    """``Mcp-Param-{Name}`` against the argument of that name (case-insensitively).

    Without the tool's schema the sidecar maps a header to the argument whose name matches; a
    header naming no argument is a mismatch, because the server may route on a value the body
    does not carry."""
    by_name = {key.lower(): value for key, value in arguments.items()}
    for header, raw in headers.items():
        if not header.startswith(PARAM_PREFIX):
            continue
        param = header[len(PARAM_PREFIX) :]
        try:
            value = decode_value(raw)
        except ValueError as exc:
            raise mismatch(f"{header} header: {exc}") from exc
        if param not in by_name or by_name[param] is None:
            raise mismatch(f"{header} header has no argument {param!r} in the body")
        if not _same(value, by_name[param]):
            raise mismatch(f"{header} header value does not match body value of argument {param!r}")


def _same(header: str, body: Any) -> bool:
    """The spec's type conversion: strings as-is, integers numerically, booleans lower-case."""
    if isinstance(body, bool):
        return header == ("true" if body else "false")
    if isinstance(body, int):
        try:
            return float(header) == body
        except ValueError:
            return False
    if isinstance(body, str):
        return header == body
    return False  # numbers and structured values may not be mirrored
