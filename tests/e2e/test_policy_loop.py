"""The policy author's loop on the real stack: a candidate bundle in shadow mode beside the live one
(a second real OPA), then the decision log it produced replayed and explained, and the audit telling
the sidecar's queries from someone else's."""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests

from devstack.stack import DEFAULT_BUNDLE, Ports, Stack
from sidecar.cli import main
from sidecar.unix_http import unix_request
from tests.e2e.conftest import READER, WRITER

pytestmark = pytest.mark.e2e

T = TypeVar("T")


def candidate_policy(root: Path) -> Path:
    """The shipped policy with one change: reading docs needs the writer role."""
    copy = root / "candidate"
    shutil.copytree(DEFAULT_BUNDLE, copy, ignore=shutil.ignore_patterns("*_test.rego"))
    data_file = copy / "agent" / "config" / "data.json"
    data = json.loads(data_file.read_text())
    for route in (r for method_routes in data["routes"].values() for r in method_routes):
        if route.get("name") == "read docs":
            route["roles"] = ["writer"]
    data_file.write_text(json.dumps(data))
    return copy


@pytest.fixture(scope="module")
def shadowed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Path]]:
    root = tmp_path_factory.mktemp("policy-loop")
    candidate = candidate_policy(root)
    with Stack(root / "stack", Ports.free(), decision_log_service=True, shadow=candidate) as stack:
        yield stack, candidate


def _json_lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue
    return lines


def _wait(what: str, found: Callable[[], T], timeout: float = 20) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = found()
        if value:
            return value
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.2)


def _metric(stack: Stack, name: str, **labels: str) -> float:
    text = requests.get(f"{stack.sidecar_admin_url}/metrics", timeout=5).text
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and line.split("{", 1)[1].split("}", 1)[0] == wanted:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture(scope="module")
def traffic(shadowed: tuple[Stack, Path]) -> dict[str, str]:
    """Calls through Envoy, by name -> the decision id the client saw."""
    stack, _ = shadowed

    def call(method: str, path: str, agent: str, **kw: Any) -> requests.Response:
        token = stack.trust_domain.mint_jwt(agent)
        headers = {"authorization": f"Bearer {token}", **kw.pop("headers", {})}
        return requests.request(method, stack.egress_url + path, headers=headers, timeout=10, **kw)

    rpc = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "search_docs", "arguments": {"q": "vpn"}},
    }
    responses = {
        "reader reads docs": call("GET", "/api/docs/handbook", READER),
        "writer reads docs": call("GET", "/api/docs/runbook", WRITER),
        "reader writes": call("POST", "/api/tickets", READER),
        "reader searches": call(
            "POST", "/mcp", READER, json=rpc, headers={"mcp-method": "tools/call", "mcp-name": "search_docs"}
        ),
    }
    statuses = {name: r.status_code for name, r in responses.items()}
    assert statuses == {
        "reader reads docs": 200,
        "writer reads docs": 200,
        "reader writes": 403,
        "reader searches": 200,
    }
    ids = {}
    for name, response in responses.items():
        ids[name] = response.headers.get("x-authz-decision-id") or response.json()["decision_id"]
    return ids


def test_shadow_mode_logs_and_counts_the_candidate_and_never_enforces_it(
    shadowed: tuple[Stack, Path], traffic: dict[str, str]
) -> None:
    stack, _ = shadowed

    def shadow_lines() -> dict[str, dict[str, Any]]:
        lines = _json_lines(stack.logs / "sidecar.log")
        found = {line["decision_id"]: line["shadow"] for line in lines if line.get("logger") == "authz.shadow"}
        return found if set(traffic.values()) <= set(found) else {}

    shadows = _wait("shadow line for every call", shadow_lines)
    verdicts = {name: (shadows[i]["live"], shadows[i]["verdict"], shadows[i]["agree"]) for name, i in traffic.items()}
    assert verdicts == {
        "reader reads docs": ("allow", "deny", False),  # the candidate would refuse it; the reader got its 200
        "writer reads docs": ("allow", "allow", True),
        "reader writes": ("deny", "deny", True),
        "reader searches": ("allow", "allow", True),
    }
    assert _metric(stack, "authz_shadow_disagreements_total", live="allow", shadow="deny") == 1
    assert _metric(stack, "authz_shadow_agreements_total", verdict="allow") == 2
    # The candidate's own decision-log event, in the shadow OPA's log, under the id the line names.
    shadow_events = {e["decision_id"]: e for e in _json_lines(stack.logs / "opa-shadow.log") if "decision_id" in e}
    event = shadow_events[shadows[traffic["reader reads docs"]]["decision_id"]]
    assert event["result"]["verdict"] == "deny" and event["input"]["agent"]["spiffe_id"] == READER
    assert {"pod", "namespace", "deployment"} <= set(event["labels"])


