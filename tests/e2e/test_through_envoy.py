"""What an agent sees through real Envoy, with the real sidecar, real OPA and the shipped policy."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from devstack.agent_client import AgentClient
from devstack.stack import OPA_ENV, Stack
from devstack.trust_domain import DevTrustDomain
from tests.adversarial.conftest import Attacker
from tests.e2e.conftest import READER, WRITER

pytestmark = pytest.mark.e2e


def body(response: requests.Response) -> dict[str, Any]:
    data: dict[str, Any] = response.json()
    return data


def test_allowed_read_carries_identity_and_decision_id_upstream(client: AgentClient, stack: Stack) -> None:
    response = client.request("GET", "/api/docs/handbook", READER)
    assert response.status_code == 200
    saw = body(response)["upstream_saw"]
    decision_id = response.headers["x-authz-decision-id"]
    assert saw["decision_id"] == decision_id
    assert saw["spiffe_id"] == READER
    assert saw["authorization_present"] is False, "the JWT-SVID is for the sidecar, not the upstream"
    assert decision_id in (stack.logs / "opa.log").read_text(), "OPA's decision log must hold the same id"
    assert decision_id in (stack.logs / "sidecar.log").read_text()


def test_opa_runs_with_the_shipped_go_runtime_settings(stack: Stack) -> None:
    environ = set(Path(f"/proc/{stack.processes['opa'].pid}/environ").read_bytes().split(b"\0"))
    assert {f"{k}={v}".encode() for k, v in OPA_ENV.items()} <= environ


def test_opa_logs_a_decision_as_one_line_without_access_lines(client: AgentClient, stack: Stack) -> None:
    decision_id = client.request("GET", "/api/docs/handbook", READER).headers["x-authz-decision-id"]
    lines = [json.loads(line) for line in (stack.logs / "opa.log").read_text().splitlines() if line.startswith("{")]
    assert [line["msg"] for line in lines if line.get("decision_id") == decision_id] == ["Decision Log"]
    access = [line for line in lines if line.get("msg") in {"Received request.", "Sent response."}]
    assert access == [], "OPA's access log is at debug (OPA_RUN_FLAGS): the decision log has each query"


def test_reader_cannot_write(client: AgentClient) -> None:
    response = client.request("POST", "/api/tickets", READER, json={"title": "x"})
    assert response.status_code == 403
    document = body(response)
    assert document["verdict"] == "deny"
    assert document["reasons"] and all(isinstance(r, str) for r in document["reasons"])
    assert document["decision_id"] == response.headers["x-authz-decision-id"]


def test_writer_can_create_ticket_under_a_task(client: AgentClient) -> None:
    task = {"x-agent-task-token": client.task_token(WRITER, "triage", ["tickets:write"])}
    response = client.request("POST", "/api/tickets", WRITER, headers=task, json={"title": "Printer on fire"})
    assert response.status_code == 201
    assert body(response)["upstream_saw"]["spiffe_id"] == WRITER


def test_delete_needs_approval(client: AgentClient) -> None:
    task = {"x-agent-task-token": client.task_token(WRITER, "cleanup", ["records:delete"])}
    response = client.request("DELETE", "/api/records/42", WRITER, headers=task)
    assert response.status_code == 401
    document = body(response)
    assert document["verdict"] == "step_up"
    assert document["step_up"]["kind"] == "approval"
    assert document["step_up"]["status"] == "pending"
    assert document["step_up"]["approval_id"] == response.headers["x-authz-approval-id"]
    assert document["step_up"]["status_url"].endswith("/v1/approvals/" + document["step_up"]["approval_id"])


def test_payment_needs_mfa_and_passes_with_it(client: AgentClient) -> None:
    task = {"x-agent-task-token": client.task_token(WRITER, "billing", ["payments:write"])}
    response = client.request("POST", "/api/payments", WRITER, headers=task, json={"amount": 5})
    assert response.status_code == 401
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('Bearer error="insufficient_user_authentication"')
    assert 'acr_values="urn:demo:acr:mfa"' in challenge
    token = client.token(WRITER, acr="urn:demo:acr:mfa")
    response = requests.post(
        client.stack.egress_url + "/api/payments",
        json={"amount": 5},
        headers={"authorization": f"Bearer {token}", **task},
    )
    assert response.status_code == 201, response.text


def test_mcp_tool_allowed_and_denied(client: AgentClient) -> None:
    allowed = client.mcp(READER, "tools/call", "search_docs", {"q": "vpn"})
    assert allowed.status_code == 200
    assert "search_docs done" in body(allowed)["result"]["content"][0]["text"]
    denied = client.mcp(READER, "tools/call", "delete_record", {"id": "42"}, rpc_id=42)
    assert denied.status_code == 403
    document = body(denied)
    assert document["jsonrpc"] == "2.0" and document["id"] == 42
    assert document["error"]["data"]["verdict"] == "deny"
    assert document["error"]["data"]["decision_id"] == denied.headers["x-authz-decision-id"]


def test_mcp_listing_is_allowed(client: AgentClient) -> None:
    assert client.mcp(READER, "tools/list").status_code == 200


def _forged(td: DevTrustDomain) -> str:
    header, payload, signature = td.mint_jwt(READER).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = WRITER
    return f"{header}.{base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b'=').decode()}.{signature}"


def _alg_none(td: DevTrustDomain) -> str:
    def enc(d: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()

    return enc({"alg": "none"}) + "." + enc({"sub": WRITER, "aud": "authz-sidecar", "exp": time.time() + 60}) + "."


BAD_TOKENS: dict[str, Callable[[DevTrustDomain], str]] = {
    "forged": _forged,
    "expired": lambda td: td.mint_jwt(READER, ttl=-30),
    "wrong audience": lambda td: td.mint_jwt(READER, audience="some-other-service"),
    "alg none": _alg_none,
    "untrusted trust domain": lambda td: DevTrustDomain(td.root / "evil", "demo.local.evil").mint_jwt(
        "spiffe://demo.local.evil/agent/writer"
    ),
    "same name, other key": lambda td: DevTrustDomain(td.root / "impostor").mint_jwt(WRITER),
    "garbage": lambda td: "not.a.jwt",
    "huge": lambda td: "a" * 20_000,
}


@pytest.mark.parametrize("kind", sorted(BAD_TOKENS))
def test_bad_tokens_are_401(client: AgentClient, stack: Stack, kind: str) -> None:
    token = BAD_TOKENS[kind](stack.trust_domain)
    response = client.request("GET", "/api/docs/handbook", headers={"authorization": f"Bearer {token}"})
    assert response.status_code == 401, response.text
    assert body(response)["verdict"] == "deny"
    assert "invalid_token" in response.headers["www-authenticate"]


def test_no_identity_is_401(client: AgentClient) -> None:
    response = client.request("GET", "/api/docs/handbook")
    assert response.status_code == 401
    assert body(response)["reasons"] == ["no agent identity was presented"]


def test_client_xfcc_on_egress_is_stripped_not_trusted(client: AgentClient) -> None:
    xfcc = {"x-forwarded-client-cert": f"URI={WRITER}"}
    assert client.request("GET", "/api/docs/handbook", headers=xfcc).status_code == 401
    # With a reader token, the forged writer XFCC must not turn the reader into the writer.
    # The writer's task token makes the difference visible: taken as the writer, the write would be
    # allowed (201); as the reader it is refused because the token is bound to another agent.
    xfcc["x-agent-task-token"] = client.task_token(WRITER, "triage", ["tickets:write"])
    response = client.request("POST", "/api/tickets", READER, headers=xfcc, json={"title": "x"})
    assert response.status_code == 403, response.text
    assert body(response)["reasons"] == ["task token is bound to another agent"]


def test_spoofed_authz_headers_never_reach_upstream(client: AgentClient) -> None:
    spoof = {"x-authz-spiffe-id": WRITER, "x-authz-rule": "admin", "x-authz-decision-id": "fake"}
    response = client.request("GET", "/api/docs/handbook", READER, headers=spoof)
    saw = body(response)["upstream_saw"]
    assert saw["spiffe_id"] == READER
    assert saw["decision_id"] == response.headers["x-authz-decision-id"] != "fake"
    assert saw["rule"] != "admin"


def _svid(stack: Stack, spiffe_id: str, td: DevTrustDomain | None = None) -> tuple[str, str, str]:
    files = (td or stack.trust_domain).mint_x509(spiffe_id, stack.workdir / "svids" / spiffe_id.replace("/", "_"))
    return str(files.cert), str(files.key), str(stack.trust_domain.ca_cert)


def test_mtls_ingress_identity_from_xfcc(stack: Stack, client: AgentClient) -> None:
    cert, key, ca = _svid(stack, WRITER)
    # A client-sent XFCC naming the reader is replaced by the verified peer (the writer), whose
    # task token (bound to the writer) is then accepted.
    headers = {
        "x-forwarded-client-cert": f"URI={READER}",
        "x-agent-task-token": client.task_token(WRITER, "triage", ["tickets:write"]),
    }
    response = requests.post(
        stack.ingress_url + "/api/tickets", json={"title": "x"}, cert=(cert, key), verify=ca, headers=headers
    )
    assert response.status_code == 201, response.text
    assert body(response)["upstream_saw"]["spiffe_id"] == WRITER


def test_mtls_ingress_refuses_foreign_certificates(stack: Stack) -> None:
    other = DevTrustDomain(stack.workdir / "foreign-ca", "other.example")
    cert, key, ca = _svid(stack, "spiffe://other.example/agent/writer", other)
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(stack.ingress_url + "/api/docs/x", cert=(cert, key), verify=ca, timeout=5)
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(stack.ingress_url + "/api/docs/x", verify=ca, timeout=5)  # no client certificate


@pytest.mark.parametrize(
    ("payload", "headers", "status"),
    [
        (b"{not json", {"content-type": "application/json"}, 400),
        (b'[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search_docs"}}]', {}, 400),
        (b'{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call"}', {}, 400),
        (b'{"jsonrpc":"2.0","id":1,"params":{"name":"search_docs"}}', {}, 400),  # no method
        (
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search_docs"}}',
            {"mcp-name": "delete_record"},
            400,
        ),
        (b"[" * 5000 + b"]" * 5000, {"content-type": "application/json"}, 400),
        (b'{"a":"\xff"}', {"content-type": "application/json"}, 400),
    ],
)
def test_malformed_bodies_are_denied(client: AgentClient, payload: bytes, headers: dict[str, str], status: int) -> None:
    headers = {"content-type": "application/json", **headers}
    response = client.request("POST", "/mcp", READER, headers=headers, data=payload)
    assert response.status_code == status, response.text
    assert "deny" in response.text


def test_content_type_lie_still_judged_as_mcp(client: AgentClient) -> None:
    payload = json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "delete_record", "arguments": {}}}
    )
    response = client.request("POST", "/mcp", READER, headers={"content-type": "text/plain"}, data=payload)
    assert response.status_code == 403


def test_oversized_body_is_never_judged(client: AgentClient) -> None:
    big = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "search_docs", "arguments": {"q": "x" * 100_000}},
    }
    response = client.request("POST", "/mcp", READER, json=big)
    assert response.status_code == 413
    # The sidecar's refusal (not Envoy's own 413): a partial body is never parsed, so the answer is
    # plain JSON, not a JSON-RPC error.
    document = body(response)
    assert document["verdict"] == "deny"
    assert document["reasons"] == ["request body is larger than the inspection limit"]
    assert document["decision_id"] == response.headers["x-authz-decision-id"]


def sidecar_decision(stack: Stack, decision_id: str) -> dict[str, Any]:
    for line in (stack.logs / "sidecar.log").read_text(errors="replace").splitlines():
        if decision_id in line and line.startswith("{"):
            record: dict[str, Any] = json.loads(line)
            if record.get("message") == "decision" and record.get("decision_id") == decision_id:
                return record
    raise AssertionError(f"no decision record {decision_id} in sidecar.log")


def test_path_normalisation_matches_routing(client: AgentClient, stack: Stack) -> None:
    # Raw bytes: requests would remove the dot segments itself, and Envoy would never see them.
    raw = Attacker(stack)
    auth = f"Authorization: Bearer {client.token(READER)}"
    # Envoy normalises before asking; the reader cannot write by walking out of /api/docs: the
    # write is judged as the POST /api/tickets Envoy routes.
    status, headers, answer = raw.raw_request(
        "POST /api/docs/../tickets HTTP/1.1",
        ["Host: demo.local", auth, "Content-Type: application/json", "Content-Length: 2"],
        b"{}",
    )
    assert status == 403, answer
    assert sidecar_decision(stack, headers["x-authz-decision-id"])["path"] == "/api/tickets"
    # A read that walks out of /api/docs is judged, and served, as the path Envoy routes.
    status, headers, answer = raw.raw_request("GET /api/docs/../tickets HTTP/1.1", ["Host: demo.local", auth])
    assert status == 200, answer
    saw = json.loads(answer)["upstream_saw"]
    assert (saw["path"], saw["rule"]) == ("/api/tickets", "list tickets")
    assert sidecar_decision(stack, headers["x-authz-decision-id"])["path"] == "/api/tickets"
    assert client.request("POST", "/api/docs/..%2Ftickets", READER, json={"title": "x"}).status_code == 400


def test_intent_can_only_restrict(client: AgentClient) -> None:
    task = {"x-agent-task-token": client.task_token(WRITER, "triage", ["tickets:write"])}
    ok = client.request("POST", "/api/tickets", WRITER, headers={**task, "x-agent-confidence": "0.9"}, json={})
    assert ok.status_code == 201, ok.text
    low = client.request("POST", "/api/tickets", WRITER, headers={**task, "x-agent-confidence": "0.1"}, json={})
    assert low.status_code == 403
    assert any("0.1" in reason for reason in body(low)["reasons"])
    high = client.request("POST", "/api/tickets", READER, headers={"x-agent-confidence": "1.0"}, json={"t": 1})
    assert high.status_code == 403
    bad = client.request("POST", "/api/tickets", WRITER, headers={**task, "x-agent-confidence": "very"}, json={})
    assert bad.status_code == 400


def test_admin_endpoints(stack: Stack, client: AgentClient) -> None:
    assert requests.get(stack.sidecar_admin_url + "/healthz").status_code == 200
    ready = requests.get(stack.sidecar_admin_url + "/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    client.request("GET", "/api/docs/handbook", READER)
    metrics = requests.get(stack.sidecar_admin_url + "/metrics").text
    assert 'authz_decisions_total{stage="policy",verdict="allow"}' in metrics
    assert "authz_opa_seconds_bucket" in metrics


def test_no_token_or_secret_in_any_log(client: AgentClient, stack: Stack) -> None:
    token = client.token(READER)
    xfcc_secret = stack.trust_domain.xfcc_secret.read_text().strip()
    headers = {"authorization": f"Bearer {token}"}
    assert client.request("GET", "/api/docs/handbook", headers=headers).status_code == 200
    assert client.request("POST", "/api/tickets", headers=headers).status_code == 403
    cert, key, ca = _svid(stack, WRITER)
    requests.get(stack.ingress_url + "/api/docs/x", cert=(cert, key), verify=ca)
    expired = stack.trust_domain.mint_jwt(READER, ttl=-30)
    client.request("GET", "/api/docs/handbook", headers={"authorization": f"Bearer {expired}"})
    task_token = client.task_token(WRITER, "triage", ["tickets:write"])
    written = client.request("POST", "/api/tickets", WRITER, headers={"x-agent-task-token": task_token}, json={})
    assert written.status_code == 201
    credential = requests.get(f"http://127.0.0.1:{stack.ports.upstream}/debug/last-credential").json()["token"]
    time.sleep(0.5)  # OPA writes decision logs asynchronously
    secrets = [token, expired, task_token, credential, xfcc_secret]
    secrets += [s.rsplit(".", 1)[1] for s in (token, expired, task_token, credential)]  # signatures alone
    for log in stack.logs.glob("*.log"):
        text = log.read_text(errors="replace")
        for secret in secrets:
            assert secret not in text, f"{log.name} contains a secret"
    assert "authorization" in (stack.logs / "opa.log").read_text(), "OPA should have logged (masked) decisions"
