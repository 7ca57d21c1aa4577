"""Session chain limits and step-up approvals through real Envoy, OPA and (for the Redis store) redis-server."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from devstack.redis_server import RedisServer
from devstack.stack import Ports, Stack
from tests.e2e.conftest import READER, WRITER
from tests.e2e.test_tasks import ASSISTANT, Agent, grant

pytestmark = pytest.mark.e2e
WRITE_LIMIT = 10  # data.agent.config.session.max_writes in the shipped bundle


@pytest.fixture(scope="module")
def redis_stack(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[Stack]:
    env = {"AUTHZ_STATE__BACKEND": "redis", "AUTHZ_STATE__REDIS_URL": redis_server.url}
    with Stack(tmp_path_factory.mktemp("redis-stack"), Ports.free(), sidecar_env=env) as running:
        yield running


@pytest.fixture(scope="module")
def memory_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack of this module's own: what agents did in other modules' tests (the session-wide
    ``stack``) stays in their per-agent history, and the ratchet cases need a writer that has
    read no restricted data yet."""
    with Stack(tmp_path_factory.mktemp("memory-stack"), Ports.free()) as running:
        yield running


@pytest.fixture(params=["memory", "redis"])
def any_stack(request: pytest.FixtureRequest) -> Stack:
    fixture = "memory_stack" if request.param == "memory" else "redis_stack"
    stack: Stack = request.getfixturevalue(fixture)
    return stack


def approver_token(stack: Stack, group: str = "security-approvers", sub: str = "alice") -> str:
    return stack.oidc.mint(sub, [group])


def approvals_api(stack: Stack, method: str, path: str, token: str, **kw: Any) -> requests.Response:
    return requests.request(
        method,
        f"{stack.sidecar_url}/v1/approvals{path}",
        headers={"authorization": f"Bearer {token}"},
        timeout=10,
        **kw,
    )


def fire(agent: Agent, task_token: str, count: int) -> list[requests.Response]:
    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(lambda i: agent.call("POST", "/api/tickets", task_token, json={"n": i}), range(count)))


def test_parallel_writes_never_slip_under_the_limit(any_stack: Stack) -> None:
    writer = Agent(any_stack, WRITER)
    task = grant(writer.open("triage", ["tickets:write"]))
    responses = fire(writer, task["token"], 50)
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {201, 403, 503}, statuses
    # Never more than the limit. A call that fails after its reservation (503: OPA or the store
    # too slow on a loaded machine) held a place while the others were judged, so it may cost one
    # allow, never add one; with no such failure the limit is reached exactly.
    unavailable = statuses.count(503)
    assert WRITE_LIMIT - unavailable <= statuses.count(201) <= WRITE_LIMIT, statuses
    assert statuses.count(403) == 50 - statuses.count(201) - unavailable, statuses
    denied = next(r for r in responses if r.status_code == 403)
    assert f"reached the limit of {WRITE_LIMIT} writes" in " ".join(denied.json()["reasons"])
    # The limit is per task: another task starts from zero.
    other = grant(writer.open("triage", ["tickets:write"]))
    assert writer.call("POST", "/api/tickets", other["token"], json={}).status_code == 201


def test_session_state_is_bounded_and_visible(stack: Stack) -> None:
    reader = Agent(stack, READER)
    task = grant(reader.open("research", ["docs:read", "records:read"]))
    for i in range(30):
        assert reader.call("GET", f"/api/docs/d{i}", task["token"]).status_code == 200
    # OPA's decision log shows the session; its recent window (bounded: tests/unit/test_state.py)
    # is left out, since the shipped policy names it unread (tests/unit/test_unread_input.py).
    time.sleep(0.5)
    last = [json.loads(line) for line in (stack.logs / "opa.log").read_text().splitlines() if task["id"] in line][-1]
    session = last["input"]["session"]
    assert session["key"] == f"task:{task['id']}" and session["calls"] == 29
    assert "recent" not in session and last["result"]["unread_input"] == ["session.recent"]


