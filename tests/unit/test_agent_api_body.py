"""The agent API reads a JSON body to its end, however it arrives, and never past its limit."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sidecar.agent_api import MAX_BODY, _json
from sidecar.errors import SidecarError


async def _echo(request: web.Request) -> web.Response:
    try:
        return web.json_response({"read": await _json(request)})
    except SidecarError as exc:
        return web.json_response({"error": exc.reason}, status=400)


@pytest.fixture
async def client() -> AsyncIterator[TestClient[Any, Any]]:
    app = web.Application()
    app.router.add_post("/", _echo)
    async with TestClient(TestServer(app)) as running:
        yield running


async def _pieces(body: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]
        await asyncio.sleep(0.01)  # each piece its own chunk, after the server has read the last


async def test_a_body_sent_in_pieces_is_read_whole(client: TestClient[Any, Any]) -> None:
    document = {"purpose": "triage", "scopes": ["tickets:write"], "note": "x" * 3000}
    response = await client.post("/", data=_pieces(json.dumps(document).encode(), 700))
    assert response.status == 200
    assert (await response.json())["read"] == document


async def test_a_body_over_the_limit_is_refused_even_in_pieces(client: TestClient[Any, Any]) -> None:
    body = json.dumps({"note": "x" * MAX_BODY}).encode()
    response = await client.post("/", data=_pieces(body, 4096))
    assert response.status == 400
    assert "larger than" in (await response.json())["error"]
