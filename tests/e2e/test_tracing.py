"""W3C trace context through real Envoy, the sidecar and OPA, exported to a local OTLP/HTTP receiver.

The client's ``traceparent`` → Envoy (continues the trace) → the sidecar (server span, client span
per OPA query, ``trace_id`` in its decision line) → OPA (its span under the sidecar's, ``trace_id``
in its decision-log event). The same trace id everywhere; a new one when the client sent none or a
malformed one, never an error.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from devstack.otlp_receiver import OtlpReceiver, ReceivedSpan
from devstack.stack import Ports, Stack
from tests.e2e.conftest import READER

pytestmark = pytest.mark.e2e

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
SERVER, CLIENT = 2, 3  # OTLP SpanKind


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as running:
        yield running


@pytest.fixture(scope="module")
def traced_stack(tmp_path_factory: pytest.TempPathFactory, receiver: OtlpReceiver) -> Iterator[Stack]:
    with Stack(tmp_path_factory.mktemp("tracing"), Ports.free(), otlp_address=receiver.address) as running:
        yield running


def _call(stack: Stack, headers: dict[str, str]) -> str:
    token = stack.trust_domain.mint_jwt(READER)
    response = requests.get(
        stack.egress_url + "/api/docs/handbook",
        headers={"authorization": f"Bearer {token}", **headers},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return response.headers["x-authz-decision-id"]


def _lines(path: Any, decision_id: str, key: str = "decision_id") -> list[dict[str, Any]]:
    found = []
    for line in path.read_text().splitlines():
        if decision_id in line and line.startswith("{"):
            document = json.loads(line)
            if document.get(key) == decision_id:
                found.append(document)
    return found


def _wait_line(path: Any, decision_id: str, message: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [line for line in _lines(path, decision_id) if line.get("msg", line.get("message")) == message]
        if lines:
            return lines[0]
        time.sleep(0.1)
    raise AssertionError(f"no {message!r} line for {decision_id} in {path}")


def test_the_clients_trace_id_reaches_sidecar_spans_the_record_and_opas_decision_log(
    traced_stack: Stack, receiver: OtlpReceiver
) -> None:
    stack = traced_stack
    decision_id = _call(stack, {"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01"})

    record = _wait_line(stack.logs / "sidecar.log", decision_id, "decision")
    assert record["trace_id"] == TRACE_ID
    opa_event = _wait_line(stack.logs / "opa.log", decision_id, "Decision Log")
    assert opa_event["trace_id"] == TRACE_ID

    def complete(spans: list[ReceivedSpan]) -> bool:
        ours = [s for s in spans if s.trace_id == TRACE_ID]
        return {"authz-sidecar", "opa"} <= {s.service for s in ours} and any(s.kind == CLIENT for s in ours)

    spans = [s for s in receiver.wait_for(complete) if s.trace_id == TRACE_ID]
    sidecar = [s for s in spans if s.service == "authz-sidecar"]
    check = [s for s in sidecar if s.kind == SERVER and s.attributes.get("authz.decision_id") == decision_id]
    assert len(check) == 1, sidecar
    assert check[0].attributes["authz.verdict"] == "allow"
    # Envoy continued the client's trace with a span of its own (not exported: no collector in the
    # template), so the sidecar's parent is Envoy's span, not the client's.
    assert check[0].parent_span_id not in ("", CLIENT_SPAN)
    opa_query = [s for s in sidecar if s.kind == CLIENT and s.parent_span_id == check[0].span_id]
    assert opa_query, "a client span for the OPA query, under the check's span"
    opa_spans = [s for s in spans if s.service == "opa"]
    assert any(s.parent_span_id == opa_query[0].span_id for s in opa_spans), "OPA's span hangs under the query"
    assert opa_event["span_id"] in {s.span_id for s in opa_spans}


@pytest.mark.parametrize(
    "traceparent",
    [
        None,
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",  # the all-zero trace id is invalid
        "garbage",
        "00-" + "a" * 32 + "-" + "b" * 16 + "-01-extra",
    ],
    ids=["absent", "zero", "garbage", "trailing"],
)
def test_without_a_valid_traceparent_envoy_starts_a_trace_and_the_check_is_unaffected(
    traced_stack: Stack, traceparent: str | None
) -> None:
    stack = traced_stack
    decision_id = _call(stack, {} if traceparent is None else {"traceparent": traceparent})
    record = _wait_line(stack.logs / "sidecar.log", decision_id, "decision")
    opa_event = _wait_line(stack.logs / "opa.log", decision_id, "Decision Log")
    trace_id = record["trace_id"]
    assert isinstance(trace_id, str) and len(trace_id) == 32 and trace_id != "0" * 32
    assert trace_id not in (TRACE_ID, "a" * 32) and trace_id.lower() not in (traceparent or "").lower()
    assert opa_event["trace_id"] == trace_id


def test_grpc_mode_reads_the_trace_from_the_check_calls_metadata(tmp_path_factory: pytest.TempPathFactory) -> None:
    """gRPC ext_authz: Envoy sends the trace context as the Check call's metadata (no collector here:
    tracing off, the record and OPA's event still share the client's trace id)."""
    with Stack(tmp_path_factory.mktemp("tracing-grpc"), Ports.free(), mode="grpc") as stack:
        decision_id = _call(stack, {"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01"})
        assert _wait_line(stack.logs / "sidecar.log", decision_id, "decision")["trace_id"] == TRACE_ID
        assert _wait_line(stack.logs / "opa.log", decision_id, "Decision Log")["trace_id"] == TRACE_ID
