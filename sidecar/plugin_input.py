"""The input document opa-envoy-plugin builds, built the same way (the ``opa-envoy-plugin`` profile).

Follows the plugin's ``envoyauth/request.go`` (v1.19): ``attributes`` is the CheckRequest's
attributes as the plugin maps them (gRPC mode: :mod:`sidecar.grpc_attributes`; HTTP mode: what
Envoy's HTTP service call carries, :func:`http_attributes`), then ``parsed_path`` (Go's
``url.PathUnescape``), ``parsed_query`` (Go's ``url.ParseQuery``), ``parsed_body`` (JSON, form and
multipart bodies), ``truncated_body``, ``version`` and, when set, ``source_principal``. A path,
query or body the plugin cannot parse is a :class:`RequestParseError` (the plugin's 400).
"""

from __future__ import annotations

import base64
import codecs
import json
import re
from email.message import Message
from typing import Any

from sidecar.errors import Kind, SidecarError
from sidecar.request import PARTIAL_BODY_HEADER, CheckRequest

VERSION = {"ext_authz": "v3", "encoding": "protojson"}
_HEX = frozenset("0123456789abcdefABCDEF")


class RequestParseError(SidecarError):
    """The plugin's ``request_parse_error``: the request cannot become an input document."""

    KIND = Kind.INVALID
    CODE = "request_parse_error"

    @property
    def body(self) -> str:
        """The plugin's deny body for this error."""
        return f"request_parse_error: {self.reason}"


def _go_replace(error: UnicodeError) -> tuple[str, int]:
    # Go's JSON encoder writes one U+FFFD per invalid byte; Python's "replace" one per sequence.
    assert isinstance(error, UnicodeDecodeError)
    return "\ufffd", error.start + 1


codecs.register_error("go-replace", _go_replace)


def go_string(data: bytes) -> str:
    """Bytes as the plugin's decision log shows a Go string holding them."""
    return data.decode("utf-8", errors="go-replace")


