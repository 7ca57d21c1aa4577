"""Fail closed: OPA killed, slow, or answering garbage gives 503 through Envoy, never 200."""

from __future__ import annotations

import signal
import time

import pytest
import requests

from sidecar.dev.stack import Ports, Stack
from tests.e2e.conftest import READER, FakeOpa

pytestmark = pytest.mark.e2e


def get_docs(stack: Stack) -> requests.Response:
    token = stack.trust_domain.mint_jwt(READER)
    return requests.get(
        stack.egress_url + "/api/docs/handbook", headers={"authorization": f"Bearer {token}"}, timeout=10
    )


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


@pytest.mark.parametrize("mode", [*sorted(FakeOpa.modes), "slow"])
def test_broken_opa_answers_are_503(broken_opa_stack: Stack, fake_opa: FakeOpa, mode: str) -> None:
    fake_opa.mode = mode
    response = get_docs(broken_opa_stack)
    assert response.status_code == 503, response.text
    assert response.json()["verdict"] == "error"


def test_sidecar_down_is_503(tmp_path_factory: pytest.TempPathFactory) -> None:
    with Stack(tmp_path_factory.mktemp("sidecar-down"), Ports.free()) as stack:
        stack.stop_sidecar()
        response = get_docs(stack)
        assert response.status_code == 503
