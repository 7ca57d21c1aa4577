"""Attacks on task grants and approvals: stolen, replayed, tampered, used after the task ended."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec

from tests.adversarial.conftest import ASSISTANT, READER, WRITER, Attacker, verdict

pytestmark = [pytest.mark.e2e, pytest.mark.adversarial]

TASK = "x-agent-task-token"
APPROVAL = "x-agent-approval-id"


def _write(attacker: Attacker, agent: str, token: str, **headers: str) -> Any:
    return attacker.send("POST", "/api/tickets", {**attacker.bearer(agent), TASK: token, **headers}, json={"t": 1})


def _edit_claims(token: str, **changes: Any) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims.update(changes)
    edited = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{edited}.{signature}"


def _resign(token: str, **header: Any) -> str:
    """The same claims, signed by a key the sidecar never had."""
    claims = jwt.decode(token, options={"verify_signature": False})
    key = ec.generate_private_key(ec.SECP256R1())
    return jwt.encode(claims, key, algorithm="ES256", headers={"typ": "task+jwt", **header})


@pytest.fixture(scope="module")
def writer_task(attacker: Attacker) -> dict[str, Any]:
    return attacker.open_task(WRITER, "triage", ["tickets:write", "docs:read"])


def test_the_writers_task_works_for_the_writer(attacker: Attacker, writer_task: dict[str, Any]) -> None:
    """Baseline for the cases below: the grant itself is good."""
    assert _write(attacker, WRITER, writer_task["token"]).status_code == 201


@pytest.mark.parametrize(
    ("thief", "why"),
    [
        pytest.param(READER, "the token's sub is the writer, the verified caller the reader", id="reader"),
        pytest.param(ASSISTANT, "the assistant may act for the writer only through a delegated grant", id="assistant"),
    ],
)
def test_task_token_stolen_by_another_agent(
    attacker: Attacker, writer_task: dict[str, Any], thief: str, why: str
) -> None:
    response = _write(attacker, thief, writer_task["token"])
    assert response.status_code == 403, why
    assert verdict(response)["reasons"] == ["task token is bound to another agent"]


def test_task_token_stolen_and_used_over_mtls(attacker: Attacker, writer_task: dict[str, Any]) -> None:
    """The binding holds whatever the identity source: here the reader's mTLS certificate."""
    response = attacker.ingress(READER, "POST", "/api/tickets", json={}, headers={TASK: writer_task["token"]})
    assert response.status_code == 403
    assert verdict(response)["reasons"] == ["task token is bound to another agent"], "refused for the binding"


def test_task_token_without_any_identity(attacker: Attacker, writer_task: dict[str, Any]) -> None:
    """A bearer task token is not an identity: no JWT-SVID, no call."""
    response = attacker.send("POST", "/api/tickets", {TASK: writer_task["token"]}, json={})
    assert response.status_code == 401


