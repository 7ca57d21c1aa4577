"""A fingerprint of the exact request an approval is for.

It binds the whole request an upstream acts on: the method and host as sent (the host only
lower-cased), the path with its query, the headers that change how the upstream reads the same
bytes (``BOUND_HEADERS``), and the body: a JSON-RPC body as its canonical JSON without the
``id`` (a retry legitimately sends a new one), any other body byte for byte. Nothing else is
left out; identity and task are bound by the approval record itself, and the credential and
approval-id headers change on every retry by design.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

VERSION = 2
# Headers that make the upstream read the same method, path and body differently.
BOUND_HEADERS = (
    "content-type",
    "content-encoding",
    "mcp-session-id",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
)


def request_fingerprint(
    method: str, host: str, target: str, headers: Mapping[str, str], body: bytes, jsonrpc: bool
) -> str:
    """``sha256:<hex>`` over the canonical request. ``jsonrpc``: the body parsed as a JSON-RPC request."""
    canonical = {
        "v": VERSION,
        "method": method,
        "host": host.lower(),
        "target": target,
        "headers": {name: headers[name] for name in BOUND_HEADERS if name in headers},
        "jsonrpc": canonical_jsonrpc(body) if jsonrpc else None,
        "body_sha256": None if jsonrpc else hashlib.sha256(body).hexdigest(),
    }
    # ASCII only: a lone surrogate from a "\ud800" escape must hash, not fail to encode.
    encoded = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(encoded.encode()).hexdigest()


class _Number(str):
    """A JSON number exactly as it was written: ``1``, ``1.0`` and ``1e0`` stay apart, as they may
    for the upstream's parser (and no float rounding makes two different numbers one)."""


def canonical_jsonrpc(body: bytes) -> str:
    """The JSON-RPC request as canonical JSON (sorted keys, no whitespace), without its ``id`` but
    recording whether it had one (a notification is another request). The body was already
    accepted by the strict parser (UTF-8, no duplicate keys, bounded depth)."""
    document = json.loads(body.decode("utf-8"), parse_int=_Number, parse_float=_Number)
    if not isinstance(document, dict):
        raise ValueError("a JSON-RPC request is an object")
    has_id = "id" in document
    document.pop("id", None)
    return _canonical({"request": document, "has_id": has_id})


def _canonical(value: Any) -> str:
    if isinstance(value, _Number):
        return str(value)
    if isinstance(value, dict):
        items = sorted(value.items())
        return "{" + ",".join(f"{json.dumps(k)}:{_canonical(v)}" for k, v in items) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_canonical(v) for v in value) + "]"
    return json.dumps(value)
