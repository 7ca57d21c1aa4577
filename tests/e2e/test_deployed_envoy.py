"""The Envoy config the agent's pod runs (charts/authz-sidecar/files/envoy-egress.yaml), on real Envoy, against the
real sidecar, OPA and demo upstream.

The config is the ``kubernetes-egress-local`` variant: ``kubernetes-egress`` with only addresses
substituted (the run directory holding the sidecar's socket, free ports for the egress and
readiness listeners, the demo upstream as the tool's address, in plain HTTP since SPIRE is not
here). Everything else — the tool's virtual host with the refusal routes, the 'not-allowed'
catch-all, the ext_authz filter, the removed headers, the access log — is the deployed file's.
The client talks to it as the agent does: through ``HTTP_PROXY`` to the tool's service name.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from devstack.agent_client import AgentClient
from devstack.envoy_config import load_variant, render_variant, variant_config
from devstack.ports import free_ports
from devstack.stack import Stack
from sidecar.unix_http import unix_request
from tests.e2e.conftest import READER, WRITER

pytestmark = pytest.mark.e2e

VARIANT = "kubernetes-egress-local"
TOOL = "http://tickets.tools.svc.cluster.local"  # the tool's service name in kubernetes-egress


@dataclass
class DeployedEnvoy:
    proxy: str  # http://127.0.0.1:PORT, the agent's HTTP_PROXY
    health: str
    log: Path
    config: dict[str, Any]


@pytest.fixture(scope="module")
def deployed(stack: Stack, envoy_bin: str) -> Iterator[DeployedEnvoy]:
    # The pod's /run/authz: the sidecar's check and response-path sockets (the stack's) and Envoy's
    # own admin socket.
    run_dir = Path(tempfile.mkdtemp(prefix="authz-run-"))  # short: unix socket paths have ~107 bytes
    (run_dir / "sidecar.sock").symlink_to(stack.check_socket)
    (run_dir / "ext_proc.sock").symlink_to(stack.ext_proc_socket)
    egress, health = free_ports(2)
    values = {"RUN_DIR": run_dir, "EGRESS_PORT": egress, "HEALTH_PORT": health, "UPSTREAM_PORT": stack.ports.upstream}
    path = run_dir / "envoy.yaml"
    path.write_text(render_variant(VARIANT, values))
    log = stack.logs / "envoy-kubernetes-egress.log"
    with log.open("ab") as out:
        argv = [envoy_bin, "-c", str(path), "--log-level", "warning", "--disable-hot-restart", "--use-dynamic-base-id"]
        argv += ["--file-flush-interval-msec", "100"]  # the access log within the test's wait, not 10 s
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if unix_request(run_dir / "envoy-admin.sock", "GET", "/ready", timeout=1).status_code == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the deployed Envoy config did not become ready:\n" + log.read_text()
            time.sleep(0.1)
        yield DeployedEnvoy(
            f"http://127.0.0.1:{egress}", f"http://127.0.0.1:{health}", log, yaml.safe_load(path.read_text())
        )
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(run_dir, ignore_errors=True)


def through(
    envoy: DeployedEnvoy, client: AgentClient, method: str, url: str, agent: str | None, **kw: Any
) -> requests.Response:
    """As the agent's HTTP client does: ``HTTP_PROXY`` is the pod's Envoy."""
    headers = dict(kw.pop("headers", {}))
    if agent:
        headers["authorization"] = "Bearer " + client.token(agent)
    with requests.Session() as session:
        session.trust_env = False
        return session.request(method, url, headers=headers, proxies={"http": envoy.proxy}, timeout=10, **kw)


def access_line(envoy: DeployedEnvoy, decision_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 5  # Envoy flushes its access log asynchronously
    while True:
        for line in envoy.log.read_text().splitlines():
            if line.startswith("{") and json.loads(line).get("decision_id") == decision_id:
                entry: dict[str, Any] = json.loads(line)
                return entry
        assert time.monotonic() < deadline, f"no access log line with decision id {decision_id}"
        time.sleep(0.1)


def test_it_is_the_committed_file_with_only_addresses_changed(deployed: DeployedEnvoy) -> None:
    committed = load_variant("kubernetes-egress").output
    assert committed is not None
    deployed_config = yaml.safe_load(committed.read_text())
    assert variant_config("kubernetes-egress") == deployed_config
    ran = deployed.config
    (egress,) = [x for x in ran["static_resources"]["listeners"] if x["name"] == "egress"]
    (committed_egress,) = [x for x in deployed_config["static_resources"]["listeners"] if x["name"] == "egress"]
    assert egress["filter_chains"] == committed_egress["filter_chains"], "the deployed filters, routes and checks"
    assert ran["node"] == deployed_config["node"]
    # otel_collector: the tracer's node-local exporter (envoy/envoy.yaml; Envoy's own spans are never sampled).
    assert [c["name"] for c in ran["static_resources"]["clusters"]] == [
        "authz_sidecar",
        "otel_collector",
        "authz_ext_proc",
        "tool_tickets",
    ]


def test_allow_reaches_the_tool_and_is_logged_with_its_decision(
    deployed: DeployedEnvoy, client: AgentClient, stack: Stack
) -> None:
    spoof = {"x-authz-spiffe-id": WRITER, "x-http-method-override": "DELETE"}
    response = through(deployed, client, "GET", f"{TOOL}/api/docs/handbook", READER, headers=spoof)
    assert response.status_code == 200, response.text
    saw = response.json()["upstream_saw"]
    decision_id = response.headers["x-authz-decision-id"]
    assert saw["decision_id"] == decision_id and saw["spiffe_id"] == READER, "the client's x-authz-* is stripped"
    assert saw["host"] == "tickets.tools.svc.cluster.local"
    assert saw["authorization_present"] is False, "the agent's JWT-SVID is for the sidecar, not the tool"
    upstream = [json.loads(x) for x in (stack.logs / "upstream.log").read_text().splitlines() if decision_id in x]
    assert upstream and upstream[0]["method_override"] == [], "override headers are removed before the tool"
    line = access_line(deployed, decision_id)
    assert line["status"] == 200 and line["method"] == "GET"
    assert line["request_id"] not in ("", "-", None)
    assert line["request_id"] in (stack.logs / "sidecar.log").read_text(), "the request id finds the sidecar's line"


def test_mcp_responses_pass_the_response_path(deployed: DeployedEnvoy, client: AgentClient) -> None:
    """The deployed config's ext_proc reaches the sidecar's response path: the reader's list is filtered."""
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    response = through(deployed, client, "POST", f"{TOOL}/mcp", READER, json=body, headers={"mcp-method": "tools/list"})
    assert response.status_code == 200, response.text
    assert {t["name"] for t in response.json()["result"]["tools"]} == {"search_docs", "get_record"}