def test_ratchet_after_a_restricted_read(any_stack: Stack) -> None:
    writer = Agent(any_stack, WRITER)
    task = grant(writer.open("outreach", ["records:read", "email:send"]))
    email = {"to": "colleague@demo.local", "subject": "hi", "body": "see you"}
    assert mcp(writer, task["token"], "send_email", email).status_code == 200, (
        "internal mail before any restricted read"
    )
    assert mcp(writer, task["token"], "get_record", {"id": "42"}).status_code == 200
    after = mcp(writer, task["token"], "send_email", email)
    assert after.status_code == 401, after.text
    data = after.json()["error"]["data"]
    assert data["verdict"] == "step_up" and data["step_up"]["kind"] == "approval"
    assert after.json()["id"] == 1, "a JSON-RPC error with the request's id"
    # A new task is a new session, not a new agent: the read is in the writer's own history.
    fresh = grant(writer.open("outreach", ["email:send"]))
    again = mcp(writer, fresh["token"], "send_email", email)
    assert again.status_code == 401, again.text
    assert "in another session or task" in again.json()["error"]["data"]["reasons"][0]


def mcp(
    agent: Agent, task_token: str | None, tool: str, arguments: dict[str, Any], **headers: str
) -> requests.Response:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": arguments}}
    extra = {"mcp-method": "tools/call", "mcp-name": tool, **headers}
    return agent.call("POST", "/mcp", task_token, json=body, headers=extra)


def request_approval(agent: Agent, task_token: str, record: str = "42") -> str:
    response = agent.call("DELETE", f"/api/records/{record}", task_token)
    assert response.status_code == 401, response.text
    step_up = response.json()["step_up"]
    assert step_up["status"] == "pending"
    approval_id: str = step_up["approval_id"]
    return approval_id


def test_approval_flow_single_use(any_stack: Stack) -> None:
    writer = Agent(any_stack, WRITER)
    task = grant(writer.open("cleanup", ["records:read", "records:delete"]))
    approval_id = request_approval(writer, task["token"])
    retry = {"x-agent-approval-id": approval_id}

    # The agent polls its own approval; retrying early is refused.
    polled = requests.get(f"{any_stack.sidecar_url}/v1/approvals/{approval_id}", headers=writer.auth())
    assert polled.status_code == 200 and polled.json()["status"] == "pending"
    early = writer.call("DELETE", "/api/records/42", task["token"], headers=retry)
    assert early.status_code == 403 and "still pending" in early.json()["reasons"][0]

    human = approver_token(any_stack)
    listed = approvals_api(any_stack, "GET", "", human).json()["approvals"]
    mine = next(a for a in listed if a["id"] == approval_id)
    assert (
        mine["agent"] == WRITER and mine["summary"]["path"] == "/api/records/42" and mine["data_class"] == "restricted"
    )
    approved = approvals_api(any_stack, "POST", f"/{approval_id}/approve", human, json={"reason": "ticket 7"})
    assert approved.status_code == 200 and approved.json()["status"] == "approved"
    assert approvals_api(any_stack, "POST", f"/{approval_id}/reject", human).status_code == 409

    # A different request, another agent or another task cannot use it.
    other_record = writer.call("DELETE", "/api/records/43", task["token"], headers=retry)
    assert other_record.status_code == 403 and "different request" in other_record.json()["reasons"][0]
    other_task = grant(writer.open("cleanup", ["records:delete"]))
    wrong_task = writer.call("DELETE", "/api/records/42", other_task["token"], headers=retry)
    assert wrong_task.status_code == 403 and "another task" in wrong_task.json()["reasons"][0]
    # The assistant holds a grant for this very task (delegated, records:delete), so only the
    # approval's binding to the writer stands between it and the delete.
    assistant = Agent(any_stack, ASSISTANT)
    delegated = grant(writer.delegate(task["id"], ASSISTANT, ["records:delete"]))
    wrong_agent = assistant.call("DELETE", "/api/records/42", delegated["token"], headers=retry)
    assert wrong_agent.status_code == 403, wrong_agent.text
    assert "requested by another agent" in wrong_agent.json()["reasons"][0]

    allowed = writer.call("DELETE", "/api/records/42", task["token"], headers=retry)
    assert allowed.status_code == 200, allowed.text
    assert allowed.json()["upstream_saw"]["credential"]["scope"] == "records:delete"
    replayed = writer.call("DELETE", "/api/records/42", task["token"], headers=retry)
    assert replayed.status_code == 403 and "already used" in replayed.json()["reasons"][0]


