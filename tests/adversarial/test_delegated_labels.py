"""A delegate's restricted read arms its delegators' ratchets: an agent cannot launder restricted
data through a delegate and then send it out itself without a human. Its own module, so its own
stack: the writer starts with no restricted label in its history."""

from __future__ import annotations

import uuid

import pytest
import requests

from tests.adversarial.conftest import ASSISTANT, READER, WRITER, Attacker, verdict

pytestmark = [pytest.mark.e2e, pytest.mark.adversarial]

TASK = "x-agent-task-token"


def _send_email(attacker: Attacker, agent: str, token: str) -> requests.Response:
    body = attacker.mcp_body("send_email", {"to": "colleague@demo.local", "subject": "hi", "body": "notes"})
    headers = {**attacker.bearer(agent), TASK: token, "mcp-session-id": str(uuid.uuid4())}
    return attacker.send("POST", "/mcp", headers, json=body)


def _read_record(attacker: Attacker, agent: str, token: str) -> requests.Response:
    headers = {**attacker.bearer(agent), TASK: token, "mcp-session-id": str(uuid.uuid4())}
    return attacker.send("GET", "/api/records/7", headers)


def _step_up_for_restricted_read(response: requests.Response) -> None:
    assert response.status_code == 401, f"the delegate's read left the ratchet unarmed: {response.text}"
    data = verdict(response)
    assert data["verdict"] == "step_up" and data["step_up"]["approvers"] == {"data_class": "restricted"}
    assert "read restricted data (pii_read)" in " ".join(data["reasons"]), data["reasons"]


def test_a_restricted_read_by_a_delegate_arms_every_delegators_ratchet(attacker: Attacker) -> None:
    """The writer delegates to the assistant, which hands the read on to the reader: after the
    reader's read, neither the writer nor the assistant may mail anything out without a human."""
    writer_task = attacker.open_task(WRITER, "outreach", ["email:send", "records:read"])
    assert _send_email(attacker, WRITER, writer_task["token"]).status_code == 200, "before any restricted read"
    assistant_task = attacker.delegate(WRITER, writer_task["id"], ASSISTANT, ["email:send", "records:read"])
    assert _send_email(attacker, ASSISTANT, assistant_task["token"]).status_code == 200, "before any restricted read"
    reader_task = attacker.delegate(ASSISTANT, assistant_task["id"], READER, ["records:read"])
    assert _read_record(attacker, READER, reader_task["token"]).status_code == 200

    _step_up_for_restricted_read(_send_email(attacker, WRITER, writer_task["token"]))
    _step_up_for_restricted_read(_send_email(attacker, ASSISTANT, assistant_task["token"]))
