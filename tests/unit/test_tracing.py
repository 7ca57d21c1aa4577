"""W3C trace context on the check path, in process: the sidecar's real apps and OPA client against a
loopback OPA stand-in that records what it was sent, and (tracing on) a local OTLP/HTTP receiver."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from devstack.otlp_receiver import OtlpReceiver
from sidecar.config import TracingConfig, validate_config
from sidecar.events import DECISION_LOGGER
from sidecar.server import build_apps, build_components
from sidecar.tracing import Tracing, current_trace_id
from tests.opa_server import opa_server

WRITER = "spiffe://demo.local/agent/writer"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
ENVOY_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{ENVOY_SPAN}-01"
MALFORMED = [
    "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
    "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # all-zero span id
    "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
    "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff is invalid
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",  # no flags
    "00-4bf92f3577b34da6a3ce929d0e0e4736",
    f"00-{TRACE_ID}-00f067aa0ba902b7-01 injected",
    f"00-{TRACE_ID}-00f067aa0ba902b7-01-extra",  # version 00 has exactly four fields
    "x" * 4_000,
    "",
]


class _Opa:
    """Answers every decision with an allow and keeps the headers of each query."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.headers.append({k.lower(): v for k, v in request.headers.items()})
        return web.json_response({"result": {"verdict": "allow", "reasons": ["ok"]}, "decision_id": "opa-1"})


@pytest.fixture
async def opa() -> AsyncIterator[tuple[_Opa, str]]:
    fake = _Opa()
    async with opa_server(fake.handle) as url:
        yield fake, url


async def _check(opa_url: str, headers: dict[str, str], tracing: dict[str, Any] | None = None) -> int:
    """One check through the sidecar's own check route; its status."""
    config = validate_config(
        {
            "opa": {"url": opa_url},
            "identity": {"sources": ["pod"], "pod": {"spiffe_id": WRITER}},
            **({"tracing": tracing} if tracing else {}),
        }
    )
    parts = await build_components(config)
    try:
        authz, _, _ = build_apps(config, parts)
        async with TestClient(TestServer(authz)) as client:
            response = await client.get("/authz/api/docs", headers={"host": "tools.local", **headers})
            return response.status
    finally:
        await parts.close()


def _records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == DECISION_LOGGER]


async def test_a_traceparent_puts_its_trace_id_in_the_record_and_reaches_opa(
    opa: tuple[_Opa, str], caplog: pytest.LogCaptureFixture
) -> None:
    fake, url = opa
    with caplog.at_level(logging.INFO, DECISION_LOGGER):
        assert await _check(url, {"traceparent": TRACEPARENT, "tracestate": "vendor=1"}) == 200
    [record] = _records(caplog)
    assert record.__dict__["trace_id"] == TRACE_ID
    [sent] = fake.headers
    # Tracing off: the trace goes on to OPA as not sampled (nobody exports a span for it here).
    assert sent["traceparent"] == f"00-{TRACE_ID}-{ENVOY_SPAN}-00"
    assert sent["tracestate"] == "vendor=1"


async def test_no_traceparent_no_trace_id(opa: tuple[_Opa, str], caplog: pytest.LogCaptureFixture) -> None:
    fake, url = opa
    with caplog.at_level(logging.INFO, DECISION_LOGGER):
        assert await _check(url, {}) == 200
    [record] = _records(caplog)
    assert record.__dict__["trace_id"] is None
    assert "traceparent" not in fake.headers[0]


@pytest.mark.parametrize("traceparent", MALFORMED)
async def test_a_malformed_traceparent_is_ignored_never_an_error(
    opa: tuple[_Opa, str], caplog: pytest.LogCaptureFixture, traceparent: str
) -> None:
    fake, url = opa
    with caplog.at_level(logging.INFO, DECISION_LOGGER):
        assert await _check(url, {"traceparent": traceparent}) == 200
    [record] = _records(caplog)
    assert record.__dict__["trace_id"] is None
    assert record.levelno == logging.INFO and record.__dict__["verdict"] == "allow"
    assert "traceparent" not in fake.headers[0]


async def test_tracing_on_exports_the_check_and_the_opa_query_under_the_callers_trace(
    opa: tuple[_Opa, str], caplog: pytest.LogCaptureFixture
) -> None:
    fake, url = opa
    with OtlpReceiver() as receiver, caplog.at_level(logging.INFO, DECISION_LOGGER):
        # The caller's flag says "not sampled": the sidecar samples on the trace id (ratio 1) anyway.
        status = await _check(url, {"traceparent": f"00-{TRACE_ID}-{ENVOY_SPAN}-00"}, {"endpoint": receiver.traces_url})
        assert status == 200
        spans = receiver.received()  # parts.close() flushed the exporter
    assert {s.trace_id for s in spans} == {TRACE_ID}
    [server] = [s for s in spans if s.kind == 2]
    [client] = [s for s in spans if s.kind == 3]
    assert server.service == client.service == "authz-sidecar"
    assert server.parent_span_id == ENVOY_SPAN and client.parent_span_id == server.span_id
    assert server.attributes["authz.verdict"] == "allow" and server.attributes["authz.decision_id"] == "opa-1"
    assert fake.headers[0]["traceparent"] == f"00-{TRACE_ID}-{client.span_id}-01"
    assert _records(caplog)[0].__dict__["trace_id"] == TRACE_ID


async def test_a_sampling_ratio_of_zero_exports_nothing_but_keeps_the_trace_id(
    opa: tuple[_Opa, str], caplog: pytest.LogCaptureFixture
) -> None:
    fake, url = opa
    with OtlpReceiver() as receiver, caplog.at_level(logging.INFO, DECISION_LOGGER):
        tracing = {"endpoint": receiver.traces_url, "sampling_ratio": 0.0}
        assert await _check(url, {"traceparent": TRACEPARENT}, tracing) == 200
        assert receiver.received() == [] and receiver.requests == 0
    assert _records(caplog)[0].__dict__["trace_id"] == TRACE_ID
    assert fake.headers[0]["traceparent"].startswith(f"00-{TRACE_ID}-") and fake.headers[0]["traceparent"].endswith(
        "-00"
    )


def test_off_by_default_no_sdk() -> None:
    tracing = Tracing(TracingConfig())
    assert not tracing.enabled and tracing.provider is None and tracing.client_trace_configs() == []


def test_server_span_reads_grpc_metadata_and_restores_the_context() -> None:
    tracing = Tracing(TracingConfig())
    assert current_trace_id() is None
    with tracing.server_span({"traceparent": TRACEPARENT}, "Check"):
        assert current_trace_id() == TRACE_ID
    assert current_trace_id() is None
    with tracing.server_span({"traceparent": MALFORMED[0]}, "Check"):
        assert current_trace_id() is None