def _receiver_events(stack: Stack, ids: list[str]) -> list[dict[str, Any]]:
    return _wait(
        "every decision at the receiver",
        lambda: (lambda events: events if set(ids) <= {e.get("decision_id") for e in events} else [])(
            _json_lines(stack.decision_log)
        ),
    )


def test_replay_the_decision_log_against_the_candidate(
    shadowed: tuple[Stack, Path], traffic: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    stack, candidate = shadowed
    events = _receiver_events(stack, list(traffic.values()))
    for event in events:  # each names where it was decided
        assert event["labels"]["namespace"] == "local" and event["labels"]["deployment"] == "authz-dev-stack"
    log = str(stack.decision_log)

    assert main(["policy", "replay", "--bundle", str(DEFAULT_BUNDLE), "--log", log, "--json"]) == 0
    same = json.loads(capsys.readouterr().out)
    assert same["changed"] == [] and same["compared"] >= 3

    assert main(["policy", "replay", "--bundle", str(candidate), "--log", log, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert [(c["decision_id"], c["old"]["verdict"], c["new"]["verdict"]) for c in report["changed"]] == [
        (traffic["reader reads docs"], "allow", "deny")
    ]
    assert report["by_rule"] == {"read docs": {"allow -> deny": 1}}
    # The shipped log_mask erases only the body's copies (text, parsed_body's arguments); with
    # opa.input_body: once the MCP call is sent as input.mcp alone, so it is replayed, not skipped.
    masked = {m["decision_id"]: m for m in report["masked"]}
    assert traffic["reader searches"] not in masked
    assert all(m["path"] != "agent/authz/decision" for m in report["masked"]), report["masked"]


def test_explain_a_logged_decision(
    shadowed: tuple[Stack, Path], traffic: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    stack, candidate = shadowed
    decision_id = traffic["reader reads docs"]
    _receiver_events(stack, [decision_id])
    assert main(["policy", "explain", "--log", str(stack.decision_log), decision_id]) == 0
    text = capsys.readouterr().out
    assert f"decision {decision_id}" in text and "recorded: allow" in text
    assert re.search(r"agent/authz/rest\.rego:\d+  ", text), "the route rule that decided, with its line"
    assert (
        main(["policy", "explain", "--log", str(stack.logs / "opa.log"), decision_id, "--bundle", str(candidate)]) == 0
    )
    assert "re-evaluated with" in (text := capsys.readouterr().out) and ": deny" in text


def test_the_audit_marks_opa_decisions_the_sidecar_did_not_ask_for(
    shadowed: tuple[Stack, Path], traffic: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    stack, _ = shadowed
    document = json.loads((DEFAULT_BUNDLE.parent / "sidecar/schema/examples/rest-read-jwt.json").read_text())
    direct = unix_request(stack.opa_socket, "POST", "/v1/data/agent/authz/decision", json={"input": document})
    direct_id = direct.json()["decision_id"]
    _wait("the direct query in OPA's log", lambda: direct_id in (stack.logs / "opa.log").read_text())
    _receiver_events(stack, list(traffic.values()))
    logs = ["--sidecar-log", str(stack.logs / "sidecar.log"), "--opa-log", str(stack.logs / "opa.log")]
    logs += ["--opa-log", str(stack.logs / "opa-shadow.log")]
    assert main(["audit", *logs, "--format", "json"]) == 0
    audit = json.loads(capsys.readouterr().out)
    assert [u["decision_id"] for u in audit["unmatched_opa_events"]] == [direct_id]
    calls = {c["decision_id"]: c for chain in audit["chains"] for c in chain["calls"]}
    assert direct_id not in calls, "not shown as a call"
    assert calls[traffic["reader reads docs"]]["shadow"]["verdict"] == "deny"
    assert main(["audit", *logs]) == 0
    assert "something other than the sidecar asked OPA" in capsys.readouterr().out