FORGED: dict[str, tuple[Callable[[str], str], str]] = {
    "scopes-widened": (lambda t: _edit_claims(t, scopes=["tickets:write", "records:delete"]), "payload edited"),
    "sub-swapped": (lambda t: _edit_claims(t, sub=READER), "payload edited to name the reader"),
    "expiry-extended": (lambda t: _edit_claims(t, exp=int(time.time()) + 86_400), "payload edited"),
    "alg-none": (
        lambda t: ".".join(
            [base64.urlsafe_b64encode(b'{"alg":"none","typ":"task+jwt"}').rstrip(b"=").decode(), t.split(".")[1], ""]
        ),
        "unsigned",
    ),
    "foreign-key": (lambda t: _resign(t), "signed by a key the sidecar never had"),
    "foreign-key-our-kid": (
        lambda t: _resign(t, kid=jwt.get_unverified_header(t)["kid"]),
        "claims our kid, but the signature is another key's",
    ),
    "truncated": (lambda t: t[: len(t) // 2], "not a complete JWT"),
    "two-tokens-joined": (lambda t: f"{t},{t}", "two task-token headers arrive joined by a comma"),
}


@pytest.mark.parametrize("case", sorted(FORGED))
def test_forged_task_token_is_401(attacker: Attacker, writer_task: dict[str, Any], case: str) -> None:
    forge, why = FORGED[case]
    response = _write(attacker, WRITER, forge(writer_task["token"]))
    assert response.status_code == 401, f"{case} ({why}): {response.status_code} {response.text[:200]}"
    assert "task token rejected" in verdict(response)["reasons"][0]


@pytest.mark.parametrize(
    ("kind", "why"),
    [
        pytest.param("jwt-svid", "an identity token is not a task grant (typ JWT, not task+jwt)", id="jwt-svid"),
        pytest.param("credential", "an upstream credential is not a task grant (typ at+jwt)", id="upstream-credential"),
    ],
)
def test_other_tokens_as_task_tokens(attacker: Attacker, writer_task: dict[str, Any], kind: str, why: str) -> None:
    if kind == "jwt-svid":
        token = attacker.token(WRITER)
    else:
        minted = _write(attacker, WRITER, writer_task["token"])
        assert minted.status_code == 201
        token = attacker.upstream_credential()
    response = _write(attacker, WRITER, token)
    assert response.status_code == 401, why


def test_task_token_after_completion(attacker: Attacker) -> None:
    task = attacker.open_task(WRITER, "triage", ["tickets:write"])
    attacker.complete(WRITER, task["id"])
    response = _write(attacker, WRITER, task["token"])
    assert response.status_code == 403
    assert "completed" in verdict(response)["reasons"][0]


def test_task_token_after_expiry(attacker: Attacker) -> None:
    task = attacker.open_task(WRITER, "triage", ["tickets:write"], ttl=1)
    time.sleep(1.5)
    response = _write(attacker, WRITER, task["token"])
    assert response.status_code == 403
    assert "expired" in verdict(response)["reasons"][0]


def test_delegated_token_after_the_parent_completed(attacker: Attacker) -> None:
    parent = attacker.open_task(WRITER, "triage", ["tickets:write"])
    child = attacker.delegate(WRITER, parent["id"], ASSISTANT, ["tickets:write"])
    assert _write(attacker, ASSISTANT, child["token"]).status_code == 201
    attacker.complete(WRITER, parent["id"])
    response = _write(attacker, ASSISTANT, child["token"])
    assert response.status_code == 403
    assert "revoked" in verdict(response)["reasons"][0]


def test_delegated_token_used_by_the_delegator(attacker: Attacker) -> None:
    """The writer holds its own grant; the assistant's narrower one is bound to the assistant."""
    parent = attacker.open_task(WRITER, "triage", ["tickets:write"])
    child = attacker.delegate(WRITER, parent["id"], ASSISTANT, ["tickets:write"])
    assert _write(attacker, WRITER, child["token"]).status_code == 403


def test_delegate_cannot_end_or_widen_the_parent(attacker: Attacker) -> None:
    parent = attacker.open_task(WRITER, "triage", ["tickets:write"])
    child = attacker.delegate(WRITER, parent["id"], ASSISTANT, ["tickets:write"])
    widened = requests.post(
        f"{attacker.stack.sidecar_url}/v1/tasks/{child['id']}/delegate",
        json={"to": READER, "scopes": ["tickets:write", "records:delete"], "ttl_seconds": 60},
        headers=attacker.bearer(ASSISTANT),
        timeout=10,
    )
    assert widened.status_code == 403, "delegation may only narrow"
    ended = requests.post(
        f"{attacker.stack.sidecar_url}/v1/tasks/{parent['id']}/complete", headers=attacker.bearer(READER), timeout=10
    )
    assert ended.status_code == 404, "an agent outside the chain cannot see or end the task"


# -- approvals ----------------------------------------------------------------------------


def _delete(attacker: Attacker, agent: str, token: str | None, record: str = "42", **headers: str) -> Any:
    sent = {**attacker.bearer(agent), **headers}
    if token:
        sent[TASK] = token
    return attacker.send("DELETE", f"/api/records/{record}", sent)


def _pending(attacker: Attacker, token: str, record: str) -> str:
    response = _delete(attacker, WRITER, token, record)
    assert response.status_code == 401, response.text
    approval_id: str = response.json()["step_up"]["approval_id"]
    return approval_id


@pytest.fixture
def cleanup(attacker: Attacker) -> dict[str, Any]:
    return attacker.open_task(WRITER, "cleanup", ["records:delete"])


def test_approval_replayed_by_another_agent(attacker: Attacker, cleanup: dict[str, Any]) -> None:
    approval_id = _pending(attacker, cleanup["token"], "101")
    assert attacker.decide_approval(approval_id).status_code == 200
    child = attacker.delegate(WRITER, cleanup["id"], ASSISTANT, ["records:delete"])
    stolen = _delete(attacker, ASSISTANT, child["token"], "101", **{APPROVAL: approval_id})
    assert stolen.status_code == 403, "an approval is bound to the agent that asked for it"
    # ...and the failed theft did not consume it.
    assert _delete(attacker, WRITER, cleanup["token"], "101", **{APPROVAL: approval_id}).status_code == 200


def test_approval_replayed_after_use(attacker: Attacker, cleanup: dict[str, Any]) -> None:
    approval_id = _pending(attacker, cleanup["token"], "102")
    assert attacker.decide_approval(approval_id).status_code == 200
    assert _delete(attacker, WRITER, cleanup["token"], "102", **{APPROVAL: approval_id}).status_code == 200
    replay = _delete(attacker, WRITER, cleanup["token"], "102", **{APPROVAL: approval_id})
    assert replay.status_code == 403
    assert "already used" in verdict(replay)["reasons"][0]


def test_approval_after_the_task_completed(attacker: Attacker, cleanup: dict[str, Any]) -> None:
    approval_id = _pending(attacker, cleanup["token"], "103")
    assert attacker.decide_approval(approval_id).status_code == 200
    attacker.complete(WRITER, cleanup["id"])
    response = _delete(attacker, WRITER, cleanup["token"], "103", **{APPROVAL: approval_id})
    assert response.status_code == 403, "the task grant is checked before the approval"
    other = attacker.open_task(WRITER, "cleanup", ["records:delete"])
    moved = _delete(attacker, WRITER, other["token"], "103", **{APPROVAL: approval_id})
    assert moved.status_code == 403, "an approval does not move to a new task"


def test_approval_for_another_request(attacker: Attacker, cleanup: dict[str, Any]) -> None:
    approval_id = _pending(attacker, cleanup["token"], "104")
    assert attacker.decide_approval(approval_id).status_code == 200
    response = _delete(attacker, WRITER, cleanup["token"], "105", **{APPROVAL: approval_id})
    assert response.status_code == 403
    assert "different request" in verdict(response)["reasons"][0]


def test_approval_for_changed_mcp_arguments(attacker: Attacker, cleanup: dict[str, Any]) -> None:
    """The fingerprint covers the tool's canonical arguments: approved id 7 does not delete id 8."""
    headers = {**attacker.bearer(WRITER), TASK: cleanup["token"]}
    asked = attacker.send("POST", "/mcp", headers, json=attacker.mcp_body("delete_record", {"id": "7"}))
    assert asked.status_code == 401
    approval_id = verdict(asked)["step_up"]["approval_id"]
    assert attacker.decide_approval(approval_id).status_code == 200
    changed = attacker.mcp_body("delete_record", {"id": "8"})
    response = attacker.send("POST", "/mcp", {**headers, APPROVAL: approval_id}, json=changed)
    assert response.status_code == 403
    same_reordered = attacker.mcp_body("delete_record", {"id": "7"})
    same_reordered["id"] = 99  # a new JSON-RPC id is the same request
    assert attacker.send("POST", "/mcp", {**headers, APPROVAL: approval_id}, json=same_reordered).status_code == 200


@pytest.mark.parametrize(
    ("state", "why"),
    [
        pytest.param("pending", "nobody has approved it yet", id="still-pending"),
        pytest.param("rejected", "a human said no", id="rejected"),
    ],
)
def test_approval_not_approved(attacker: Attacker, cleanup: dict[str, Any], state: str, why: str) -> None:
    record = {"pending": "106", "rejected": "107"}[state]
    approval_id = _pending(attacker, cleanup["token"], record)
    if state == "rejected":
        assert attacker.decide_approval(approval_id, approve=False).status_code == 200
    response = _delete(attacker, WRITER, cleanup["token"], record, **{APPROVAL: approval_id})
    assert response.status_code == 403, why


@pytest.mark.parametrize(
    "approval_id",
    [
        pytest.param("00000000-0000-4000-8000-000000000000", id="unknown-id"),
        pytest.param("x" * 5000, id="huge-id"),
        pytest.param("../../v1/approvals", id="path-shaped-id"),
    ],
)
def test_made_up_approval_ids(attacker: Attacker, cleanup: dict[str, Any], approval_id: str) -> None:
    response = _delete(attacker, WRITER, cleanup["token"], "108", **{APPROVAL: approval_id})
    assert 400 <= response.status_code < 500 and response.status_code != 401, response.text
    assert verdict(response)["verdict"] == "deny"


def test_self_approval_and_approval_by_the_chain(attacker: Attacker, cleanup: dict[str, Any]) -> None:
    """The requesting agent, and every identity in its delegation chain, may never approve."""
    approval_id = _pending(attacker, cleanup["token"], "109")
    assert attacker.decide_approval(approval_id, who=attacker.bearer(WRITER)).status_code == 403
    child = attacker.delegate(WRITER, cleanup["id"], ASSISTANT, ["records:delete"])
    asked = _delete(attacker, ASSISTANT, child["token"], "110")
    assert asked.status_code == 401
    child_approval = asked.json()["step_up"]["approval_id"]
    assert attacker.decide_approval(child_approval, who=attacker.bearer(WRITER)).status_code == 403


# -- what an approval binds, and what approvers are shown -------------------------------------------


def _ask(attacker: Attacker, token: str, body: dict[str, Any], **headers: str) -> Any:
    return attacker.send("POST", "/mcp", {**attacker.bearer(WRITER), TASK: token, **headers}, json=body)


def _approved(attacker: Attacker, token: str, body: dict[str, Any], **headers: str) -> str:
    asked = _ask(attacker, token, body, **headers)
    assert asked.status_code == 401, asked.text
    approval_id: str = verdict(asked)["step_up"]["approval_id"]
    assert attacker.decide_approval(approval_id).status_code == 200
    return approval_id


@pytest.mark.parametrize(
    ("change", "why"),
    [
        pytest.param({"_meta": {"progressToken": "other"}}, "params._meta was not bound", id="meta"),
        pytest.param({"cascade": True}, "a param beside name and arguments was not bound", id="extra-param"),
    ],
)
def test_approval_for_changed_jsonrpc_params(
    attacker: Attacker, cleanup: dict[str, Any], change: dict[str, Any], why: str
) -> None:
    """Every JSON-RPC param is bound, not only the tool's name and arguments."""
    body = attacker.mcp_body("delete_record", {"id": "201"}, _meta={"progressToken": "p-1"})
    approval_id = _approved(attacker, cleanup["token"], body)
    changed = {**body, "params": {**body["params"], **change}}
    response = _ask(attacker, cleanup["token"], changed, **{APPROVAL: approval_id})
    assert response.status_code == 403, why
    assert "different request" in verdict(response)["reasons"][0]
    retry = {**body, "id": 1234}  # only the JSON-RPC id may change
    assert _ask(attacker, cleanup["token"], retry, **{APPROVAL: approval_id}).status_code == 200


def test_approval_for_the_same_body_read_differently(attacker: Attacker, cleanup: dict[str, Any]) -> None:
    """The same bytes under another content type are another request for the upstream."""
    body = attacker.mcp_body("delete_record", {"id": "202"})
    approval_id = _approved(attacker, cleanup["token"], body)
    sent = {**attacker.bearer(WRITER), TASK: cleanup["token"], APPROVAL: approval_id, "content-type": "text/plain"}
    response = attacker.send("POST", "/mcp", sent, data=json.dumps(body))
    assert response.status_code == 403, "the content type was not bound"
    assert "different request" in verdict(response)["reasons"][0]


@pytest.mark.parametrize(
    ("host", "target", "why"),
    [
        pytest.param("127.0.0.1:1", "/api/records/203", "the port was dropped from the host", id="host-port"),
        pytest.param("tools.demo.local", "/api/records/203", "another host", id="host"),
        pytest.param(None, "/api/records/203?cascade=all", "the query was not bound", id="query"),
    ],
)
def test_approval_for_another_host_or_query(
    attacker: Attacker, cleanup: dict[str, Any], host: str | None, target: str, why: str
) -> None:
    approval_id = _pending(attacker, cleanup["token"], "203")
    assert attacker.decide_approval(approval_id).status_code == 200
    headers = {APPROVAL: approval_id, **({"host": host} if host else {})}
    sent = {**attacker.bearer(WRITER), TASK: cleanup["token"], **headers}
    response = attacker.send("DELETE", target, sent)
    assert response.status_code == 403, why
    assert "different request" in verdict(response)["reasons"][0]


def test_the_dangerous_id_behind_fifty_harmless_ones(attacker: Attacker, cleanup: dict[str, Any]) -> None:
    """An approver's view shows 50 items of a list: a request it would have to cut is never put to a human."""
    ids = [f"harmless-{i}" for i in range(86)] + ["the-dangerous-one"]
    response = _ask(attacker, cleanup["token"], attacker.mcp_body("delete_record", {"id": ids}))
    assert response.status_code == 403, response.text
    reason = verdict(response)["reasons"][0]
    assert "too large to show an approver in full (/arguments/id would be cut)" in reason
    opa_saw = attacker.opa_event(verdict(response)["decision_id"])["input"]["approval_view"]
    assert opa_saw == {"cut": ["/arguments/id"], "cut_count": 1, "max_items": 50, "max_string": 200}
    # What the policy redacts is hidden anyway: a long email body still goes to a human.
    email = {"to": "eve@elsewhere.example", "subject": "hi", "body": "x" * 5000}
    task = attacker.open_task(WRITER, "outreach", ["email:send"])
    sent = attacker.send(
        "POST", "/mcp", {**attacker.bearer(WRITER), TASK: task["token"]}, json=attacker.mcp_body("send_email", email)
    )
    assert sent.status_code == 401, sent.text
    assert verdict(sent)["step_up"]["status"] == "pending"


def test_an_agent_cannot_flood_approvers(attacker: Attacker) -> None:
    """Asking again for the same request returns the pending approval; past 20 pending, a 429."""
    task = attacker.open_task(WRITER, "cleanup", ["records:delete"])
    asked: list[str] = []
    try:
        first = _pending(attacker, task["token"], "300")
        asked.append(first)
        assert _pending(attacker, task["token"], "300") == first, "the same request, the same approval"
        refused = None
        for record in range(301, 330):
            response = _delete(attacker, WRITER, task["token"], str(record))
            if response.status_code != 401:
                refused = response
                break
            asked.append(response.json()["step_up"]["approval_id"])
        assert refused is not None and len(asked) <= 20, f"{len(asked)} pending approvals and no refusal"
        assert refused.status_code == 429, refused.text
        reason = verdict(refused)["reasons"][0]
        assert f"agent {WRITER} already has 20 pending approvals (at most 20)" in reason
        assert _pending(attacker, task["token"], "300") == first, "a pending request is still answered"
    finally:
        for approval_id in asked:  # the module's other cases ask for approvals as the writer too
            attacker.decide_approval(approval_id, approve=False)
