"""No secret in any log: every log line the session's stacks wrote (e2e and adversarial suites, and
this test's own stack) is scanned for the tokens, keys and secret fields the session used.

Runs last (``redaction_scan``, ordered by tests/conftest.py). Its own stack also shows the two
ways an operator marks more fields as secret: the policy's ``data.agent.config.log_mask`` (OPA's
decision log) and the sidecar's ``log.redact`` (its own JSON log).
"""

from __future__ import annotations

import json
import secrets
import shutil
import time
from pathlib import Path

import pytest
import requests

from devstack.envoy_config import REPO_ROOT
from devstack.stack import Ports, Stack
from tests.redaction.ledger import SecretLedger

pytestmark = [pytest.mark.e2e, pytest.mark.redaction_scan]

READER = "spiffe://demo.local/agent/reader"
WRITER = "spiffe://demo.local/agent/writer"
MARKED = ["/input/mcp/arguments/api_key"]  # what this deployment's policy author marks as secret


def _policy(tmp: Path) -> Path:
    policy = tmp / "policy"
    shutil.copytree(REPO_ROOT / "rego", policy, ignore=shutil.ignore_patterns("*_test.rego"))
    data_file = policy / "agent" / "config" / "data.json"
    data = json.loads(data_file.read_text())
    data["log_mask"] = [*data.get("log_mask", []), *MARKED]
    data_file.write_text(json.dumps(data))
    return policy


def _workload(stack: Stack, api_key: str, approval_note: str) -> list[str]:
    """Every kind of credential through the stack; returns the decision ids OPA must log."""
    td = stack.trust_domain
    reader = {"authorization": "Bearer " + td.mint_jwt(READER)}
    writer = {"authorization": "Bearer " + td.mint_jwt(WRITER)}
    ids = []
    ids.append(
        requests.get(stack.egress_url + "/api/docs/a", headers=reader, timeout=10).headers["x-authz-decision-id"]
    )
    rpc = {"jsonrpc": "2.0", "id": 1, "method": "tools/call"}
    rpc["params"] = {"name": "search_docs", "arguments": {"q": "vpn", "api_key": api_key}}
    searched = requests.post(stack.egress_url + "/mcp", json=rpc, headers=reader, timeout=10)
    assert searched.status_code == 200, searched.text
    ids.append(searched.headers["x-authz-decision-id"])

    def task(purpose: str, scopes: list[str]) -> str:
        body = {"purpose": purpose, "scopes": scopes, "ttl_seconds": 120}
        response = requests.post(stack.sidecar_url + "/v1/tasks", json=body, headers=writer, timeout=10)
        token: str = response.json()["token"]
        return token

    triage = {**writer, "x-agent-task-token": task("triage", ["tickets:write"])}
    written = requests.post(stack.egress_url + "/api/tickets", json={"t": 1}, headers=triage, timeout=10)
    assert written.status_code == 201
    ids.append(written.headers["x-authz-decision-id"])
    requests.get(f"http://127.0.0.1:{stack.ports.upstream}/debug/last-credential", timeout=10)  # records it

    cleanup = {**writer, "x-agent-task-token": task("cleanup", ["records:delete"])}
    asked = requests.delete(stack.egress_url + "/api/records/5", headers=cleanup, timeout=10)
    approval = asked.json()["step_up"]["approval_id"]
    human = {"authorization": "Bearer " + stack.oidc.mint("alice", ["security-approvers"])}
    decided = requests.post(
        f"{stack.sidecar_url}/v1/approvals/{approval}/approve",
        json={"reason": approval_note},
        headers=human,
        timeout=10,
    )
    assert decided.status_code == 200, decided.text
    retried = requests.delete(
        stack.egress_url + "/api/records/5", headers={**cleanup, "x-agent-approval-id": approval}, timeout=10
    )
    assert retried.status_code == 200, retried.text
    ids.append(retried.headers["x-authz-decision-id"])

    files = td.mint_x509(WRITER, stack.workdir / "svid")
    mtls = requests.get(
        stack.ingress_url + "/api/docs/b", cert=(str(files.cert), str(files.key)), verify=str(td.ca_cert), timeout=10
    )
    ids.append(mtls.headers["x-authz-decision-id"])
    for bad in (td.mint_jwt(READER, ttl=-60), td.mint_jwt(READER, audience="elsewhere")):
        requests.get(stack.egress_url + "/api/docs/c", headers={"authorization": f"Bearer {bad}"}, timeout=10)
    stolen = requests.post(
        stack.egress_url + "/api/tickets",
        headers={**reader, **{"x-agent-task-token": triage["x-agent-task-token"]}},
        timeout=10,
    )
    assert stolen.status_code == 403
    return ids


def _wait_for(path: Path, ids: list[str]) -> None:
    deadline = time.monotonic() + 15
    while not (path.exists() and all(i in path.read_text(errors="replace") for i in ids)):
        assert time.monotonic() < deadline, f"{path.name} does not hold every decision"
        time.sleep(0.2)


def test_no_secret_in_any_log(
    secret_ledger: SecretLedger, tmp_path_factory: pytest.TempPathFactory, opa_bin: str, envoy_bin: str
) -> None:
    tmp = tmp_path_factory.mktemp("redaction")
    api_key = "sk_live_" + secrets.token_hex(20)
    approval_note = "change-ticket-" + secrets.token_hex(12)
    secret_ledger.add(api_key, "a tool argument the policy marks secret (log_mask)")
    env = {"AUTHZ_LOG__REDACT": "[reason]"}
    with Stack(tmp / "stack", Ports.free(), bundle=_policy(tmp), decision_log_service=True, sidecar_env=env) as stack:
        ids = _workload(stack, api_key, approval_note)
        _wait_for(stack.logs / "opa.log", ids)
        _wait_for(stack.decision_log, ids)
        sidecar_log = (stack.logs / "sidecar.log").read_text()
        assert approval_note not in sidecar_log, "log.redact names 'reason': the approver's note is not logged"
        assert '"reason": "[redacted]"' in sidecar_log
        masked = [json.loads(line) for line in stack.decision_log.read_text().splitlines() if ids[1] in line]
        assert masked and all(pointer in masked[0]["erased"] for pointer in MARKED)

    files = secret_ledger.log_files()
    names = {path.name for path in files}
    assert {"sidecar.log", "opa.log", "envoy.log", "upstream.log", "decisions.jsonl"} <= names, names
    assert len(secret_ledger.secrets) > 10, "the session recorded the secrets it used"
    findings = secret_ledger.scan()
    assert not findings, f"{len(findings)} secret(s) in logs:\n" + "\n".join(map(str, findings[:25]))
