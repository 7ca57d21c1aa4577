"""JSON-RPC 2.0 / MCP Streamable HTTP request parsing.

Strict on purpose: duplicate keys, batches, deep nesting and bad UTF-8 are errors (the request
is denied), because an upstream parser might read such a body differently than we do. The MCP
headers are checked against the body in :mod:`sidecar.mcp_headers`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from sidecar.errors import Kind, SidecarError

MAX_DEPTH = 64
NAME_PARAM = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}


class BodyError(SidecarError, ValueError):
    """The body cannot be judged safely; the message is safe to show to the caller."""

    KIND = Kind.INVALID
    CODE = "body"


@dataclass(frozen=True)
class McpRequest:
    method: str
    name: str | None
    arguments: dict[str, Any]
    id: str | int | None
    is_notification: bool
    meta: dict[str, Any]
    params: dict[str, Any] = field(default_factory=dict)  # all of them, for the approver's view
    tool_pin: str | None = None  # tools/call: "same" or "changed" once the agent's session listed the tool


def is_json_content_type(content_type: str | None) -> bool:
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def loads_strict(body: bytes) -> Any:
    """Parse JSON rejecting invalid UTF-8, duplicate keys, NaN/Infinity and deep nesting."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyError("body is not valid UTF-8") from exc
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except RecursionError as exc:
        raise BodyError(f"JSON body is nested deeper than {MAX_DEPTH} levels") from exc
    except ValueError as exc:
        if isinstance(exc, BodyError):
            raise
        raise BodyError("body is not valid JSON") from exc
    _check_depth(value)
    return value


def looks_like_json(body: bytes) -> bool:
    return body.lstrip()[:1] in (b"{", b"[")


def parse_mcp(parsed: Any, headers: dict[str, str]) -> McpRequest | None:
    """Read a JSON-RPC request from an already parsed body; None when it is not JSON-RPC."""
    header_method = headers.get("mcp-method")
    header_name = headers.get("mcp-name")
    if isinstance(parsed, list):
        raise BodyError("JSON-RPC batch requests are not accepted")
    if not isinstance(parsed, dict) or "jsonrpc" not in parsed:
        if header_method is not None or header_name is not None:
            raise BodyError("Mcp-Method/Mcp-Name headers sent without a JSON-RPC body")
        return None
    if parsed.get("jsonrpc") != "2.0":
        raise BodyError("only JSON-RPC 2.0 is accepted")
    method = parsed.get("method")
    if not isinstance(method, str) or not method:
        raise BodyError("JSON-RPC request has no method (responses are not requests)")
    params = parsed.get("params", {})
    if not isinstance(params, dict):
        raise BodyError("JSON-RPC params must be an object")
    request_id = parsed.get("id")
    if request_id is not None and (isinstance(request_id, bool) or not isinstance(request_id, str | int)):
        raise BodyError("JSON-RPC id must be a string or an integer")
    name = _name(method, params)
    arguments = params.get("arguments", {})
    if not isinstance(arguments, dict):
        raise BodyError("tools/call arguments must be an object")
    meta = params.get("_meta", {})
    if not isinstance(meta, dict):
        raise BodyError("params._meta must be an object")
    return McpRequest(
        method=method,
        name=name,
        arguments=arguments,
        id=request_id,
        is_notification="id" not in parsed,
        meta=meta,
        params=params,
    )


def _name(method: str, params: dict[str, Any]) -> str | None:
    key = NAME_PARAM.get(method)
    if key is None:
        return None
    value = params.get(key)
    if not isinstance(value, str) or not value:
        raise BodyError(f"{method} needs a non-empty string params.{key}")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise BodyError(f"duplicate JSON key {key[:40]!r}")
        result[key] = value
    return result


def _no_constant(name: str) -> float:
    raise BodyError(f"JSON constant {name} is not allowed")


def _check_depth(value: Any) -> None:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise BodyError(f"JSON body is nested deeper than {MAX_DEPTH} levels")
        if isinstance(node, dict):
            stack.extend((child, depth + 1) for child in node.values())
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node)
        elif isinstance(node, float) and not math.isfinite(node):
            raise BodyError("JSON numbers must be finite")
