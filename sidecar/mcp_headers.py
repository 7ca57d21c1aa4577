"""MCP 2026-07-28 request metadata headers, checked against the JSON-RPC body.

Streamable HTTP "Request Metadata" (basic/transports/streamable-http): ``Mcp-Method`` mirrors
``method``, ``Mcp-Name`` mirrors ``params.name`` / ``params.uri``, ``MCP-Protocol-Version``
mirrors ``params._meta["io.modelcontextprotocol/protocolVersion"]`` and ``Mcp-Param-{Name}``
mirrors the tool argument whose schema property carries ``"x-mcp-header": "{Name}"`` ("Custom
Headers from Tool Parameters"). Values may use the ``=?base64?…?=`` sentinel ("Value Encoding")
and are decoded before comparing. Any disagreement is a ``HeaderMismatch`` (JSON-RPC -32020,
HTTP 400, "Server Validation"): headers and body are never judged separately, because a router
reading the header and a server reading the body would otherwise act on different requests.

2025-06-18 clients send none of these headers and are accepted as before; a request that
declares protocol 2026-07-28 (or later) must carry ``Mcp-Method`` (and ``Mcp-Name`` where the
method has a name) and, for a tool whose annotations are known, the header of every annotated
argument it sends.

``Mcp-Param-*`` headers are checked by :func:`check_param_headers`: against the tool's
annotations (:func:`declared_param_headers`, from the definition the agent's session last
listed, which the MCP response path keeps with the tool's pin) when they are known, and any
header they do not declare against the argument of the same name.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sidecar.errors import Kind, SidecarError
from sidecar.mcp import BodyError

HEADER_MISMATCH = -32020  # the spec's HeaderMismatch error code
PROTOCOL_META = "io.modelcontextprotocol/protocolVersion"
HEADERS_REQUIRED_FROM = "2026-07-28"  # the first revision whose clients MUST send Mcp-Method
PARAM_PREFIX = "mcp-param-"
ANNOTATION = "x-mcp-header"
PARAM_TYPES = frozenset({"string", "integer", "boolean"})  # "number" may not be mirrored
SAFE_INTEGER = 2**53 - 1  # the spec's bound on a mirrored integer (JavaScript's safe range)
_SENTINEL = ("=?base64?", "?=")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 field-name token (1*tchar)
# Keywords whose values are data, not schemas: an object in them is not an annotation.
_DATA_KEYWORDS = frozenset({"const", "default", "enum", "examples", "description", "title"})
_MAX_SCHEMA_DEPTH = 64


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


def declared_version(headers: dict[str, str], meta: dict[str, Any]) -> Any:
    """The protocol version the request declares: its header, else its body's ``_meta``."""
    version_header = headers.get("mcp-protocol-version")
    return version_header if version_header is not None else meta.get(PROTOCOL_META)


def requires_headers(headers: dict[str, str], meta: dict[str, Any]) -> bool:
    """Whether the request declares a protocol whose clients must send the MCP headers."""
    declared = declared_version(headers, meta)
    return isinstance(declared, str) and declared >= HEADERS_REQUIRED_FROM


def check_headers(
    headers: dict[str, str],
    *,
    method: str,
    name: str | None,
    meta: dict[str, Any],
    request_id: str | int | None,
) -> None:
    """Raise :class:`HeaderMismatch` unless every standard MCP header present agrees with the body
    (``Mcp-Param-*``: :func:`check_param_headers`)."""

    def mismatch(reason: str) -> HeaderMismatch:
        return HeaderMismatch(reason, request_id)

    version_header = headers.get("mcp-protocol-version")
    body_version = meta.get(PROTOCOL_META)
    if version_header is not None and body_version is not None and version_header != body_version:
        raise mismatch(f"MCP-Protocol-Version header {version_header!r} does not match body value {body_version!r}")
    declared = declared_version(headers, meta)
    requires = requires_headers(headers, meta)
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


# -- Mcp-Param-{Name}: custom headers from tool parameters ---------------------------------------


class InvalidAnnotation(SidecarError):
    """A tool's ``x-mcp-header`` annotations break the spec's constraints: the tool is unusable
    (a conforming client leaves it out of ``tools/list``), so a call to it is refused."""

    KIND = Kind.INVALID
    CODE = "invalid_annotation"


