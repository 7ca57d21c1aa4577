"""OPA decision logs shipped to the receiver: masked, complete, correlated with the sidecar's log."""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from devstack.stack import DEFAULT_BUNDLE, Ports, Stack
from tests.e2e.conftest import READER, WRITER

pytestmark = pytest.mark.e2e

SECRET_ARGUMENT = "s3cret-argument-value-7f3a"
# Pointers a policy author marks sensitive through data.agent.config.log_mask (the mask policy
# in rego/system/log/mask.rego reads them); the secret headers are masked by the policy itself.
SENSITIVE = ["/input/attributes/request/http/body", "/input/parsed_body/params/arguments", "/input/mcp/arguments"]


def policy_with_log_mask(tmp_path: Path) -> Path:
    copy = tmp_path / "policy"
    shutil.copytree(DEFAULT_BUNDLE, copy, ignore=shutil.ignore_patterns("*_test.rego"))
    data_file = copy / "agent" / "config" / "data.json"
    data = json.loads(data_file.read_text())
    data["log_mask"] = SENSITIVE
    data_file.write_text(json.dumps(data))
    return copy


REVISION = "decision-logs-rev-7"  # the revision the test publishes: each event must name it


@pytest.fixture(scope="module")
def logged_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("decision-logs")
    policy = policy_with_log_mask(workdir)
    stack = Stack(
        workdir / "stack",
        Ports.free(),
        bundle=policy,
        bundle_service=True,
        decision_log_service=True,
        publish_on_start=False,
    )
    assert stack.publish_bundle(revision=REVISION) == REVISION
    with stack as s:
        yield s


def seen_decision_id(response: requests.Response) -> str:
    """The decision id the client saw: the response header on allow, the JSON body otherwise."""
    if response.status_code == 200:
        return response.headers["x-authz-decision-id"]
    body = response.json()
    if "jsonrpc" in body:  # MCP deny: a JSON-RPC error carries the decision in its data
        found: str = body["error"]["data"]["decision_id"]
        return found
    decision_id: str = body["decision_id"]
    return decision_id


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_decision_logs_are_masked_complete_and_correlated(logged_stack: Stack) -> None:
    stack = logged_stack
    tokens: list[str] = []

    def call(method: str, path: str, agent: str, **kw: Any) -> requests.Response:
        token = stack.trust_domain.mint_jwt(agent)
        tokens.append(token)
        headers = {"authorization": f"Bearer {token}", **kw.pop("headers", {})}
        return requests.request(method, stack.egress_url + path, headers=headers, timeout=10, **kw)

    def mcp(agent: str, tool: str, arguments: dict[str, Any]) -> requests.Response:
        body = {"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": tool, "arguments": arguments}}
        return call("POST", "/mcp", agent, json=body, headers={"mcp-method": "tools/call", "mcp-name": tool})

    responses = [
        call("GET", "/api/docs/handbook", READER),
        call("POST", "/api/tickets", READER),
        call("GET", "/api/docs/runbook?q=vpn", WRITER),
        mcp(READER, "search_docs", {"q": SECRET_ARGUMENT}),
        mcp(READER, "delete_record", {"id": "42", "reason": SECRET_ARGUMENT}),
    ]
    assert [r.status_code for r in responses] == [200, 403, 200, 200, 403], [r.text for r in responses]
    seen = [seen_decision_id(r) for r in responses]
    assert len(set(seen)) == len(seen)

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not set(seen) <= {
        e.get("decision_id") for e in read_jsonl(stack.decision_log)
    }:
        time.sleep(0.3)
    time.sleep(2.5)  # one more reporting interval: a duplicate upload would show up now
    events = read_jsonl(stack.decision_log)
    counts = Counter(e.get("decision_id") for e in events)
    assert {d: counts[d] for d in seen} == dict.fromkeys(seen, 1), "each decision the client saw, exactly once"

    raw = stack.decision_log.read_text()
    for token in tokens:
        assert token not in raw and token.split(".")[1] not in raw
    assert SECRET_ARGUMENT not in raw

    sidecar_lines = [json.loads(line) for line in (stack.logs / "sidecar.log").read_text().splitlines() if "{" in line]
    sidecar_by_id = {line["decision_id"]: line for line in sidecar_lines if line.get("message") == "decision"}
    by_id = {e["decision_id"]: e for e in events}
    for decision_id, response in zip(seen, responses, strict=True):
        event = by_id[decision_id]
        assert event["path"] == stack.decision_path
        assert event["bundles"] == {"authz": {"revision": REVISION}}
        labels = event["labels"]  # which OPA decided: its own id and version, and where it ran
        assert {"id", "version", "pod", "namespace", "deployment"} <= set(labels) and labels["namespace"] == "local"
        headers = event["input"]["attributes"]["request"]["http"]["headers"]
        assert "authorization" not in headers
        assert "/input/attributes/request/http/headers/authorization" in event["erased"]
        assert "body" not in event["input"]["attributes"]["request"]["http"]
        # The same decision in the sidecar's JSON log, with the verdict the client saw.
        line = sidecar_by_id[decision_id]
        assert line["status"] == response.status_code
        assert line["agent"] == event["input"]["agent"]["spiffe_id"]
    mcp_event = by_id[seen[3]]
    assert "arguments" not in mcp_event["input"]["mcp"]
    assert mcp_event["input"]["parsed_body"] is None  # opa.input_body: once, the call is input.mcp
    assert mcp_event["input"]["mcp"]["name"] == "search_docs"


def test_refusals_before_the_policy_reach_opas_decision_log(logged_stack: Stack) -> None:
    """Calls the sidecar refuses itself (no identity, a forged token, an unreadable body) are in
    OPA's decision stream too, under the decision id the client saw, with the sidecar's reason."""
    stack = logged_stack
    token = stack.trust_domain.mint_jwt(READER)
    refused = [
        requests.get(stack.egress_url + "/api/docs/handbook", timeout=10),
        requests.get(
            stack.egress_url + "/api/docs/handbook", headers={"authorization": "Bearer not.a.jwt"}, timeout=10
        ),
        requests.post(
            stack.egress_url + "/mcp",
            data=b'{"jsonrpc": "2.0", "id": 1, "method": ',
            headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
            timeout=10,
        ),
        requests.get(
            stack.egress_url + "/api/docs/handbook",
            headers={"authorization": f"Bearer {token}", "x-agent-task-token": "forged.task.token"},
            timeout=10,
        ),
    ]
    assert [r.status_code for r in refused] == [401, 401, 400, 401], [r.text for r in refused]
    seen = [seen_decision_id(r) for r in refused]

    def reported() -> dict[str, dict[str, Any]]:
        events = read_jsonl(stack.decision_log)
        return {
            e["input"]["refusal"]["decision_id"]: e
            for e in events
            if e.get("path") == "agent/refusals/decision" and "refusal" in e.get("input", {})
        }

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not set(seen) <= set(reported()):
        time.sleep(0.3)
    events = reported()
    assert set(seen) <= set(events), "every refused call is in OPA's decision log"
    for decision_id, response in zip(seen, refused, strict=True):
        refusal = events[decision_id]["input"]["refusal"]
        assert refusal["status"] == response.status_code
        assert refusal["reasons"] == response.json()["reasons"]
        assert refusal["path"] == response.request.path_url.split("?")[0]
        assert events[decision_id]["result"] == {"verdict": "deny", "reasons": refusal["reasons"]}
    assert [events[d]["input"]["refusal"]["stage"] for d in seen] == ["identity", "identity", "body", "task"]
    assert events[seen[3]]["input"]["refusal"]["agent"] == READER  # known once the identity was verified
