"""A fingerprint of the exact request an approval is for.

Method, host, path with query, and either the MCP method, tool and canonical arguments or a
hash of the raw body. Two requests that differ in any of these differ in fingerprint; the
JSON-RPC ``id`` is left out so a retry with a new id still matches.
"""

from __future__ import annotations

import hashlib
import json

from sidecar.input import normalise_host
from sidecar.mcp import McpRequest


def request_fingerprint(method: str, host: str, path: str, mcp: McpRequest | None, body: bytes) -> str:
    canonical = {
        "v": 1,
        "method": method.upper(),
        "host": normalise_host(host),
        "path": path,
        "mcp": {"method": mcp.method, "name": mcp.name, "arguments": mcp.arguments} if mcp else None,
        "body_sha256": None if mcp else hashlib.sha256(body).hexdigest(),
    }
    encoded = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(encoded.encode()).hexdigest()
