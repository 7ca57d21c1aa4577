"""The opa-envoy-plugin profile through real Envoy (gRPC mode), the real sidecar and real OPA: a
policy written for the plugin (Basic-auth RBAC, as its quick start) runs unchanged, with no SPIFFE
identity, credentials verbatim in the input and masked in OPA's decision log."""

from __future__ import annotations

import base64
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from devstack.stack import Ports, Stack

pytestmark = pytest.mark.e2e
POLICIES = Path(__file__).resolve().parent.parent / "compat" / "policies"


def basic(user: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{user}:password".encode()).decode()}


@pytest.fixture(scope="module", params=["grpc", "http"])
def plugin_stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, opa_bin: str, envoy_bin: str
) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp(f"plugin-profile-{request.param}")
    bundle = workdir / "policy"
    shutil.copytree(POLICIES / "rbac_basic", bundle)
    with Stack(workdir, Ports.free(), bundle=bundle, decision_path="envoy/authz/allow", mode=request.param,
               profile="opa-envoy-plugin") as running:  # fmt: skip
        yield running


def test_a_plugin_policy_runs_unchanged(plugin_stack: Stack) -> None:
    """In both of Envoy's modes (HTTP mode forwards Authorization to the sidecar)."""
    url = f"{plugin_stack.egress_url}/api/docs/handbook"
    allowed = requests.get(url, headers=basic("bob"), timeout=10)
    # Allowed: the demo upstream got the request with the caller's Basic credential (the plugin
    # leaves Authorization alone) and refuses it itself, as it takes only sidecar-minted bearers.
    assert (allowed.status_code, allowed.json()) == (401, {"error": "not a bearer credential"}), allowed.text
    assert "x-authz-decision-id" not in allowed.headers, "the profile adds none of the agent profile's headers"
    denied = requests.post(f"{plugin_stack.egress_url}/api/tickets", headers=basic("alice"), json={}, timeout=10)
    assert denied.status_code == 403 and denied.text == "", "a boolean deny has an empty body"
    assert requests.get(url, timeout=10).status_code == 403, "no credential: the policy denies, no 401 first"


def test_credentials_reach_the_policy_but_not_the_log(plugin_stack: Stack) -> None:
    secret = basic("bob")["authorization"].split()[1]
    assert requests.get(f"{plugin_stack.egress_url}/api/docs/x", headers=basic("bob"), timeout=10).status_code == 401
    log = plugin_stack.logs / "opa.log"
    deadline = time.monotonic() + 5
    while '"envoy/authz/allow"' not in log.read_text():
        assert time.monotonic() < deadline, "no decision logged"
        time.sleep(0.1)
    text = log.read_text()
    assert secret not in text, "the shipped mask erases the Authorization header from decision logs"
    assert '"/input/attributes/request/http/headers/authorization"' in text


EFFECTS = """package envoy.authz

allow := {
	"allowed": true,
	"headers": {"x-authz-rule": "from-policy"},
	"response_headers_to_add": {"x-client-saw": "yes"},
	"query_parameters_to_set": {"tenant": "t1"},
	"query_parameters_to_remove": ["debug"],
} if input.attributes.request.http.method == "GET"

allow := {"allowed": false, "http_status": 429, "body": "{\\"error\\":\\"slow down\\"}"} if {
	input.attributes.request.http.method == "POST"
}
"""


@pytest.fixture(scope="module")
def effects_stack(tmp_path_factory: pytest.TempPathFactory, opa_bin: str, envoy_bin: str) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("plugin-effects")
    (workdir / "policy").mkdir()
    (workdir / "policy" / "policy.rego").write_text(EFFECTS)
    with Stack(workdir, Ports.free(), bundle=workdir / "policy", decision_path="envoy/authz/allow", mode="grpc",
               profile="opa-envoy-plugin") as running:  # fmt: skip
        yield running


def test_the_results_effects_through_envoy(effects_stack: Stack) -> None:
    """Upstream headers, client headers and query rewriting reach where the plugin sends them."""
    response = requests.get(f"{effects_stack.egress_url}/api/docs/handbook?debug=1&page=2", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["x-client-saw"] == "yes"
    saw = response.json()["upstream_saw"]
    assert saw["rule"] == "from-policy"
    path, _, query = saw["target"].partition("?")
    assert path == "/api/docs/handbook" and sorted(query.split("&")) == ["page=2", "tenant=t1"]
    denied = requests.post(f"{effects_stack.egress_url}/api/tickets", json={}, timeout=10)
    assert (denied.status_code, denied.text) == (429, '{"error":"slow down"}')
