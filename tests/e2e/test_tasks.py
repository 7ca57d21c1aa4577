"""Task grants, JIT upstream credentials and delegation through real Envoy, OPA and the sidecar API."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization

from devstack.agent_client import AgentClient
from devstack.stack import Ports, Stack
from sidecar.keys import KeySet
from sidecar.tokens import CREDENTIAL_TYP, TASK_TYP, sign
from tests.e2e.conftest import READER, WRITER

pytestmark = pytest.mark.e2e
ASSISTANT = "spiffe://demo.local/agent/assistant"


class Agent:
    """One agent on the shared agent client: its calls and its task API, answers as they are."""

    def __init__(self, stack: Stack, spiffe_id: str) -> None:
        self.stack = stack
        self.spiffe_id = spiffe_id
        self.client = AgentClient(stack)

    def auth(self) -> dict[str, str]:
        return self.client.bearer(self.spiffe_id)

    def open(self, purpose: str, scopes: list[str], ttl: int = 300) -> requests.Response:
        return self.client.post_task(self.spiffe_id, purpose, scopes, ttl)

    def delegate(self, task_id: str, to: str, scopes: list[str], ttl: int = 300) -> requests.Response:
        return self.client.post_delegation(self.spiffe_id, task_id, to, scopes, ttl)

    def complete(self, task_id: str) -> requests.Response:
        return self.client.post_completion(self.spiffe_id, task_id)

    def call(self, method: str, path: str, task_token: str | None = None, **kw: Any) -> requests.Response:
        return self.client.request(method, path, self.spiffe_id, kw.pop("headers", None), task=task_token, **kw)


def grant(response: requests.Response) -> dict[str, Any]:
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()
    return data


@pytest.fixture(scope="module")
def writer(stack: Stack) -> Agent:
    return Agent(stack, WRITER)


@pytest.fixture(scope="module")
def reader(stack: Stack) -> Agent:
    return Agent(stack, READER)


@pytest.fixture(scope="module")
def assistant(stack: Stack) -> Agent:
    return Agent(stack, ASSISTANT)


def test_write_needs_a_task(writer: Agent) -> None:
    response = writer.call("POST", "/api/tickets", json={"title": "x"})
    assert response.status_code == 403
    assert "task grant" in " ".join(response.json()["reasons"])


def test_task_write_gets_a_minted_credential(writer: Agent) -> None:
    task = grant(writer.open("triage", ["docs:read", "tickets:write"]))
    assert task["agent"] == WRITER and task["status"] == "active" and task["token"]
    response = writer.call("POST", "/api/tickets", task["token"], json={"title": "Printer on fire"})
    assert response.status_code == 201, response.text
    saw = response.json()["upstream_saw"]
    credential = saw["credential"]
    assert credential["sub"] == WRITER
    assert credential["aud"] == "demo-upstream"
    assert credential["scope"] == "tickets:write"
    assert credential["task_id"] == task["id"]
    assert credential["decision_id"] == response.headers["x-authz-decision-id"]
    assert credential["exp"] - time.time() <= 60
    assert saw["task_token_present"] is False, "the task token is for the sidecar only"
    state = requests.get(f"{writer.stack.sidecar_url}/v1/tasks/{task['id']}", headers=writer.auth()).json()
    assert state["status"] == "active" and "token" not in state


def test_reads_under_a_task_carry_no_agent_credential(writer: Agent) -> None:
    task = grant(writer.open("triage", ["docs:read"]))
    saw = writer.call("GET", "/api/docs/a", task["token"]).json()["upstream_saw"]
    assert saw["authorization_present"] is False and saw["credential"] is None


def test_scope_not_granted(writer: Agent) -> None:
    task = grant(writer.open("triage", ["docs:read"]))
    response = writer.call("POST", "/api/tickets", task["token"], json={"title": "x"})
    assert response.status_code == 403
    assert "does not grant scope tickets:write" in " ".join(response.json()["reasons"])


def test_open_denied_by_policy_and_bad_requests(reader: Agent, writer: Agent) -> None:
    denied = reader.open("triage", ["tickets:write"])
    assert denied.status_code == 403 and denied.json()["error"]
    assert writer.open("no-such-purpose", ["docs:read"]).status_code == 403
    assert writer.open("triage", []).status_code == 400
    assert writer.open("triage", ["docs read"]).status_code == 400
    bad = requests.post(f"{writer.stack.sidecar_url}/v1/tasks", data=b"{", headers=writer.auth())
    assert bad.status_code == 400
    anonymous = requests.post(f"{writer.stack.sidecar_url}/v1/tasks", json={"purpose": "triage"})
    assert anonymous.status_code == 401
    forged_peer = {"x-forwarded-client-cert": f"URI={WRITER}", "x-authz-xfcc-secret": "guess"}
    assert requests.post(f"{writer.stack.sidecar_url}/v1/tasks", json={}, headers=forged_peer).status_code == 401


def test_token_bound_to_another_agent(writer: Agent, reader: Agent) -> None:
    task = grant(writer.open("triage", ["docs:read", "tickets:write"]))
    response = reader.call("GET", "/api/docs/a", task["token"])
    assert response.status_code == 403
    assert "bound to another agent" in response.json()["reasons"][0]


def test_tampered_and_foreign_task_tokens(writer: Agent) -> None:
    task = grant(writer.open("triage", ["docs:read", "tickets:write"]))
    header, _payload, signature = task["token"].split(".")
    other = grant(writer.open("triage", ["docs:read"]))["token"].split(".")[1]
    assert writer.call("GET", "/api/docs/a", f"{header}.{other}.{signature}").status_code == 401
    foreign = sign(
        KeySet(None, "ES256", 10),
        {
            "sub": WRITER,
            "jti": task["id"],
            "iss": "authz-sidecar",
            "aud": "authz-sidecar",
            "iat": int(time.time()),
            "exp": int(time.time()) + 60,
        },
        TASK_TYP,
    )
    assert writer.call("GET", "/api/docs/a", foreign).status_code == 401
    assert writer.call("GET", "/api/docs/a", "garbage").status_code == 401


def test_expired_task(writer: Agent) -> None:
    task = grant(writer.open("triage", ["docs:read"], ttl=1))
    time.sleep(2.1)
    response = writer.call("GET", "/api/docs/a", task["token"])
    assert response.status_code == 403
    assert "expired" in response.json()["reasons"][0]


def test_completed_task_is_revoked_at_once(writer: Agent) -> None:
    task = grant(writer.open("triage", ["docs:read", "tickets:write"]))
    assert writer.call("POST", "/api/tickets", task["token"], json={}).status_code == 201
    ended = writer.complete(task["id"])
    assert ended.status_code == 200 and ended.json()["ended"] == [task["id"]]
    response = writer.call("POST", "/api/tickets", task["token"], json={})
    assert response.status_code == 403
    assert "completed" in response.json()["reasons"][0]


def test_delegation_narrows_chains_and_revokes(writer: Agent, assistant: Agent, reader: Agent) -> None:
    parent = grant(writer.open("triage", ["docs:read", "tickets:read", "tickets:write"]))
    child = grant(writer.delegate(parent["id"], ASSISTANT, ["docs:read", "tickets:write"]))
    assert child["agent"] == ASSISTANT and child["delegation_chain"] == [WRITER] and child["depth"] == 1
    assert child["expires_at"] <= parent["expires_at"]
    claims = jwt.decode(child["token"], options={"verify_signature": False})
    assert claims["act"] == {"sub": WRITER}

    response = assistant.call("POST", "/api/tickets", child["token"], json={"title": "delegated"})
    assert response.status_code == 201, response.text
    credential = response.json()["upstream_saw"]["credential"]
    assert credential["sub"] == ASSISTANT and credential["act"] == {"sub": WRITER}

    # The delegate cannot widen, and cannot use the token as another agent.
    assert assistant.delegate(child["id"], READER, ["tickets:write", "records:delete"]).status_code == 403
    assert writer.delegate(parent["id"], ASSISTANT, ["records:delete"]).status_code == 403
    assert reader.call("GET", "/api/docs/a", child["token"]).status_code == 403

    grandchild = grant(assistant.delegate(child["id"], READER, ["docs:read"]))
    assert grandchild["delegation_chain"] == [ASSISTANT, WRITER]
    assert reader.call("GET", "/api/docs/a", grandchild["token"]).status_code == 200

    ended = writer.complete(parent["id"])
    assert set(ended.json()["ended"]) == {parent["id"], child["id"], grandchild["id"]}
    assert assistant.call("GET", "/api/docs/a", child["token"]).status_code == 403
    denied = reader.call("GET", "/api/docs/a", grandchild["token"])
    assert denied.status_code == 403 and "ended" in denied.json()["reasons"][0]


def test_jwks_and_upstream_refuses_replayed_or_expired_credentials(writer: Agent, stack: Stack) -> None:
    jwks = requests.get(f"{stack.sidecar_url}/.well-known/jwks.json").json()
    assert jwks["keys"] and all("d" not in k for k in jwks["keys"])
    task = grant(writer.open("triage", ["tickets:write"]))
    assert writer.call("POST", "/api/tickets", task["token"], json={}).status_code == 201
    upstream = f"http://127.0.0.1:{stack.ports.upstream}"
    replayed = requests.get(f"{upstream}/debug/last-credential").json()["token"]
    response = requests.post(f"{upstream}/api/tickets", headers={"authorization": f"Bearer {replayed}"}, json={})
    assert response.status_code == 401 and "replayed" in response.text
    key_file = sorted(stack.credential_keys.glob("*.pem"))[0]
    private = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    kid = KeySet(stack.credential_keys, "ES256", 10).active().kid
    now = int(time.time())
    expired = jwt.encode(
        {
            "iss": "authz-sidecar",
            "sub": WRITER,
            "aud": "demo-upstream",
            "scope": "tickets:write",
            "iat": now - 120,
            "exp": now - 60,
            "jti": "x",
        },
        private,  # type: ignore[arg-type]
        algorithm="ES256",
        headers={"kid": kid, "typ": CREDENTIAL_TYP},
    )
    response = requests.post(f"{upstream}/api/tickets", headers={"authorization": f"Bearer {expired}"}, json={})
    assert response.status_code == 401 and "ExpiredSignature" in response.text
    # The agent's own JWT-SVID is not a credential the upstream accepts.
    own = writer.auth()
    assert requests.post(f"{upstream}/api/tickets", headers=own, json={}).status_code == 401


def test_delegation_depth_hard_limit(tmp_path_factory: pytest.TempPathFactory) -> None:
    env = {"AUTHZ_TASKS__MAX_DELEGATION_DEPTH": "1"}
    with Stack(tmp_path_factory.mktemp("depth"), Ports.free(), sidecar_env=env) as stack:
        writer, assistant = Agent(stack, WRITER), Agent(stack, ASSISTANT)
        parent = grant(writer.open("triage", ["docs:read"]))
        child = grant(writer.delegate(parent["id"], ASSISTANT, ["docs:read"]))
        deeper = assistant.delegate(child["id"], READER, ["docs:read"])
        assert deeper.status_code == 403 and "exceeds the limit 1" in deeper.json()["error"]