@dataclass(frozen=True)
class ParamHeader:
    """One annotated parameter: ``Mcp-Param-{name}`` (``name`` lower-cased, as header names
    compare) mirrors the argument at ``path``, a chain of ``properties`` keys."""

    name: str
    path: tuple[str, ...]


def declared_param_headers(schema: Any) -> tuple[ParamHeader, ...]:
    """The ``x-mcp-header`` annotations of a tool's ``inputSchema``, or :class:`InvalidAnnotation`.

    Valid (Schema Extension): a non-empty token, unique case-insensitively, on a property of type
    ``string``, ``integer`` or ``boolean`` that is statically reachable from the root through
    ``properties`` keys alone. An annotation anywhere else (under ``items``, ``oneOf``, ``$ref``'d
    definitions, on the root) makes the whole definition invalid."""
    found: list[ParamHeader] = []
    # (node, path of properties keys, whether the node is a property schema reached statically, depth)
    pending: list[tuple[Any, tuple[str, ...], bool, int]] = [(schema, (), True, 0)]
    while pending:
        node, path, reachable, depth = pending.pop()
        if depth > _MAX_SCHEMA_DEPTH:
            raise InvalidAnnotation(f"the inputSchema is nested deeper than {_MAX_SCHEMA_DEPTH} levels")
        if isinstance(node, list):
            pending += [(item, path, False, depth + 1) for item in node]
            continue
        if not isinstance(node, dict):
            continue
        if ANNOTATION in node:
            found.append(_annotation(node, path, reachable))
        for key, value in node.items():
            if key == ANNOTATION or key in _DATA_KEYWORDS:
                continue
            if key == "properties" and reachable and isinstance(value, dict):
                pending += [(sub, (*path, prop), True, depth + 1) for prop, sub in value.items()]
            else:
                pending.append((value, path, False, depth + 1))
    names = [param.name for param in found]
    if len(set(names)) != len(names):
        raise InvalidAnnotation("x-mcp-header values are not unique (case-insensitively)")
    return tuple(sorted(found, key=lambda param: param.name))


def _annotation(node: dict[str, Any], path: tuple[str, ...], reachable: bool) -> ParamHeader:
    value = node[ANNOTATION]
    where = ".".join(path) or "the schema root"
    if not reachable or not path:
        raise InvalidAnnotation(f"x-mcp-header on {where}, which is not a property reached through properties alone")
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        raise InvalidAnnotation(f"x-mcp-header of {where} is not an HTTP field-name token")
    if not _primitive(node.get("type")):
        raise InvalidAnnotation(f"x-mcp-header on {where}, whose type is not string, integer or boolean")
    return ParamHeader(value.lower(), path)


def _primitive(kind: Any) -> bool:
    """One of the mirrored types, or one of them and ``null`` (an optional parameter: null is no value)."""
    if isinstance(kind, str):
        return kind in PARAM_TYPES
    if not isinstance(kind, list) or not all(isinstance(k, str) for k in kind):
        return False
    kinds = set(kind) - {"null"}
    return len(kinds) == 1 and kinds <= PARAM_TYPES


def encode_declared(schema: Any) -> str:
    """A tool's annotations as the text kept with its pin: the declarations, or why they are invalid."""
    try:
        params = declared_param_headers(schema)
    except InvalidAnnotation as exc:
        return json.dumps({"invalid": str(exc)})
    return json.dumps({"params": [[param.name, list(param.path)] for param in params]}, separators=(",", ":"))


def decode_declared(text: str) -> tuple[ParamHeader, ...]:
    """The annotations :func:`encode_declared` kept, or :class:`InvalidAnnotation` (also for a text
    it did not write: an unreadable record never loosens the check)."""
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    if isinstance(document, dict) and isinstance(document.get("invalid"), str):
        raise InvalidAnnotation(document["invalid"])
    params = document.get("params") if isinstance(document, dict) else None
    if not isinstance(params, list):
        raise InvalidAnnotation("the tool's recorded annotations are unreadable")
    out = []
    for entry in params:
        if not (
            isinstance(entry, list)
            and len(entry) == 2
            and isinstance(entry[0], str)
            and isinstance(entry[1], list)
            and entry[1]
            and all(isinstance(key, str) for key in entry[1])
        ):
            raise InvalidAnnotation("the tool's recorded annotations are unreadable")
        out.append(ParamHeader(entry[0], tuple(entry[1])))
    return tuple(out)


