"""Signed bundles as artefacts: OPA pulls them from the bundle service, verifies, hot-reloads.

Every test runs real OPA against the real bundle service and asks through real Envoy.
"""

from __future__ import annotations

import json
import shutil
import time
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
