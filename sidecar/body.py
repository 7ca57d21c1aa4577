"""Request body → parsed JSON and the MCP request inside it (never for a partial body)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sidecar.mcp import (
    BodyError,
    McpRequest,
    is_json_content_type,
    loads_strict,
    looks_like_json,
    parse_mcp,
)
from sidecar.mcp_headers import check_headers, check_param_headers


@dataclass(frozen=True)
class ParsedBody:
    parsed_body: Any  # opa-envoy-plugin's parsed_body: JSON content types only
    mcp: McpRequest | None


EMPTY = ParsedBody(None, None)


def parse_body(body: bytes, headers: dict[str, str], truncated: bool, *, param_headers: bool = True) -> ParsedBody:
    """Parse what can be judged. JSON-RPC is recognised whatever the content type says,
    because an MCP server may not check it; a declared JSON body must be valid JSON.

    The MCP headers are checked against the body here; ``param_headers`` False leaves the
    ``Mcp-Param-*`` headers to a later phase that knows the tool's annotations."""
    has_mcp_headers = "mcp-method" in headers or "mcp-name" in headers
    if truncated:
        return EMPTY
    if not body:
        if has_mcp_headers:
            raise BodyError("Mcp-Method/Mcp-Name headers sent without a JSON-RPC body")
        return EMPTY
    declared_json = is_json_content_type(headers.get("content-type"))
    if declared_json or has_mcp_headers:
        value = loads_strict(body)
    elif looks_like_json(body) or _maybe_wide_json(body):
        try:
            value = loads_strict(body)
        except BodyError:
            if not reads_as_json(body):
                return EMPTY  # opaque text that only resembles JSON: nothing to read as JSON-RPC
            # A permissive upstream (duplicate keys, UTF-16/32, a BOM, NaN) would read it as JSON
            # that we refuse to read: judging it as opaque would judge another request.
            raise
    else:
        return EMPTY
    mcp = parse_mcp(value, headers)
    if mcp is not None:
        check_headers(headers, method=mcp.method, name=mcp.name, meta=mcp.meta, request_id=mcp.id)
        if param_headers:
            check_param_headers(headers, arguments=mcp.arguments, meta=mcp.meta, request_id=mcp.id)
    return ParsedBody(parsed_body=value if declared_json else None, mcp=mcp)


# Byte order marks, and the NUL bytes of UTF-16/32 text (how json.detect_encoding tells them apart).
_BOMS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")


def _maybe_wide_json(body: bytes) -> bool:
    return body.startswith(_BOMS) or b"\x00" in body[:4]


def reads_as_json(body: bytes) -> bool:
    """Whether a permissive JSON reader (Python's own: any UTF, duplicate keys, NaN) sees an
    object or array in ``body``; nesting too deep to parse counts as JSON."""
    try:
        return isinstance(json.loads(body), dict | list)
    except RecursionError:
        return True
    except ValueError:  # includes UnicodeDecodeError
        return False
