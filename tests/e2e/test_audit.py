"""``authz-sidecar audit`` reconstructs a tool chain built through the real stack, completely and in order."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import requests

from devstack.agent_client import AgentClient
from devstack.stack import Stack
from sidecar.cli import main
from tests.e2e.conftest import WRITER

pytestmark = pytest.mark.e2e

ASSISTANT = "spiffe://demo.local/agent/assistant"


def _wait_for_opa(stack: Stack, decision_ids: list[str]) -> None:
    deadline = time.monotonic() + 10
    while True:
        text = (stack.logs / "opa.log").read_text(errors="replace")
        if all(d in text for d in decision_ids):
            return
        assert time.monotonic() < deadline, "OPA did not log every decision"
        time.sleep(0.2)


def test_audit_reconstructs_a_task_chain_with_delegation_and_approvals(
    stack: Stack, client: AgentClient, tmp_path: Path
) -> None:
    task = client.open_task(WRITER, "cleanup", ["records:read", "records:delete"], ttl=300)

    def call(agent: str, method: str, path: str, token: str, **headers: str) -> requests.Response:
        return client.request(method, path, agent, headers={"x-agent-task-token": token, **headers})

    steps: list[tuple[str, str, str, str, requests.Response]] = []

    def step(agent: str, method: str, path: str, token: str, expect: int, **headers: str) -> requests.Response:
        response = call(agent, method, path, token, **headers)
        assert response.status_code == expect, response.text
        verdict = {200: "allow", 401: "step_up", 403: "deny"}[expect]
        steps.append((agent, method, path, verdict, response))
        return response

    step(WRITER, "GET", "/api/records/7", task["token"], 200)
    step(WRITER, "POST", "/api/tickets", task["token"], 403)
    child = client.delegate(WRITER, task["id"], ASSISTANT, ["records:delete"], ttl=120)
    asked = step(ASSISTANT, "DELETE", "/api/records/9", child["token"], 401)
    first_approval = asked.json()["step_up"]["approval_id"]
    assert client.decide_approval(first_approval, True, reason="duplicate record").status_code == 200
    deleted = step(
        ASSISTANT, "DELETE", "/api/records/9", child["token"], 200, **{"x-agent-approval-id": first_approval}
    )
    asked_again = step(WRITER, "DELETE", "/api/records/8", task["token"], 401)
    second_approval = asked_again.json()["step_up"]["approval_id"]
    assert client.decide_approval(second_approval, False, reason="keep it").status_code == 200
    step(WRITER, "DELETE", "/api/records/8", task["token"], 403, **{"x-agent-approval-id": second_approval})
    client.complete(WRITER, task["id"])
    step(ASSISTANT, "DELETE", "/api/records/9", child["token"], 403)

    # Gaps: the upstream is called around Envoy, once replaying an allowed decision's id, once with none.
    upstream = f"http://127.0.0.1:{stack.ports.upstream}"
    replayed_id = deleted.headers["x-authz-decision-id"]
    requests.get(f"{upstream}/api/records/9", headers={"x-authz-decision-id": replayed_id}, timeout=10)
    requests.get(f"{upstream}/api/docs/secret-plan", timeout=10)

    decision_ids = [r.headers["x-authz-decision-id"] for *_, r in steps]
    _wait_for_opa(stack, decision_ids[:5])  # the last two are refused before OPA is asked
    out = tmp_path / "audit.json"
    assert main(["audit", "--logs", str(stack.logs), "--task", task["id"], "--format", "json", "--out", str(out)]) == 0
    text = out.read_text()
    audit = json.loads(text)

    assert len(audit["chains"]) == 1
    chain = audit["chains"][0]
    assert [(c["agent"], c["method"], c["path"], c["verdict"]) for c in chain["calls"]] == [
        (agent, method, path, verdict) for agent, method, path, verdict, _ in steps
    ], "every call of the task tree, in the order it was made"
    assert [c["decision_id"] for c in chain["calls"]] == decision_ids
    assert all(c["reasons"] for c in chain["calls"]), "each call has its reasons"
    assert [c["opa_logged"] for c in chain["calls"]] == [True] * 5 + [False] * 2
    assert [c["stage"] for c in chain["calls"][5:]] == ["approval", "task"], "refused before the policy was asked"
    assert chain["calls"][0]["remember"] == ["pii_read"]
    assert chain["calls"][3]["delegation_chain"] == [WRITER], "the assistant acted for the writer"

    assert chain["delegations"] == [
        {"from_task": task["id"], "task": child["id"], "to": ASSISTANT, "at": chain["delegations"][0]["at"]}
    ]
    tasks = {t["id"]: t for t in chain["tasks"]}
    assert tasks[task["id"]]["end"] == "completed" and tasks[child["id"]]["end"].startswith("revoked")
    assert tasks[task["id"]]["purpose"] == "cleanup"

    approvals = {a["id"]: a for a in chain["approvals"]}
    first = approvals[first_approval]
    assert first["requested_by"]["decision_id"] == decision_ids[2]
    assert first["decision"]["outcome"] == "approved" and first["decision"]["approver"].endswith("#alice")
    assert [p["verdict"] for p in first["presented"]] == ["allow"]
    second = approvals[second_approval]
    assert second["decision"]["outcome"] == "rejected" and [p["verdict"] for p in second["presented"]] == ["deny"]

    assert chain["credentials"] == [
        {
            "decision_id": replayed_id,
            "task_id": child["id"],
            "agent": ASSISTANT,
            "audience": "demo-upstream",
            "scopes": ["records:delete"],
            "ttl_seconds": 60,
        }
    ]
    assert [g["kind"] for g in chain["gaps"]] == ["replayed_decision"]
    assert any(g["kind"] == "no_decision" and "/api/docs/secret-plan" in g["detail"] for g in audit["gaps"])

    kinds = [entry["kind"] for entry in chain["timeline"]]
    assert kinds[0] == "task_opened" and kinds.index("delegated") < kinds.index("approval_approved")
    assert kinds.index("approval_rejected") < kinds.index("task_completed") < len(kinds) - 2
    assert kinds[-1] == "gap", "the replay came last"
    summary = chain["summary"]
    assert (summary["calls"], summary["allowed"], summary["denied"], summary["step_up"]) == (7, 2, 3, 2)
    assert (summary["delegations"], summary["approvals_requested"], summary["approvals_used"]) == (1, 2, 1)
    assert summary["credentials_minted"] == 1 and summary["gaps"] == 1

    secrets = [task["token"], child["token"], client.token(WRITER)]
    assert "eyJ" not in text and not any(secret in text for secret in secrets), "ids only, never token text"


def test_audit_table_and_html(
    stack: Stack, client: AgentClient, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    response = client.request("GET", "/api/docs/audit-me", "spiffe://demo.local/agent/reader")
    assert response.status_code == 200
    decision_id = response.headers["x-authz-decision-id"]
    _wait_for_opa(stack, [decision_id])
    agent = "spiffe://demo.local/agent/reader"
    assert main(["audit", "--logs", str(stack.logs), "--agent", agent]) == 0
    table = capsys.readouterr().out
    assert f"AGENT {agent}" in table and decision_id in table and "ALLOW" in table

    report = tmp_path / "audit.html"
    assert main(["audit", "--logs", str(stack.logs), "--agent", agent, "--format", "html", "--out", str(report)]) == 0
    page = report.read_text()
    assert page.startswith("<!doctype html>") and decision_id in page
    assert "<script" not in page and "src=" not in page and "href=" not in page, "self-contained"


def test_audit_refuses_missing_inputs(tmp_path: Path) -> None:
    assert main(["audit", "--logs", str(tmp_path / "nowhere")]) == 2
    assert main(["audit"]) == 2