def test_parallel_retries_use_an_approval_once(any_stack: Stack) -> None:
    writer = Agent(any_stack, WRITER)
    task = grant(writer.open("cleanup", ["records:delete"]))
    approval_id = request_approval(writer, task["token"], "77")
    approvals_api(any_stack, "POST", f"/{approval_id}/approve", approver_token(any_stack))
    retry = {"x-agent-approval-id": approval_id}
    with ThreadPoolExecutor(max_workers=10) as pool:
        responses = list(
            pool.map(lambda _: writer.call("DELETE", "/api/records/77", task["token"], headers=retry), range(10))
        )
    assert sorted(r.status_code for r in responses).count(200) == 1


def test_rejected_approval(stack: Stack) -> None:
    writer = Agent(stack, WRITER)
    task = grant(writer.open("cleanup", ["records:delete"]))
    approval_id = request_approval(writer, task["token"], "5")
    rejected = approvals_api(stack, "POST", f"/{approval_id}/reject", approver_token(stack), json={"reason": "no"})
    assert rejected.json()["status"] == "rejected"
    retry = writer.call("DELETE", "/api/records/5", task["token"], headers={"x-agent-approval-id": approval_id})
    assert retry.status_code == 403 and "rejected: no" in retry.json()["reasons"][0]


def test_who_may_approve(stack: Stack) -> None:
    writer, assistant = Agent(stack, WRITER), Agent(stack, ASSISTANT)
    parent = grant(writer.open("cleanup", ["records:read", "records:delete"]))
    child = grant(writer.delegate(parent["id"], ASSISTANT, ["records:delete"]))
    approval_id = request_approval(assistant, child["token"], "9")

    def approve_as(token: str) -> requests.Response:
        return approvals_api(stack, "POST", f"/{approval_id}/approve", token)

    own = approve_as(stack.trust_domain.mint_jwt(ASSISTANT))
    assert own.status_code == 403 and "delegation chain" in own.json()["error"]
    delegator = approve_as(stack.trust_domain.mint_jwt(WRITER))
    assert delegator.status_code == 403, "an identity in the delegation chain may not approve"
    assert approve_as(stack.trust_domain.mint_jwt(READER)).status_code == 403, "not an approval service"
    team_lead = approve_as(approver_token(stack, "team-leads", "bob"))
    assert team_lead.status_code == 403 and "restricted" in team_lead.json()["error"]
    assert approvals_api(stack, "GET", "", approver_token(stack, "team-leads", "bob")).json()["approvals"] == []
    forged_human = stack.oidc.mint("mallory", ["security-approvers"]).rsplit(".", 1)[0] + ".AAAA"
    assert approve_as(forged_human).status_code == 401
    assert approvals_api(stack, "GET", "", "").status_code == 401
    service = approve_as(stack.trust_domain.mint_jwt("spiffe://demo.local/approval-service"))
    assert service.status_code == 200 and service.json()["approver"]["id"] == "spiffe://demo.local/approval-service"


def test_approver_redaction(stack: Stack) -> None:
    writer = Agent(stack, WRITER)
    task = grant(writer.open("outreach", ["email:send"]))
    response = mcp(writer, task["token"], "send_email", {"to": "someone@elsewhere.example", "body": "the secret plan"})
    assert response.status_code == 401
    approval_id = response.json()["error"]["data"]["step_up"]["approval_id"]
    shown = approvals_api(stack, "GET", f"/{approval_id}", approver_token(stack)).json()
    assert shown["summary"]["arguments"] == {"to": "someone@elsewhere.example", "body": "[redacted]"}
    assert "secret plan" not in json.dumps(shown)


