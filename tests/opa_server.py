"""A loopback HTTP stand-in for OPA's data API, for tests of the real REST client (``HttpOpaClient``).

Tests of everything above the client use :class:`sidecar.opa_fake.FakeOpa` instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from aiohttp import web
from aiohttp.test_utils import TestServer

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def opa_server(handle: Handler) -> AsyncIterator[str]:
    """Serve ``POST /v1/data/{path}`` with ``handle`` on a free loopback port; yields the base URL."""
    app = web.Application()
    app.router.add_post("/v1/data/{path:.*}", handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()
