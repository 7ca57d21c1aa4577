"""The AuthZEN PDP on the real stack: the shipped policy answers as the ext_authz checks do, the
decision log and the audit have every evaluation, and the Todo bundle passes the interop vectors.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from devstack.agent_client import AgentClient
from devstack.stack import AUTHZEN_PEP, Ports, Stack
from sidecar.cli import main
from tests.e2e.conftest import READER, WRITER

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
PEP = AUTHZEN_PEP
TODO_BUNDLE = REPO / "examples" / "authzen-todo"
# The interop suite's decision vectors: openid/authzen, interop/authzen-todo-backend/test/, at this
# commit ("Sync evaluation schemas with the final 1.0 text", 2026-08-20). The files are not in this
# repository (see tests/fixtures/authzen-interop/README.md); AUTHZEN_VECTORS names a directory
# holding them, and each must be byte for byte the version pinned here.
VECTORS_COMMIT = "e287920eed842b227e38531c1735b712337ca44d"
VECTORS = {
    "decisions-authorization-api-1_0-01.json": "78465be47daeb494ed36fefcfc4d39c7511381be2df95a20f9a6a40fe4f63a3c",
    "decisions-authorization-api-1_0-02.json": "26a066ebece7d6b48b56ae9dc53c14b628120d259b7247b5c94d9c547411aab7",
}
VECTORS_DIR = Path(os.environ.get("AUTHZEN_VECTORS", REPO / "tests" / "fixtures" / "authzen-interop"))


def pep(stack: Stack, path: str, body: Any, **headers: str) -> requests.Response:
    sent = {"authorization": "Bearer " + stack.trust_domain.mint_jwt(PEP), **headers}
    return requests.post(f"{stack.sidecar_url}{path}", json=body, headers=sent, timeout=10)


def route(agent: str, method: str, path: str) -> dict[str, Any]:
    return {
        "subject": {"type": "agent", "id": agent},
        "action": {"name": method},
        "resource": {"type": "route", "id": path, "properties": {"host": "127.0.0.1"}},
    }


def test_discovery_names_the_endpoints_at_the_api_listener(stack: Stack) -> None:
    assert f"AuthZEN PDP         {stack.sidecar_url}" in stack.banner()  # what ./taskw up prints
    response = requests.get(f"{stack.sidecar_url}/.well-known/authzen-configuration", timeout=10)
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/json")
    assert response.json() == {
        "policy_decision_point": stack.sidecar_url,
        "access_evaluation_endpoint": f"{stack.sidecar_url}/access/v1/evaluation",
        "access_evaluations_endpoint": f"{stack.sidecar_url}/access/v1/evaluations",
        "search_action_endpoint": f"{stack.sidecar_url}/access/v1/search/action",
    }


@pytest.mark.parametrize(
    ("agent", "method", "path", "status"),
    [
        (READER, "GET", "/api/docs/handbook", 200),
        (READER, "POST", "/api/tickets", 403),
        (WRITER, "GET", "/api/records/7", 200),
        (READER, "DELETE", "/api/records/7", 403),
    ],
)
def test_the_shipped_policy_answers_as_the_check_does(
    stack: Stack, client: AgentClient, agent: str, method: str, path: str, status: int
) -> None:
    checked = client.request(method, path, agent)
    assert checked.status_code == status, checked.text
    answer = pep(stack, "/access/v1/evaluation", route(agent, method, path))
    assert answer.status_code == 200, answer.text
    assert answer.json()["decision"] is (status == 200)
    assert answer.json()["context"]["verdict"] == ("allow" if status == 200 else "deny")
    if status == 403:  # the same reasons the check gave the agent
        assert answer.json()["context"]["reasons"] == checked.json()["reasons"]


def test_batch_semantics_and_defaults(stack: Stack) -> None:
    items = [
        {"resource": {"type": "route", "id": "/api/docs/a"}},
        {"action": {"name": "POST"}, "resource": {"type": "route", "id": "/api/tickets"}},
        {"resource": {"type": "route", "id": "/api/tickets"}},
    ]
    defaults = {"subject": {"type": "agent", "id": READER}, "action": {"name": "GET"}}
    expected = {
        None: [True, False, True],
        "execute_all": [True, False, True],
        "deny_on_first_deny": [True, False],
        "permit_on_first_permit": [True],
    }
    for semantic, decisions in expected.items():
        options = {"options": {"evaluations_semantic": semantic}} if semantic else {}
        answer = pep(stack, "/access/v1/evaluations", {**defaults, **options, "evaluations": items})
        assert answer.status_code == 200, answer.text
        assert [e["decision"] for e in answer.json()["evaluations"]] == decisions, semantic
        assert len(answer.headers["x-authz-decision-id"].split(",")) == len(decisions)


def test_action_search_lists_what_evaluations_permit(stack: Stack) -> None:
    query = {"subject": {"type": "agent", "id": WRITER}, "resource": {"type": "mcp_server", "id": "/mcp"}}
    answer = pep(stack, "/access/v1/search/action", query)
    assert answer.status_code == 200, answer.text
    found = {a["name"] for a in answer.json()["results"]}
    assert "search_docs" in found and "create_ticket" not in found  # a write needs a task
    for name in ("search_docs", "create_ticket"):
        evaluated = pep(stack, "/access/v1/evaluation", {**query, "action": {"name": name}})
        assert evaluated.json()["decision"] is (name in found)


def test_callers_and_bad_requests_never_get_a_decision(stack: Stack) -> None:
    url = f"{stack.sidecar_url}/access/v1/evaluation"
    question = route(READER, "GET", "/api/docs/handbook")
    unauthenticated = requests.post(url, json=question, timeout=10)
    assert unauthenticated.status_code == 401 and '"decision":' not in unauthenticated.text
    forged = requests.post(url, json=question, headers={"authorization": "Bearer eyJhbGciOiJub25lIn0.e30."}, timeout=10)
    assert forged.status_code == 401 and '"decision":' not in forged.text
    wrong_audience = stack.trust_domain.mint_jwt(PEP, audience="someone-else")
    assert (
        requests.post(url, json=question, headers={"authorization": f"Bearer {wrong_audience}"}, timeout=10).status_code
        == 401
    )
    as_agent = {"authorization": "Bearer " + stack.trust_domain.mint_jwt(READER)}  # an agent probing the policy
    probed = requests.post(url, json=question, headers=as_agent, timeout=10)
    assert probed.status_code == 403 and '"decision":' not in probed.text
    bad = pep(stack, "/access/v1/evaluation", {"subject": {"type": "agent"}, "action": {"name": "GET"}})
    assert (bad.status_code, bad.text) == (400, "subject.id must be a non-empty string")
    through_envoy = requests.post(f"{stack.egress_url}/access/v1/evaluation", json=question, timeout=10)
    assert through_envoy.status_code in (401, 403) and '"decision":' not in through_envoy.text


def test_every_evaluation_is_in_the_decision_log_and_the_audit(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    answer = pep(stack, "/access/v1/evaluation", route(READER, "GET", "/api/docs/audited"), **{"x-request-id": "az-1"})
    assert answer.status_code == 200 and answer.headers["x-request-id"] == "az-1"
    decision_id = answer.headers["x-authz-decision-id"]
    deadline = time.monotonic() + 10
    while decision_id not in (stack.logs / "opa.log").read_text(errors="replace"):
        assert time.monotonic() < deadline, "OPA did not log the evaluation"
        time.sleep(0.2)
    lines = [json.loads(line) for line in (stack.logs / "sidecar.log").read_text().splitlines() if decision_id in line]
    logged = next(line for line in lines if line.get("logger") == "authz.authzen")
    assert logged["caller"] == PEP and logged["request_id"] == "az-1" and logged["verdict"] == "allow"
    assert logged["resource"] == {"type": "route", "id": "/api/docs/audited"}
    assert main(["audit", "--logs", str(stack.logs), "--agent", READER, "--format", "json"]) == 0
    audit = json.loads(capsys.readouterr().out)
    evaluation = next(a for a in audit["authzen_evaluations"] if a["decision_id"] == decision_id)
    assert evaluation["caller"] == PEP and evaluation["subject"] == f"agent:{READER}"
    assert all(u["decision_id"] != decision_id for u in audit["unmatched_opa_events"])


# ---------------------------------------------------------------------------
# The interop "Todo" scenario


@pytest.fixture(scope="module")
def todo_stack(tmp_path_factory: pytest.TempPathFactory, opa_bin: str, envoy_bin: str) -> Iterator[Stack]:
    """What ``./taskw up BUNDLE=examples/authzen-todo`` runs."""
    with Stack(tmp_path_factory.mktemp("todo"), Ports.free(), bundle=TODO_BUNDLE) as running:
        yield running


def vectors(name: str) -> dict[str, Any]:
    path = VECTORS_DIR / name
    if not path.is_file():
        pytest.skip(
            f"{path} is absent: the interop vectors are not vendored (tests/fixtures/authzen-interop/README.md)"
        )
    raw = path.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == VECTORS[name], f"{path} is not the version of {VECTORS_COMMIT}"
    document: dict[str, Any] = json.loads(raw)
    return document


@pytest.mark.interop_vectors
@pytest.mark.parametrize("name", sorted(VECTORS))
def test_the_todo_bundle_passes_the_interop_decision_vectors(todo_stack: Stack, name: str) -> None:
    suite = vectors(name)
    failed = []
    for vector in suite["evaluation"]:
        answer = pep(todo_stack, "/access/v1/evaluation", vector["request"])
        if answer.status_code != 200 or answer.json() != {"decision": vector["expected"]}:
            failed.append((vector["request"], answer.status_code, answer.text))
    for vector in suite.get("evaluations", []):
        answer = pep(todo_stack, "/access/v1/evaluations", vector["request"])
        if answer.status_code != 200 or answer.json() != {"evaluations": vector["expected"]}:
            failed.append((vector["request"], answer.status_code, answer.text))
    total = len(suite["evaluation"]) + len(suite.get("evaluations", []))
    assert not failed, f"{len(failed)} of {total} vectors failed: {failed[:3]}"