class _Receiver(BaseHTTPRequestHandler):
    received: list[tuple[dict[str, str], bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        _Receiver.received.append((dict(self.headers.items()), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


def test_webhook_on_pending_approval(tmp_path_factory: pytest.TempPathFactory) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    workdir = tmp_path_factory.mktemp("webhook")
    secret = workdir / "webhook-secret"
    secret.write_text("s3cret-webhook-key")
    env = {
        "AUTHZ_APPROVALS__WEBHOOK_URL": f"http://127.0.0.1:{server.server_address[1]}/hook",
        "AUTHZ_APPROVALS__WEBHOOK_SECRET_FILE": str(secret),
    }
    try:
        with Stack(workdir, Ports.free(), sidecar_env=env) as stack:
            writer = Agent(stack, WRITER)
            task = grant(writer.open("cleanup", ["records:delete"]))
            approval_id = request_approval(writer, task["token"])
            deadline = time.monotonic() + 5
            while not _Receiver.received and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        server.shutdown()
    headers, body = _Receiver.received[-1]
    expected = "sha256=" + hmac.new(b"s3cret-webhook-key", body, hashlib.sha256).hexdigest()
    assert headers["x-authz-signature"] == expected
    assert json.loads(body)["approval"]["id"] == approval_id


def test_redis_keeps_state_across_a_sidecar_restart(redis_stack: Stack) -> None:
    writer = Agent(redis_stack, WRITER)
    task = grant(writer.open("cleanup", ["records:delete", "records:read"]))
    for _ in range(3):
        assert writer.call("GET", "/api/records/1", task["token"]).status_code == 200  # remembers pii_read
    approval_id = request_approval(writer, task["token"], "11")
    redis_stack.stop_sidecar()
    redis_stack.start_sidecar()
    # Task, session and pending approval all survived.
    state = requests.get(f"{redis_stack.sidecar_url}/v1/tasks/{task['id']}", headers=writer.auth()).json()
    assert state["status"] == "active"
    approvals_api(redis_stack, "POST", f"/{approval_id}/approve", approver_token(redis_stack))
    retry = {"x-agent-approval-id": approval_id}
    assert writer.call("DELETE", "/api/records/11", task["token"], headers=retry).status_code == 200
    time.sleep(0.5)
    line = [json.loads(x) for x in (redis_stack.logs / "opa.log").read_text().splitlines() if task["id"] in x][-1]
    assert line["input"]["session"]["calls"] >= 3 and "pii_read" in line["input"]["session"]["labels"]


def test_two_replicas_share_one_limit(redis_stack: Stack) -> None:
    """Two sidecars on one Redis: checks alternate between them (as Envoy would balance), one limit holds."""
    replica = redis_stack.start_replica()
    try:
        writer = Agent(redis_stack, WRITER)
        task = grant(writer.open("triage", ["tickets:write"]))
        sockets = [redis_stack.check_socket, replica]

        def check(i: int) -> int:
            headers = {**writer.auth(), "x-agent-task-token": task["token"], "content-type": "application/json"}
            return redis_stack.check("POST", "/api/tickets", headers, b"{}", via=sockets[i % 2]).status_code

        with ThreadPoolExecutor(max_workers=30) as pool:
            statuses = list(pool.map(check, range(30)))
        assert statuses.count(200) == WRITE_LIMIT, statuses
        assert statuses.count(403) == 30 - WRITE_LIMIT
        assert "decision" in redis_stack.log_tail("replica", 200), "the replica decided some of the calls"
    finally:
        redis_stack.stop_process("replica")


def test_redis_outage_fails_closed_and_recovers(redis_stack: Stack, redis_server: RedisServer) -> None:
    reader = Agent(redis_stack, READER)
    task = grant(reader.open("research", ["docs:read"]))
    assert reader.call("GET", "/api/docs/a", task["token"]).status_code == 200
    redis_server.stop()
    try:
        statuses = [reader.call("GET", "/api/docs/a", task["token"]).status_code for _ in range(5)]
        statuses.append(reader.call("GET", "/api/docs/a").status_code)  # no task: the session store is still needed
        assert statuses == [503] * 6
    finally:
        redis_server.start()
    deadline = time.monotonic() + 10
    while reader.call("GET", "/api/docs/a", task["token"]).status_code != 200:
        assert time.monotonic() < deadline, "no recovery after Redis came back"
        time.sleep(0.2)