def check_param_headers(
    headers: dict[str, str],
    *,
    arguments: dict[str, Any],
    meta: dict[str, Any],
    request_id: str | int | None,
    declared: str | None = None,
) -> None:
    """Raise :class:`HeaderMismatch` unless the ``Mcp-Param-*`` headers agree with the arguments.

    ``declared``: the tool's annotations as :func:`encode_declared` kept them (the definition the
    agent's session last listed), or None when unknown. Known: every annotated argument present
    needs its header (from protocol 2026-07-28 on) and every header its argument, with equal
    values ("Server Behavior for Custom Headers"). Any other ``Mcp-Param-*`` header, and every one
    while the annotations are unknown, must equal the top-level argument of its name; one that
    names no argument is a mismatch. The spec lets an intermediary forward a header it does not
    recognise, but a router behind the sidecar may act on any of them: every ``Mcp-Param-*``
    header that passes equals a body value (a client whose tool list is stale lists it again and
    retries, as the spec asks it to after a ``HeaderMismatch``)."""

    def mismatch(reason: str) -> HeaderMismatch:
        return HeaderMismatch(reason, request_id)

    if declared is None:
        _check_by_name(headers, arguments, mismatch)
        return
    try:
        params = decode_declared(declared)
    except InvalidAnnotation as exc:
        raise mismatch(f"the tool's x-mcp-header annotations are invalid: {exc}") from exc
    requires = requires_headers(headers, meta)
    for param in params:
        header = PARAM_PREFIX + param.name
        raw, value = headers.get(header), _value_at(arguments, param.path)
        argument = ".".join(param.path)
        if value is None:
            if raw is not None:
                raise mismatch(f"{header} header is sent but argument {argument!r} has no value in the body")
            continue
        if raw is None:
            if requires:
                raise mismatch(f"{header} header is missing for argument {argument!r}")
            continue
        _compare(header, raw, value, argument, mismatch)
    known = {PARAM_PREFIX + param.name for param in params}
    _check_by_name({k: v for k, v in headers.items() if k not in known}, arguments, mismatch)


def _check_by_name(
    headers: dict[str, str], arguments: dict[str, Any], mismatch: Callable[[str], HeaderMismatch]
) -> None:
    """``Mcp-Param-{Name}`` against the top-level argument of that name (case-insensitively)."""
    by_name = {key.lower(): value for key, value in arguments.items()}
    for header, raw in headers.items():
        if not header.startswith(PARAM_PREFIX):
            continue
        param = header[len(PARAM_PREFIX) :]
        if by_name.get(param) is None:
            raise mismatch(f"{header} header has no argument {param!r} in the body")
        _compare(header, raw, by_name[param], param, mismatch)


def _compare(header: str, raw: str, value: Any, argument: str, mismatch: Callable[[str], HeaderMismatch]) -> None:
    try:
        decoded = decode_value(raw)
    except ValueError as exc:
        raise mismatch(f"{header} header: {exc}") from exc
    if not _same(decoded, value):
        raise mismatch(f"{header} header value does not match body value of argument {argument!r}")


def _value_at(arguments: dict[str, Any], path: tuple[str, ...]) -> Any:
    """The argument at ``path``, None when absent (a missing step, or not an object on the way)."""
    value: Any = arguments
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _same(header: str, body: Any) -> bool:
    """The spec's type conversion: strings as-is, integers numerically, booleans lower-case."""
    if isinstance(body, bool):
        return header == ("true" if body else "false")
    if isinstance(body, int):
        if abs(body) > SAFE_INTEGER:
            return False
        try:
            return float(header) == body
        except ValueError:
            return False
    if isinstance(body, str):
        return header == body
    return False  # numbers and structured values may not be mirrored
