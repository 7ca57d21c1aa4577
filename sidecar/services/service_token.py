"""A bearer token between OPA and its services (bundle service, decision-log receiver).

In a pod these services are remote and the agent can reach them over the network, so they must
not serve policies or take logs from anyone who asks: OPA presents a token read from a file
only OPA's user can open (``services[_].credentials.bearer.token_path``), the services compare
it. ``/healthz`` stays open for probes.
"""

from __future__ import annotations

import hmac
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware


def read_token(path: Path | None) -> str | None:
    """The token in ``path`` (stripped), or None without a file; an empty file is an error."""
    if path is None:
        return None
    token = path.read_text(encoding="utf-8").strip()
    if not token:
        raise ValueError(f"{path} holds no token")
    return token


def require_bearer(token: str | None) -> Middleware:
    """aiohttp middleware: 401 unless ``Authorization: Bearer <token>`` (no check when token is None)."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if token is not None and request.path != "/healthz":
            scheme, _, presented = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), token.encode()):
                return web.json_response({"error": "a bearer token is required"}, status=401)
        return await handler(request)

    return check
