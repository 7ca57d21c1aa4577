"""The shipped fake OPA: what it records and answers, and that it fails as the real client does
(the same reasons and kinds, checked against ``HttpOpaClient`` on a loopback server)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from sidecar.opa import HttpOpaClient, OpaAnswer, OpaClient, OpaError
from sidecar.opa_fake import (
    FakeOpa,
    Query,
    always,
    bad_status,
    in_order,
    malformed,
    routes,
    timed_out,
    undefined,
    unreachable,
)
from tests.opa_server import opa_server


async def test_records_each_query_at_its_resolved_path_as_opa_would_receive_it() -> None:
    opa = FakeOpa(always(True), decision_path="agent/authz/decision")
    document: dict[str, Any] = {"a": (1, 2), "big": 2**70}
    answer = await opa.decide(document)
    document["a"] = "changed afterwards"
    await opa.decide({"operation": "open"}, "agent/tasks/decision")
    assert answer.result is True and answer.decision_id is None
    assert opa.queries == [
        Query("agent/authz/decision", {"a": [1, 2], "big": 2**70}),
        Query("agent/tasks/decision", {"operation": "open"}),
    ]
    assert opa.inputs == [q.input for q in opa.queries]


async def test_a_document_the_real_client_cannot_send_fails_here_too() -> None:
    with pytest.raises(TypeError):
        await FakeOpa(always(True)).decide({"not json": object()})


async def test_in_order_answers_raises_errors_and_refuses_one_query_too_many() -> None:
    opa = FakeOpa(in_order(False, unreachable(), OpaAnswer(True, "d-7", 0.5)))
    assert (await opa.decide({})).result is False
    with pytest.raises(OpaError) as failed:
        await opa.decide({})
    assert failed.value.code == "unreachable"
    assert await opa.decide({}) == OpaAnswer(True, "d-7", 0.5)
    with pytest.raises(LookupError):
        await opa.decide({})
    assert len(opa.queries) == 4


async def test_routes_dispatch_on_the_path_and_an_unknown_path_is_undefined() -> None:
    opa = FakeOpa(routes({"agent/tasks/decision": always({"verdict": "deny", "reasons": []})}))
    assert (await opa.decide({}, "agent/tasks/decision")).result["verdict"] == "deny"
    with pytest.raises(OpaError) as failed:
        await opa.decide({})
    assert failed.value.code == "undefined"


async def test_a_slow_async_handler_times_out_like_the_real_client() -> None:
    async def slow(query: Query) -> bool:
        await asyncio.sleep(1)
        return True

    async def quick(query: Query) -> dict[str, str]:
        return {"verdict": "allow"}

    with pytest.raises(OpaError) as failed:
        await FakeOpa(slow, timeout_ms=20).decide({})
    assert (failed.value.code, failed.value.reason) == ("timeout", "policy engine timed out")
    assert (await FakeOpa(quick, timeout_ms=20).decide({})).result == {"verdict": "allow"}


async def test_probes_and_lifecycle() -> None:
    opa: OpaClient = FakeOpa(always(True), healthy=(False, "bundle not activated"), revisions={"authz": "r1"})
    await opa.start()
    assert await opa.health() == (False, "bundle not activated")
    assert await opa.bundle_revisions() == {"authz": "r1"}
    await opa.close()


# -- parity with the real client ----------------------------------------------------------------------
class _Server:
    """A loopback OPA stand-in for the real client: answers each decision query with ``reply``."""

    def __init__(self) -> None:
        self.reply: tuple[int, str] = (200, "{}")
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        status, text = self.reply
        return web.Response(status=status, text=text, content_type="application/json")


@pytest.fixture
async def server() -> AsyncIterator[_Server]:
    fake = _Server()
    async with opa_server(fake.handle) as url:
        fake.url = url
        yield fake


async def _real_failure(url: str) -> OpaError:
    client = HttpOpaClient(url, "agent/authz/decision", 500, 1)
    await client.start()
    try:
        await client.decide({})
    except OpaError as exc:
        return exc
    finally:
        await client.close()
    raise AssertionError("the real client answered")


@pytest.mark.parametrize(
    ("reply", "fake"),
    [((500, "{}"), bad_status(500)), ((200, "<html>"), malformed()), ((200, "{}"), undefined())],
    ids=["status", "malformed", "undefined"],
)
async def test_fake_failures_are_the_real_clients(server: _Server, reply: tuple[int, str], fake: OpaError) -> None:
    server.reply = reply
    real = await _real_failure(server.url)
    assert (real.code, real.reason) == (fake.code, fake.reason)


async def test_unreachable_is_the_real_clients() -> None:
    real = await _real_failure("http://127.0.0.1:1")
    assert (real.code, real.reason) == (unreachable().code, unreachable().reason)
    assert timed_out().code == "timeout"
