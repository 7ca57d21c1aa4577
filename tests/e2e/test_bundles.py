"""Signed bundles as artefacts: OPA pulls them from the bundle service, verifies, hot-reloads.

Every test runs real OPA against the real bundle service and asks through real Envoy.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from devstack.bundles import BUNDLE_NAME
from devstack.stack import DEFAULT_BUNDLE, Ports, Stack
from sidecar.policy.bundle import SigningKey
from tests.e2e.conftest import READER, WRITER

pytestmark = pytest.mark.e2e


def policy_without(tmp_path: Path, agent: str) -> Path:
    """A copy of the shipped policy in which ``agent`` is no longer known (so it is denied)."""
    copy = tmp_path / "policy-v2"
    shutil.copytree(DEFAULT_BUNDLE, copy, ignore=shutil.ignore_patterns("*_test.rego"))
    data_file = copy / "agent" / "config" / "data.json"
    data = json.loads(data_file.read_text())
    del data["agents"][agent]
    data_file.write_text(json.dumps(data))
    return copy


def readyz(stack: Stack) -> tuple[int, dict[str, Any]]:
    response = requests.get(f"{stack.sidecar_admin_url}/readyz", timeout=5)
    return response.status_code, response.json()


def bundle_status(stack: Stack) -> dict[str, Any]:
    status: dict[str, dict[str, Any]] = stack.opa_request("GET", "/v1/status").json()["result"]["bundles"]
    return status.get(BUNDLE_NAME, {})


def wait_for(what: str, check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def get_docs(stack: Stack, agent: str) -> requests.Response:
    token = stack.trust_domain.mint_jwt(agent)
    return requests.get(f"{stack.egress_url}/api/docs/handbook", headers={"authorization": f"Bearer {token}"})


@pytest.fixture(scope="module")
def signed_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack(tmp_path_factory.mktemp("signed"), Ports.free(), bundle_service=True) as running:
        yield running


def test_revisions_hot_reload_and_bad_signatures_are_refused(signed_stack: Stack, tmp_path: Path) -> None:
    stack = signed_stack
    opa_pid = stack.processes["opa"].pid
    first = stack.publish_bundle(revision="rev-1")
    wait_for("rev-1 active", lambda: readyz(stack)[1]["bundles"] == {BUNDLE_NAME: "rev-1"})
    assert readyz(stack)[0] == 200
    assert get_docs(stack, READER).status_code == 200

    # A bundle signed with a key OPA does not trust: refused, and the old revision keeps deciding.
    rogue = SigningKey.ensure(tmp_path / "rogue-key")
    v2 = policy_without(tmp_path, READER)
    stack.publish_bundle(v2, revision="rev-rogue", key=rogue)
    wait_for("the rogue bundle to be refused", lambda: "verification" in json.dumps(bundle_status(stack)).lower())
    assert bundle_status(stack)["active_revision"] == first
    status, body = readyz(stack)
    assert (status, body["bundles"]) == (200, {BUNDLE_NAME: first})
    assert get_docs(stack, READER).status_code == 200

    # A properly signed new revision takes effect without a restart: the next decisions use it.
    stack.publish_bundle(v2, revision="rev-2")
    wait_for("rev-2 active", lambda: readyz(stack)[1]["bundles"] == {BUNDLE_NAME: "rev-2"})
    denied = get_docs(stack, READER)
    assert denied.status_code == 403, denied.text
    assert get_docs(stack, WRITER).status_code == 200
    assert stack.processes["opa"].pid == opa_pid and stack.processes["opa"].poll() is None


@pytest.mark.parametrize("served", ["nothing", "bad-signature"])
def test_opa_without_a_valid_bundle_is_not_ready_and_answers_503(tmp_path: Path, served: str) -> None:
    stack = Stack(tmp_path / "stack", Ports.free(), bundle_service=True, publish_on_start=False, wait_ready=False)
    if served == "bad-signature":
        stack.publish_bundle(revision="rev-rogue", key=SigningKey.ensure(tmp_path / "rogue-key"))
    with stack:
        time.sleep(3)  # several polling rounds: OPA keeps trying and keeps refusing
        status, body = readyz(stack)
        assert status == 503 and body["ready"] is False, body
        assert stack.opa_request("GET", "/health?bundles").status_code != 200
        token = stack.trust_domain.mint_jwt(READER)
        headers = {"authorization": f"Bearer {token}"}
        mcp = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "search_docs", "arguments": {}}}
        answers = [
            requests.get(f"{stack.egress_url}/api/docs/handbook", headers=headers),
            requests.post(f"{stack.egress_url}/api/tickets", headers=headers),
            requests.post(f"{stack.egress_url}/mcp", headers={**headers, "mcp-method": "tools/call"}, json=mcp),
        ]
        assert [a.status_code for a in answers] == [503, 503, 503], [a.text for a in answers]


# A rule that reads the recent window: any earlier allowed call in the session denies the next.
HISTORY_REGO = """package agent.authz

