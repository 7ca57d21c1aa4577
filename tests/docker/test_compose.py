"""The docker-compose.yml stack, end to end through its Envoy (needs a Docker engine)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests

from devstack.trust_domain import DevTrustDomain
from tests.docker.conftest import UNAVAILABLE

pytestmark = [pytest.mark.docker, pytest.mark.skipif(UNAVAILABLE is not None, reason=f"compose tests: {UNAVAILABLE}")]

READER = "spiffe://demo.local/agent/reader"


@pytest.fixture(scope="session")
def envoy(compose_inputs: DevTrustDomain, docker_ip: str, docker_services: Any) -> str:
    url = f"http://{docker_ip}:{docker_services.port_for('envoy', 10000)}"

    def answers() -> bool:
        try:
            return requests.get(url + "/api/docs/a", timeout=2).status_code == 401  # no token: sidecar answered
        except requests.RequestException:
            return False

    docker_services.wait_until_responsive(check=answers, timeout=120.0, pause=1.0)
    return url


def bearer(dev: DevTrustDomain, spiffe_id: str) -> dict[str, str]:
    return {"authorization": f"Bearer {dev.mint_jwt(spiffe_id)}"}


def test_allow_and_deny_through_compose(envoy: str, compose_inputs: DevTrustDomain) -> None:
    allowed = requests.get(envoy + "/api/docs/handbook", headers=bearer(compose_inputs, READER), timeout=10)
    assert allowed.status_code == 200, allowed.text
    assert allowed.json()["upstream_saw"]["spiffe_id"] == READER
    denied = requests.post(envoy + "/api/tickets", headers=bearer(compose_inputs, READER), timeout=10)
    assert denied.status_code == 403
    forged = bearer(compose_inputs, READER)["authorization"][:-4] + "AAAA"
    assert requests.get(envoy + "/api/docs/a", headers={"authorization": forged}, timeout=10).status_code == 401


def test_decisions_reach_the_decision_log_receiver(
    envoy: str, compose_inputs: DevTrustDomain, docker_services: Any
) -> None:
    response = requests.get(envoy + "/api/docs/handbook", headers=bearer(compose_inputs, READER), timeout=10)
    decision_id = response.headers["x-authz-decision-id"]

    def logged() -> bool:
        out = docker_services._docker_compose.execute(
            "exec -T decision-log-receiver cat /var/log/authz/decisions.jsonl"
        )
        events = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
        return any(e.get("decision_id") == decision_id for e in events)

    docker_services.wait_until_responsive(check=logged, timeout=30.0, pause=1.0)


def test_opa_down_is_503_never_allow(envoy: str, compose_inputs: DevTrustDomain, docker_services: Any) -> None:
    docker_services._docker_compose.execute("stop opa")
    try:
        response = requests.get(envoy + "/api/docs/handbook", headers=bearer(compose_inputs, READER), timeout=10)
        assert response.status_code == 503
    finally:
        docker_services._docker_compose.execute("start opa")
