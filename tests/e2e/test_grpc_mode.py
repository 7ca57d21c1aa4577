"""ext_authz gRPC mode through real Envoy (envoy/envoy-grpc.yaml), the real sidecar and real OPA."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
import yaml
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc
from google.rpc import code_pb2

from devstack.agent_client import AgentClient
from devstack.stack import Ports, Stack
from tests.e2e.conftest import READER, WRITER
from tests.e2e.test_mcp_response_path import assert_streams_event_by_event

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def grpc_stack(tmp_path_factory: pytest.TempPathFactory, opa_bin: str, envoy_bin: str) -> Iterator[Stack]:
    with Stack(tmp_path_factory.mktemp("grpc-stack"), Ports.free(), mode="grpc") as running:
        yield running


@pytest.fixture(scope="module")
def grpc_client(grpc_stack: Stack) -> AgentClient:
    return AgentClient(grpc_stack)


def body(response: requests.Response) -> dict[str, Any]:
    data: dict[str, Any] = response.json()
    return data


def test_grpc_envoy_config_validates(envoy_bin: str, tmp_path: Path) -> None:
    stack = Stack(tmp_path, Ports.free(), mode="grpc")
    stack.trust_domain.ensure()
    config = stack._write_envoy_config()
    result = subprocess.run([envoy_bin, "--mode", "validate", "-c", str(config)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    rendered = config.read_text()
    ext_authz = [
        f["typed_config"]
        for listener in yaml.safe_load(rendered)["static_resources"]["listeners"]
        for chain in listener["filter_chains"]
        for hcm in chain["filters"]
        for f in hcm["typed_config"].get("http_filters", [])
        if f["name"] == "envoy.filters.http.ext_authz"
    ]
    assert ext_authz and all("grpc_service" in f and "http_service" not in f for f in ext_authz)
    assert "failure_mode_allow: false" in rendered
    assert rendered.count("initial_metadata:") == 1, "only the mTLS listener vouches for the peer"


def test_allow_carries_identity_and_decision_id(grpc_client: AgentClient, grpc_stack: Stack) -> None:
    response = grpc_client.request("GET", "/api/docs/handbook", READER)
    assert response.status_code == 200, response.text
    decision_id = response.headers["x-authz-decision-id"]
    saw = body(response)["upstream_saw"]
    assert saw["decision_id"] == decision_id
    assert saw["spiffe_id"] == READER
    assert saw["authorization_present"] is False, "the JWT-SVID is for the sidecar, not the upstream"
    assert decision_id in (grpc_stack.logs / "opa.log").read_text()
    deadline = time.monotonic() + 5  # Envoy flushes its access log asynchronously
    while f'"decision_id":"{decision_id}"' not in (grpc_stack.logs / "envoy.log").read_text():
        assert time.monotonic() < deadline, "the decision id must reach Envoy's dynamic metadata (access log)"
        time.sleep(0.1)


def test_deny_is_403_json(grpc_client: AgentClient) -> None:
    response = grpc_client.request("POST", "/api/tickets", READER, json={"title": "x"})
    assert response.status_code == 403
    document = body(response)
    assert document["verdict"] == "deny" and document["reasons"]
    assert document["decision_id"] == response.headers["x-authz-decision-id"]
    assert response.headers["content-type"] == "application/json"


def test_step_up_acr_challenge(grpc_client: AgentClient, grpc_stack: Stack) -> None:
    task = {"x-agent-task-token": grpc_client.task_token(WRITER, "billing", ["payments:write"])}
    response = grpc_client.request("POST", "/api/payments", WRITER, headers=task, json={"amount": 5})
    assert response.status_code == 401, response.text
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('Bearer error="insufficient_user_authentication"')
    assert 'acr_values="urn:demo:acr:mfa"' in challenge
    assert body(response)["step_up"]["kind"] == "acr"


def test_write_under_a_task_gets_the_minted_credential(grpc_client: AgentClient, grpc_stack: Stack) -> None:
    task = {"x-agent-task-token": grpc_client.task_token(WRITER, "triage", ["tickets:write"])}
    response = grpc_client.request("POST", "/api/tickets", WRITER, headers=task, json={"title": "x"})
    assert response.status_code == 201, response.text
    saw = body(response)["upstream_saw"]
    assert saw["spiffe_id"] == WRITER and saw["task_token_present"] is False
    assert saw["credential"]["sub"] == WRITER
    assert saw["credential"]["decision_id"] == response.headers["x-authz-decision-id"]


def test_mcp_tool_allowed_and_denied(grpc_client: AgentClient) -> None:
    allowed = grpc_client.mcp(READER, "tools/call", "search_docs", {"q": "vpn" * 700})
    assert allowed.status_code == 200, allowed.text
    denied = grpc_client.mcp(READER, "tools/call", "delete_record", {"id": "42"}, rpc_id=42)
    assert denied.status_code == 403
    document = body(denied)
    assert document["jsonrpc"] == "2.0" and document["id"] == 42
    assert document["error"]["data"]["verdict"] == "deny"
    assert document["error"]["data"]["decision_id"] == denied.headers["x-authz-decision-id"]


def test_an_sse_stream_reaches_the_agent_event_by_event(grpc_client: AgentClient, grpc_stack: Stack) -> None:
    assert_streams_event_by_event(grpc_client, grpc_stack)  # the same ext_proc settings in gRPC mode's Envoy


@pytest.mark.parametrize("token", ["garbage", "not.a.jwt"])
def test_invalid_token_is_401(grpc_client: AgentClient, token: str) -> None:
    response = grpc_client.request("GET", "/api/docs/handbook", headers={"authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert "invalid_token" in response.headers["www-authenticate"]
    assert body(response)["verdict"] == "deny"


def test_expired_token_is_401(grpc_client: AgentClient, grpc_stack: Stack) -> None:
    token = grpc_stack.trust_domain.mint_jwt(READER, ttl=-30)
    response = grpc_client.request("GET", "/api/docs/handbook", headers={"authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert body(response)["reasons"] == ["JWT-SVID rejected: token has expired"]


def test_bodies_are_judged_as_sent(grpc_client: AgentClient) -> None:
    # pack_as_bytes: invalid UTF-8 reaches the sidecar unchanged and is refused, never re-encoded.
    bad = grpc_client.request(
        "POST", "/mcp", READER, headers={"content-type": "application/json"}, data=b'{"a":"\xff"}'
    )
    assert bad.status_code == 400, bad.text
    # Larger than Envoy's max_request_bytes: the sidecar sees a partial body and refuses to judge it.
    huge = grpc_client.request(
        "POST", "/mcp", READER, headers={"content-type": "application/json"}, data=b'{"a":"' + b"x" * 70_000 + b'"}'
    )
    assert huge.status_code == 413, huge.text


def _svid(stack: Stack, spiffe_id: str) -> tuple[str, str, str]:
    files = stack.trust_domain.mint_x509(spiffe_id, stack.workdir / "svids" / spiffe_id.replace("/", "_"))
    return str(files.cert), str(files.key), str(stack.trust_domain.ca_cert)


def test_mtls_identity_from_source_principal(grpc_stack: Stack) -> None:
    cert, key, ca = _svid(grpc_stack, WRITER)
    forged = {"x-forwarded-client-cert": f"URI={READER}", "x-authz-xfcc-secret": "guess" * 8}
    response = requests.get(grpc_stack.ingress_url + "/api/docs/runbook", cert=(cert, key), verify=ca, headers=forged)
    assert response.status_code == 200, response.text
    assert body(response)["upstream_saw"]["spiffe_id"] == WRITER
    assert f'"agent": "{WRITER}", "identity_source": "xfcc"' in (grpc_stack.logs / "sidecar.log").read_text()


def _check(stack: Stack, principal: str, metadata: tuple[tuple[str, str], ...]) -> Any:
    http = attribute_context_pb2.AttributeContext.HttpRequest(
        method="GET", path="/api/docs/handbook", host="tools", headers={"x-request-id": "direct-call"}
    )
    request = external_auth_pb2.CheckRequest(
        attributes=attribute_context_pb2.AttributeContext(
            source=attribute_context_pb2.AttributeContext.Peer(principal=principal),
            request=attribute_context_pb2.AttributeContext.Request(http=http),
        )
    )
    with grpc.insecure_channel(f"unix:{stack.grpc_socket}") as channel:  # what Envoy reaches
        return external_auth_pb2_grpc.AuthorizationStub(channel).Check(request, metadata=metadata, timeout=5)


def test_principal_without_the_secret_is_401(grpc_stack: Stack) -> None:
    """An agent in the pod can reach the gRPC port directly: a forged principal must not count."""
    for metadata in [(), (("x-authz-xfcc-secret", "not-the-secret-but-long-enough"),)]:
        response = _check(grpc_stack, WRITER, metadata)
        assert response.status.code == code_pb2.UNAUTHENTICATED
        assert response.denied_response.status.code == 401
        assert "source.principal is not trusted" in response.denied_response.body
    secret = grpc_stack.trust_domain.xfcc_secret.read_text().strip()
    trusted = _check(grpc_stack, WRITER, (("x-authz-xfcc-secret", secret),))
    assert trusted.status.code == code_pb2.OK, "with Envoy's secret the same principal is trusted"
    upstream = {h.header.key: h.header.value for h in trusted.ok_response.headers}
    assert upstream["x-authz-spiffe-id"] == WRITER


def test_opa_killed_is_503(tmp_path: Path, opa_bin: str, envoy_bin: str) -> None:
    with Stack(tmp_path, Ports.free(), mode="grpc") as stack:
        client = AgentClient(stack)
        assert client.request("GET", "/api/docs/handbook", READER).status_code == 200
        stack.stop_opa(signal.SIGKILL)
        for _ in range(3):
            response = client.request("GET", "/api/docs/handbook", READER)
            assert response.status_code == 503
            assert response.json()["verdict"] == "error"
        secret = stack.trust_domain.xfcc_secret.read_text().strip()
        with pytest.raises(grpc.RpcError) as info:
            _check(stack, READER, (("x-authz-xfcc-secret", secret),))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
