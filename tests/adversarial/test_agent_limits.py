"""Attacks on limits keyed by what the agent chooses: a fresh Mcp-Session-Id or a fresh task must
not reset the rate ceiling or forget restricted data, and tasks cannot be opened without end.

Each case uses its own agent (an ``ops/*`` pattern agent where a reader will do), so one case's
calls never count against another's limits on the module's shared stack. The numbers are the
shipped bundle's (rego/agent/config/data.json), read from it so the test follows the policy.
"""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from devstack.stack import DEFAULT_BUNDLE
from tests.adversarial.conftest import ASSISTANT, WRITER, Attacker, verdict

pytestmark = [pytest.mark.e2e, pytest.mark.adversarial]

TASK = "x-agent-task-token"
SHIPPED: dict[str, Any] = json.loads((Path(DEFAULT_BUNDLE) / "agent" / "config" / "data.json").read_text())


def _ceiling() -> int:
    ceiling = SHIPPED["session"].get("agent_max_calls_per_minute")
    assert isinstance(ceiling, int), "the shipped policy sets no per-agent call ceiling"
    return ceiling


def _task_cap() -> int:
    cap = SHIPPED["tasks"].get("max_open_per_agent")
    assert isinstance(cap, int), "the shipped policy sets no cap on open tasks per agent"
    return cap


def _open(attacker: Attacker, agent: str, purpose: str, scopes: list[str]) -> requests.Response:
    return requests.post(
        f"{attacker.stack.sidecar_url}/v1/tasks",
        json={"purpose": purpose, "scopes": scopes, "ttl_seconds": 300},
        headers=attacker.bearer(agent),
        timeout=10,
    )


def _send_email(attacker: Attacker, token: str) -> requests.Response:
    body = attacker.mcp_body("send_email", {"to": "colleague@demo.local", "subject": "hi", "body": "notes"})
    headers = {**attacker.bearer(WRITER), TASK: token, "mcp-session-id": str(uuid.uuid4())}
    return attacker.send("POST", "/mcp", headers, json=body)


def test_rotating_session_ids_and_tasks_hit_the_per_agent_ceiling(attacker: Attacker) -> None:
    """Every call in a new MCP session, or under one of several tasks: the agent's ceiling still holds."""
    agent = "spiffe://demo.local/agent/ops/rotator"
    ceiling = _ceiling()
    tasks = [attacker.open_task(agent, "research", ["docs:read"])["token"] for _ in range(3)]
    auth = attacker.bearer(agent)
    statuses: list[int] = []
    denied: list[dict[str, Any]] = []
    with requests.Session() as http:
        for i in range(ceiling + 40):
            headers = {**auth, "mcp-session-id": str(uuid.uuid4())}
            if i % 4:
                headers[TASK] = tasks[i % 3]
            response = http.get(f"{attacker.stack.egress_url}/api/docs/d{i}", headers=headers, timeout=10)
            statuses.append(response.status_code)
            if response.status_code == 403:
                denied.append(verdict(response))
    assert statuses.count(200) == ceiling, f"{statuses.count(200)} allowed; the per-agent ceiling is {ceiling}"
    assert statuses[:ceiling] == [200] * ceiling and set(statuses[ceiling:]) == {403}, statuses
    assert all(any(f"the limit per agent is {ceiling}" in reason for reason in d["reasons"]) for d in denied), denied[
        :2
    ]


def test_parallel_calls_in_fresh_sessions_never_slip_past_the_ceiling(attacker: Attacker) -> None:
    """Reserved before the policy is asked, per agent: parallel calls cannot all see a count below it."""
    agent = "spiffe://demo.local/agent/ops/burst"
    ceiling = _ceiling()
    auth = attacker.bearer(agent)

    def call(i: int) -> int:
        headers = {**auth, "mcp-session-id": str(uuid.uuid4())}
        return attacker.send("GET", f"/api/docs/p{i}", headers).status_code

    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(pool.map(call, range(ceiling + 60)))
    assert 0 < statuses.count(200) <= ceiling, f"{statuses.count(200)} allowed; the per-agent ceiling is {ceiling}"
    assert statuses.count(200) + statuses.count(403) == len(statuses), statuses


def test_restricted_read_outside_a_task_arms_the_ratchet_in_a_new_task(attacker: Attacker) -> None:
    """The read happens in no task (its own MCP session); the send in a task opened afterwards."""
    before = attacker.open_task(WRITER, "outreach", ["email:send"])
    assert _send_email(attacker, before["token"]).status_code == 200, "internal mail before any restricted read"

    read = attacker.send("GET", "/api/records/7", {**attacker.bearer(WRITER), "mcp-session-id": str(uuid.uuid4())})
    assert read.status_code == 200, read.text

    fresh = attacker.open_task(WRITER, "outreach", ["email:send"])
    after = _send_email(attacker, fresh["token"])
    assert after.status_code == 401, f"a new task forgot the restricted read: {after.status_code} {after.text}"
    data = verdict(after)
    assert data["verdict"] == "step_up" and data["step_up"]["kind"] == "approval"
    assert data["step_up"]["approvers"] == {"data_class": "restricted"}
    reasons = " ".join(data["reasons"])
    assert "read restricted data (pii_read) in another session or task" in reasons, reasons
    # The task opened before the read is no way around it either.
    assert _send_email(attacker, before["token"]).status_code == 401


def test_opening_tasks_past_the_cap_is_refused(attacker: Attacker) -> None:
    cap = _task_cap()
    opened = [_open(attacker, ASSISTANT, "research", ["docs:read"]) for _ in range(cap)]
    assert [r.status_code for r in opened] == [201] * cap, [r.text for r in opened if r.status_code != 201][:1]
    refused = _open(attacker, ASSISTANT, "research", ["docs:read"])
    assert refused.status_code == 403, refused.text
    assert f"already has {cap} open tasks" in refused.json()["error"], refused.json()
    # Delegating is opening a task too: it counts against the delegator.
    parent = opened[0].json()
    delegated = requests.post(
        f"{attacker.stack.sidecar_url}/v1/tasks/{parent['id']}/delegate",
        json={"to": "spiffe://demo.local/agent/reader", "scopes": ["docs:read"], "ttl_seconds": 60},
        headers=attacker.bearer(ASSISTANT),
        timeout=10,
    )
    assert delegated.status_code == 403, delegated.text
    assert f"already has {cap} open tasks" in delegated.json()["error"], delegated.json()
    # The cap is on open tasks: completing one makes room for exactly one more.
    attacker.complete(ASSISTANT, opened[1].json()["id"])
    assert _open(attacker, ASSISTANT, "research", ["docs:read"]).status_code == 201
    assert _open(attacker, ASSISTANT, "research", ["docs:read"]).status_code == 403


def test_parallel_opens_never_slip_past_the_cap(attacker: Attacker) -> None:
    agent = "spiffe://demo.local/agent/ops/opener"
    cap = _task_cap()
    with ThreadPoolExecutor(max_workers=16) as pool:
        statuses = list(
            pool.map(lambda _: _open(attacker, agent, "research", ["docs:read"]).status_code, range(cap + 20))
        )
    assert statuses.count(201) == cap, f"{statuses.count(201)} tasks opened; the cap is {cap}"
    assert statuses.count(403) == 20, statuses
