"""Fail closed: OPA killed, slow, or answering garbage gives 503 through Envoy, never 200."""

from __future__ import annotations

import json
import signal
import time
import uuid
from typing import Any

import pytest
import requests

from devstack.stack import Ports, Stack
from tests.e2e.conftest import READER, SIDECAR_OPA_TIMEOUT_MS, FakeOpa

pytestmark = pytest.mark.e2e


ENVOY_EXT_AUTHZ_TIMEOUT_S = 2.0  # envoy/envoy.yaml: http_service.server_uri.timeout


def get_docs(stack: Stack, request_id: str | None = None) -> requests.Response:
    headers = {"authorization": "Bearer " + stack.trust_domain.mint_jwt(READER)}
    if request_id:
        headers["x-request-id"] = request_id
    return requests.get(stack.egress_url + "/api/docs/handbook", headers=headers, timeout=10)


def decision_record(stack: Stack, request_id: str, timeout: float = 5.0) -> dict[str, Any]:
    """The sidecar's decision line for the request Envoy sent with ``request_id``."""
    deadline = time.monotonic() + timeout
    while True:
        for line in (stack.logs / "sidecar.log").read_text(errors="replace").splitlines():
            if request_id in line and line.startswith("{"):
                record: dict[str, Any] = json.loads(line)
                if record.get("message") == "decision" and record.get("request_id") == request_id:
                    return record
        assert time.monotonic() < deadline, f"the sidecar logged no decision for request {request_id}"
        time.sleep(0.1)


def test_opa_killed_then_restarted(tmp_path_factory: pytest.TempPathFactory) -> None:
    with Stack(tmp_path_factory.mktemp("opa-killed"), Ports.free()) as stack:
        assert get_docs(stack).status_code == 200
        stack.stop_opa(signal.SIGKILL)
        for _ in range(5):
            response = get_docs(stack)
            assert response.status_code == 503
            assert response.json()["verdict"] == "error"
        assert requests.get(stack.sidecar_admin_url + "/readyz").status_code == 503
        assert '"stage": "opa"' in (stack.logs / "sidecar.log").read_text()
        stack.start_opa()
        deadline = time.monotonic() + 10
        while get_docs(stack).status_code != 200:
            assert time.monotonic() < deadline, "no recovery after OPA came back"
            time.sleep(0.2)


@pytest.mark.parametrize("mode", sorted(FakeOpa.modes))
def test_broken_opa_answers_are_503(broken_opa_stack: Stack, fake_opa: FakeOpa, mode: str) -> None:
    fake_opa.mode = mode
    request_id = str(uuid.uuid4())
    response = get_docs(broken_opa_stack, request_id)
    assert response.status_code == 503, response.text
    assert response.json()["verdict"] == "error"
    record = decision_record(broken_opa_stack, request_id)
    assert (record["verdict"], record["status"]) == ("error", 503), "the sidecar itself decided: no decision"


def test_slow_opa_hits_the_sidecars_timeout_not_envoys(broken_opa_stack: Stack, fake_opa: FakeOpa) -> None:
    """OPA answers an allow after 1 s: past the sidecar's 300 ms timeout, well before Envoy's 2 s.

    So the 503 is the sidecar's own: it comes in about 300 ms, and the sidecar's decision record
    (and its answer, asked directly) gives its timeout as the reason. With the sidecar's timeout
    ignored, the late allow would come through as a 200.
    """
    assert SIDECAR_OPA_TIMEOUT_MS / 1000 < FakeOpa.slow_seconds < ENVOY_EXT_AUTHZ_TIMEOUT_S
    fake_opa.mode = "slow"
    request_id = str(uuid.uuid4())
    started = time.monotonic()
    response = get_docs(broken_opa_stack, request_id)
    elapsed = time.monotonic() - started
    assert response.status_code == 503, response.text
    assert elapsed < FakeOpa.slow_seconds, f"503 after {elapsed:.2f}s: not the sidecar's 300 ms timeout"
    # Envoy replaces the body of an authz 5xx with its own (envoy.yaml local_reply_config): the
    # request id in it finds the sidecar's decision record, which says why.
    body = response.json()
    assert (body["verdict"], body["request_id"]) == ("error", request_id)
    record = decision_record(broken_opa_stack, request_id)
    assert record["reasons"] == ["policy engine timed out"], record
    assert (record["verdict"], record["status"], record["stage"]) == ("error", 503, "opa"), record
    assert 0.9 * SIDECAR_OPA_TIMEOUT_MS <= record["latency_ms"] < FakeOpa.slow_seconds * 1000, record

    # The sidecar's own answer (what Envoy receives) carries the reason in its body.
    token = broken_opa_stack.trust_domain.mint_jwt(READER)
    direct = broken_opa_stack.check("GET", "/api/docs/handbook", {"authorization": f"Bearer {token}"})
    assert direct.status_code == 503, direct.text
    answer = direct.json()
    assert (answer["verdict"], answer["reasons"]) == ("error", ["policy engine timed out"]), answer
    assert answer["decision_id"] == direct.headers["x-authz-decision-id"]


def test_sidecar_down_is_503(tmp_path_factory: pytest.TempPathFactory) -> None:
    with Stack(tmp_path_factory.mktemp("sidecar-down"), Ports.free()) as stack:
        stack.stop_sidecar()
        response = get_docs(stack)
        assert response.status_code == 503