def plugin_input(
    request: CheckRequest, *, skip_body_parse: bool = False, hidden_headers: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """The whole input document for one check, or :class:`RequestParseError`. ``hidden_headers``
    (HTTP mode): what Envoy adds for the sidecar alone (the XFCC secret), never for the policy."""
    grpc = request.attributes
    attributes = grpc if grpc is not None else http_attributes(request, hidden_headers)
    http = attributes.get("request", {}).get("http", {})
    headers: dict[str, str] = http.get("headers", {})
    body: str = http.get("body", "")
    raw_body = base64.b64decode(http["rawBody"]) if "rawBody" in http else b""
    document: dict[str, Any] = {"attributes": attributes, "version": VERSION}
    raw_path, _, raw_query = http.get("path", "").partition("?")
    parsed_path = go_string(path_unescape(raw_path)).lstrip("/").split("/")
    document["parsed_path"] = parsed_path
    document["parsed_query"] = parse_query(raw_query)
    if not skip_body_parse:
        parsed, truncated = parse_body(headers, body, raw_body)
        document["parsed_body"] = parsed
        document["truncated_body"] = truncated
    principal = attributes.get("source", {}).get("principal", "")
    if principal:
        document["source_principal"] = principal
    return document


def http_attributes(request: CheckRequest, hidden_headers: frozenset[str] = frozenset()) -> dict[str, Any]:
    """``attributes`` from an HTTP-service call: only what Envoy sends there (README "Input")."""
    headers = {k: v for k, v in request.headers.items() if k not in hidden_headers}
    http: dict[str, Any] = {"method": request.method, "path": request.path, "headers": headers}
    host = request.headers.get("host") or request.headers.get(":authority")
    if host:
        http["host"] = host
    if request.body:
        try:
            http["body"] = request.body.decode("utf-8")
        except UnicodeDecodeError:
            http["rawBody"] = base64.b64encode(request.body).decode("ascii")
        http["size"] = len(request.body)
    attributes: dict[str, Any] = {"request": {"http": http}}
    if request.peer_principal:
        attributes["source"] = {"principal": request.peer_principal}
    return attributes


# -- Go's net/url ---------------------------------------------------------------------------
def _unescape(text: str, *, plus_is_space: bool) -> bytes:
    """Go's ``url.unescape``: every ``%`` needs two hex digits, else ``invalid URL escape``."""
    data = text.encode("utf-8", errors="surrogateescape")
    out = bytearray()
    i = 0
    while i < len(data):
        c = data[i]
        if c == 0x25:  # %
            pair = data[i + 1 : i + 3].decode("latin-1")
            if len(pair) < 2 or not set(pair) <= _HEX:
                raise RequestParseError(f"invalid URL escape {json.dumps(data[i : i + 3].decode('latin-1'))}")
            out.append(int(pair, 16))
            i += 3
            continue
        out.append(0x20 if c == 0x2B and plus_is_space else c)
        i += 1
    return bytes(out)


def path_unescape(path: str) -> bytes:
    """Go's ``url.PathUnescape`` (``+`` stays ``+``)."""
    return _unescape(path, plus_is_space=False)


def parse_query(query: str) -> dict[str, list[str]]:
    """Go's ``url.ParseQuery``: ``&``-separated, a ``;`` anywhere in a pair is an error."""
    values: dict[str, list[str]] = {}
    error: RequestParseError | None = None
    for pair in query.split("&"):
        if ";" in pair:
            error = error or RequestParseError("invalid semicolon separator in query")
            continue
        if not pair:
            continue
        key, _, value = pair.partition("=")
        try:
            name, text = _unescape(key, plus_is_space=True), _unescape(value, plus_is_space=True)
        except RequestParseError as exc:
            error = error or exc
            continue
        values.setdefault(go_string(name), []).append(go_string(text))
    if error is not None:
        raise error
    return values


# -- bodies ---------------------------------------------------------------------------------
def parse_body(headers: dict[str, str], body: str, raw_body: bytes) -> tuple[Any, bool]:
    """``(parsed_body, truncated_body)`` by the plugin's rules for the content type."""
    if headers.get(PARTIAL_BODY_HEADER) == "true":
        return None, True
    content_type = headers.get("content-type")
    if content_type is None:
        return None, False
    payload = body.encode("utf-8") if body else raw_body
    if "application/json" in content_type:
        if not payload:
            return None, False
        if _truncated(headers, payload):
            return None, True
        return load_json(payload), False
    if "application/x-www-form-urlencoded" in content_type:
        if not payload:
            return None, False
        if _truncated(headers, payload):
            return None, True
        return parse_query(go_string(payload)), False
    if "multipart/form-data" in content_type:
        if not payload:
            return None, False
        if _truncated(headers, payload):
            return None, True
        return parse_multipart(content_type, payload), False
    return None, False  # other types (gRPC bodies need descriptors this profile does not load)


def _truncated(headers: dict[str, str], payload: bytes) -> bool:
    """``content-length`` larger than the body Envoy sent (an unparsable length is an error)."""
    length = headers.get("content-length")
    if length is None:
        return False
    if not re.fullmatch(r"[+-]?[0-9]+", length):
        raise RequestParseError(f"strconv.ParseInt: parsing {json.dumps(length)}: invalid syntax")
    value = int(length)
    return value != -1 and value > len(payload)


def _no_constants(name: str) -> Any:
    raise RequestParseError(f"invalid character '{name[0]}' looking for beginning of value")


def load_json(payload: bytes) -> Any:
    """JSON as OPA's ``util.UnmarshalJSON`` reads it: duplicate keys, last wins; one value only."""
    try:
        return json.loads(go_string(payload), parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        raise RequestParseError(f"invalid JSON body: {exc.msg}") from None
    except RecursionError:
        raise RequestParseError("invalid JSON body: nested too deeply") from None


def parse_multipart(content_type: str, payload: bytes) -> dict[str, list[Any]] | None:
    """``multipart/form-data`` fields → lists of values (JSON parts parsed), like Go's reader."""
    message = Message()
    message["content-type"] = content_type
    if message.get_content_maintype() != "multipart" and "/" not in content_type:
        raise RequestParseError("mime: no media type")
    boundary = message.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        return None
    delimiter = b"--" + boundary.encode()
    lines = payload.split(b"\n")
    values: dict[str, list[Any]] = {}
    index = 0
    while index < len(lines) and lines[index].rstrip(b"\r").rstrip(b" \t") not in (delimiter, delimiter + b"--"):
        index += 1  # the preamble
    while True:
        if index >= len(lines):
            raise RequestParseError("multipart: NextPart: EOF")
        line = lines[index].rstrip(b"\r").rstrip(b" \t")
        if line == delimiter + b"--":
            return values
        index += 1
        part_headers: dict[str, str] = {}
        while index < len(lines) and lines[index].rstrip(b"\r"):
            name, sep, value = go_string(lines[index].rstrip(b"\r")).partition(":")
            if not sep:
                raise RequestParseError("multipart: NextPart: malformed MIME header line")
            part_headers.setdefault(name.strip().lower(), value.strip())
            index += 1
        index += 1  # the blank line
        start = index
        while index < len(lines) and lines[index].rstrip(b"\r").rstrip(b" \t") not in (delimiter, delimiter + b"--"):
            index += 1
        if index >= len(lines):
            raise RequestParseError("multipart: NextPart: EOF")
        content = b"\n".join(lines[start:index])
        content = content.removesuffix(b"\r") if lines[index - 1 : index] and content.endswith(b"\r") else content
        name = _form_name(part_headers.get("content-disposition", ""))
        if not name:
            continue
        if "application/json" in part_headers.get("content-type", ""):
            values.setdefault(name, []).append(load_json(content))
        else:
            values.setdefault(name, []).append(go_string(content))


def _form_name(disposition: str) -> str:
    message = Message()
    message["content-disposition"] = disposition
    if message.get_content_disposition() != "form-data":
        return ""
    name = message.get_param("name", header="content-disposition")
    return name if isinstance(name, str) else ""