history_denies contains msg if {
	count(input.session.recent) > 0
	msg := sprintf("agent %s already made a call in this session (%s)", [agent_name, session_key])
}

access_denies contains msg if some msg in history_denies
"""


def replace_once(path: Path, old: str, new: str) -> None:
    """Edit a copied policy file; an anchor that is gone (the shipped policy changed) fails loudly."""
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} is not in {path} exactly once"
    path.write_text(text.replace(old, new))


def policy_reading_recent(tmp_path: Path) -> Path:
    """A copy of the shipped policy that denies a session's second call by reading ``input.session.recent``,
    so it no longer names the window in ``unread_input``."""
    copy = tmp_path / "policy-reads-recent"
    shutil.copytree(DEFAULT_BUNDLE, copy, ignore=shutil.ignore_patterns("*_test.rego"))
    authz = copy / "agent" / "authz"
    (authz / "history.rego").write_text(HISTORY_REGO)
    replace_once(authz / "policy.rego", 'unread_input := ["session.recent"]', "unread_input := []")
    # fast_allow answers only calls the full policy allows (fast.rego): it must yield to the new deny.
    anchor = "\treadable_agent_history_input\n"
    replace_once(authz / "fast.rego", anchor, f"{anchor}\tcount(history_denies) == 0\n")
    return copy


def session_decisions(stack: Stack, session_key: str) -> list[dict[str, Any]]:
    """OPA's decision-log events of ``data.agent.authz.decision`` for one session, oldest first."""
    events: list[dict[str, Any]] = []
    for line in (stack.logs / "opa.log").read_text().splitlines():
        if session_key not in line:
            continue
        event = json.loads(line)
        if event.get("path") == "agent/authz/decision" and event["input"]["session"]["key"] == session_key:
            events.append(event)
    return events


def test_a_new_bundle_that_reads_the_window_is_asked_again_with_it(signed_stack: Stack, tmp_path: Path) -> None:
    """The shipped policy names ``session.recent`` unread, so the sidecar leaves it out; a new revision
    that reads it answers the lean input without naming it, and the sidecar asks again with the window,
    whose answer decides (a deny that the lean input could not reach)."""
    stack = signed_stack
    # This module's other test leaves another revision active: start from the shipped policy.
    shipped = stack.publish_bundle(revision="unread-shipped")
    wait_for("the shipped revision active", lambda: readyz(stack)[1]["bundles"] == {BUNDLE_NAME: shipped})
    session_id = f"unread-{uuid.uuid4().hex}"
    session_key = f"agent:{READER}:{session_id}"
    headers = {"authorization": f"Bearer {stack.trust_domain.mint_jwt(READER)}", "mcp-session-id": session_id}

    def read_docs() -> requests.Response:
        return requests.get(f"{stack.egress_url}/api/docs/handbook", headers=headers, timeout=10)

    for _ in range(3):
        assert read_docs().status_code == 200
    wait_for("three decisions logged", lambda: len(session_decisions(stack, session_key)) >= 3, timeout=5)
    before = session_decisions(stack, session_key)
    assert all(e["result"]["unread_input"] == ["session.recent"] for e in before)
    # The first call may carry the window (nothing was named unread yet on a fresh stack); the
    # answers named it unread, so the next calls leave it out.
    assert ["recent" in e["input"]["session"] for e in before[1:]] == [False, False]

    reads_recent = stack.publish_bundle(policy_reading_recent(tmp_path), revision="unread-reads-recent")
    wait_for("the new revision active", lambda: readyz(stack)[1]["bundles"] == {BUNDLE_NAME: reads_recent})
    denied = read_docs()
    assert denied.status_code == 403, denied.text
    assert any("already made a call in this session" in r for r in denied.json()["reasons"]), denied.text
    again = read_docs()
    assert again.status_code == 403, again.text

    wait_for("the new revision's decisions logged", lambda: len(session_decisions(stack, session_key)) >= 6, timeout=5)
    after = session_decisions(stack, session_key)[3:]
    # The denied call was asked twice: without the window (the new rule cannot see it, so it
    # allows, and the answer does not name the window unread), then with it, which decides. The
    # new policy names nothing unread, so the next call is sent in full at once.
    asked = [("recent" in e["input"]["session"], e["result"]["verdict"], e["result"]["unread_input"]) for e in after]
    assert asked == [(False, "allow", []), (True, "deny", []), (True, "deny", [])], asked
    assert {e["bundles"][BUNDLE_NAME]["revision"] for e in after} == {reads_recent}
    assert [len(e["input"]["session"]["recent"]) for e in after[1:]] == [3, 3]
    _, full, later = after
    assert denied.headers["x-authz-decision-id"] == full["decision_id"]
    assert again.headers["x-authz-decision-id"] == later["decision_id"]