def test_deny_is_403_json_and_logged(deployed: DeployedEnvoy, client: AgentClient) -> None:
    response = through(deployed, client, "POST", f"{TOOL}/api/tickets", READER, json={"title": "x"})
    assert response.status_code == 403, response.text
    document = response.json()
    assert document["verdict"] == "deny" and document["reasons"]
    assert document["decision_id"] == response.headers["x-authz-decision-id"]
    assert access_line(deployed, document["decision_id"])["status"] == 403


def test_the_minted_credential_reaches_the_tool(deployed: DeployedEnvoy, client: AgentClient) -> None:
    task = {"x-agent-task-token": client.task_token(WRITER, "triage", ["tickets:write"])}
    response = through(deployed, client, "POST", f"{TOOL}/api/tickets", WRITER, headers=task, json={"title": "x"})
    assert response.status_code == 201, response.text
    saw = response.json()["upstream_saw"]
    assert saw["authorization_present"] is True and saw["task_token_present"] is False
    assert saw["credential"]["sub"] == WRITER, "the tool verified the sidecar-minted credential"
    assert saw["credential"]["decision_id"] == response.headers["x-authz-decision-id"]


def test_only_the_tools_and_only_clean_requests_are_forwarded(deployed: DeployedEnvoy, client: AgentClient) -> None:
    elsewhere = through(deployed, client, "GET", "http://example.com/api/docs/handbook", READER)
    assert elsewhere.status_code == 403
    assert elsewhere.json()["reasons"] == ["destination is not an allowed tool service"]
    semicolon = through(deployed, client, "GET", f"{TOOL}/api/docs/handbook;x=1", READER)
    assert semicolon.status_code == 400 and "path parameters" in semicolon.json()["reasons"][0]
    assert requests.get(deployed.health + "/ready", timeout=5).text == "ready", "the kubelet's readiness listener"
