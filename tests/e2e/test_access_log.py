"""Envoy's JSON access log on the local stack's real Envoy (envoy/envoy.yaml, as every variant
renders it): each line carries the request id and the decision id the client saw, and the same ids
find the sidecar's decision line and OPA's decision log entry."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest

from devstack.agent_client import AgentClient
from devstack.stack import Stack
from tests.e2e.conftest import READER
from tests.e2e.test_faults import decision_record

pytestmark = pytest.mark.e2e


def access_line(stack: Stack, request_id: str, timeout: float = 12.0) -> dict[str, Any]:
    """Envoy's access log line for ``request_id`` (Envoy flushes its log asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        for line in (stack.logs / "envoy.log").read_text(errors="replace").splitlines():
            if line.startswith("{") and request_id in line:
                entry: dict[str, Any] = json.loads(line)
                if entry.get("request_id") == request_id:
                    return entry
        assert time.monotonic() < deadline, f"no JSON access line for request {request_id}"
        time.sleep(0.1)


@pytest.mark.parametrize(
    ("method", "path", "status"), [("GET", "/api/docs/handbook", 200), ("POST", "/api/tickets", 403)]
)
def test_the_access_line_carries_the_decision_id_the_client_saw(
    client: AgentClient, stack: Stack, method: str, path: str, status: int
) -> None:
    request_id = str(uuid.uuid4())
    response = client.request(method, path, READER, headers={"x-request-id": request_id}, json={"title": "x"})
    assert response.status_code == status, response.text
    decision_id = response.headers["x-authz-decision-id"]
    line = access_line(stack, request_id)
    assert line["decision_id"] == decision_id, "the access line names the decision the client was told"
    assert (line["status"], line["method"]) == (status, method)
    assert decision_record(stack, request_id)["decision_id"] == decision_id, "the sidecar's line, by request id"
    assert decision_id in (stack.logs / "opa.log").read_text(), "OPA's decision log entry, by decision id"
