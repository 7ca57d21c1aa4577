"""Every kind of OPA input document the sidecar sends validates against its JSON Schema.

The documents are the ones the services really send (a stand-in OPA records them): the check's
(pipeline), the task policy's (opening and delegating a task), the approver policy's
(listing and deciding approvals), the refusal reports' and the AuthZEN entrypoint's. All are
built by sidecar/input.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
from spiffe import SpiffeId

from sidecar.approvals import ApprovalService
from sidecar.authzen.evaluate import Evaluator
from sidecar.authzen.model import Batch, parse_evaluations
from sidecar.config import IdentityConfig, load_config
from sidecar.decision import StepUp
from sidecar.identity import Identity, IdentityResolver
from sidecar.identity.approvers import Approver
from sidecar.keys import KeySet
from sidecar.opa import OpaAnswer
from sidecar.opa_fake import FakeOpa, always
from sidecar.refusals import RefusalReporter
from sidecar.request import CheckRequest
from sidecar.sessions import SessionTracker
from sidecar.state.memory import MemoryStore
from sidecar.tasks import TaskService
from tests.pipelines import QUIET, make_pipeline

SCHEMAS = Path(__file__).resolve().parents[2] / "sidecar" / "schema"
DEFAULTS = load_config(None, {})
WRITER = "spiffe://demo.local/agent/writer"
READER = "spiffe://demo.local/agent/reader"


def validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _Opa(result: Any) -> FakeOpa:
    """Records every input document (``.inputs``); answers ``result``."""
    return FakeOpa(always(OpaAnswer(result, "d-1", 0.001)))


async def test_the_check_input_validates() -> None:
    opa = _Opa(True)
    identity = IdentityConfig.model_validate({"sources": ["pod"], "pod": {"spiffe_id": WRITER}})
    store = MemoryStore()
    pipeline = make_pipeline(
        IdentityResolver(identity, None, None),
        opa,
        QUIET,
        sessions=SessionTracker(store, DEFAULTS.sessions),
        approvals=ApprovalService(DEFAULTS.approvals, store, opa, None),
    )
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"a":1}}}'
    headers = {"host": "tools.demo.local", "content-type": "application/json"}
    assert (await pipeline.check(CheckRequest("POST", "/mcp", headers, body))).allowed
    validator("input").validate(opa.inputs[-1])


async def test_opa_input_body_decides_how_often_the_body_is_sent() -> None:
    """``opa.input_body``: ``once`` (default) sends an MCP call's body as input.mcp only; ``all``
    also as the text and parsed_body, as opa-envoy-plugin does."""
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"a":1}}}'
    headers = {"host": "tools.demo.local", "content-type": "application/json"}
    identity = IdentityConfig.model_validate({"sources": ["pod"], "pod": {"spiffe_id": WRITER}})
    sent = {}
    for setting in ("once", "all"):
        opa = _Opa(True)
        settings = {**QUIET, "opa": {"input_body": setting}}
        pipeline = make_pipeline(IdentityResolver(identity, None, None), opa, settings)
        assert (await pipeline.check(CheckRequest("POST", "/mcp", headers, body))).allowed
        validator("input").validate(opa.inputs[-1])
        doc = opa.inputs[-1]
        sent[setting] = (doc["attributes"]["request"]["http"].get("body"), doc["parsed_body"], doc["mcp"]["arguments"])
    assert sent["once"] == (None, None, {"a": 1})
    assert sent["all"] == (body.decode(), json.loads(body), {"a": 1})


async def test_the_task_policy_inputs_validate() -> None:
    opa = _Opa({"verdict": "allow", "reasons": ["ok"], "scopes": ["docs:read"], "ttl_seconds": 30})
    tasks = TaskService(DEFAULTS.tasks, MemoryStore(), KeySet(None, "ES256", 10), opa, ["demo.local"])
    writer = Identity(SpiffeId(WRITER), "jwt_svid", {"sub": WRITER})
    opened = await tasks.open(writer, {"purpose": "triage", "scopes": ["docs:read"], "ttl_seconds": 60})
    await tasks.delegate(writer, opened.task.id, {"to": READER, "scopes": ["docs:read"], "ttl_seconds": 30})
    check = validator("task-input")
    assert [doc["operation"] for doc in opa.inputs] == ["open", "delegate"]
    for doc in opa.inputs:
        check.validate(doc)
    assert opa.inputs[1]["parent"]["id"] == opened.task.id and opa.inputs[1]["delegate_to"] == READER


async def test_the_approver_policy_inputs_validate() -> None:
    opa = _Opa({"verdict": "allow", "reasons": []})
    approvals = ApprovalService(DEFAULTS.approvals, MemoryStore(), opa, None)
    pending = await approvals.request(
        StepUp("approval", approvers={"data_class": "restricted"}),
        agent=WRITER,
        task_id=None,
        chain=(),
        fingerprint="f" * 64,
        decision_id="d-1",
        reasons=["a human must approve"],
        summary={"method": "DELETE", "path": "/api/records/1"},
    )
    approver = Approver("oidc", "https://idp.example#alice", {"sub": "alice"})
    assert [a.id for a in await approvals.pending_for(approver)] == [pending.id]
    await approvals.decide(approver, pending.id, False, "not today")
    check = validator("approver-input")
    assert [doc["operation"] for doc in opa.inputs] == ["approve", "reject"]
    for doc in opa.inputs:
        check.validate(doc)


async def test_the_refusal_report_inputs_validate() -> None:
    opa = _Opa({"verdict": "deny", "reasons": ["logged"]})
    reporter = RefusalReporter(opa, "agent/refusals/decision", 4)
    identity = IdentityConfig.model_validate({"sources": ["pod"], "pod": {"spiffe_id": WRITER}})
    pipeline = make_pipeline(IdentityResolver(identity, None, None), _Opa(True), QUIET)
    refused = [
        CheckRequest("get", "/api/docs", {"host": "api.demo.local"}, b""),  # request line: lower-case method
        CheckRequest("POST", "/mcp", {"host": "tools.demo.local", "content-type": "application/json"}, b"{"),
        CheckRequest("GET", "/api/docs", {"host": "api.demo.local", "x-agent-task-token": "forged"}, b""),
    ]
    for request in refused:
        decision = await pipeline.check(request)
        assert not decision.allowed and decision.record is not None
        reporter.observe(decision.record)
    await reporter.close()
    check = validator("refusal-input")
    assert [doc["refusal"]["stage"] for doc in opa.inputs] == ["body", "body", "task"]
    for doc in opa.inputs:
        check.validate(doc)


async def test_the_authzen_inputs_validate() -> None:
    opa = _Opa(True)
    batch = parse_evaluations(
        {
            "subject": {"type": "agent", "id": WRITER},
            "context": {"time": "2026-12-02T08:00:00Z"},
            "evaluations": [
                {"action": {"name": "POST"}, "resource": {"type": "route", "id": "/api/tickets"}},
                {"action": {"name": "search_docs"}, "resource": {"type": "mcp", "id": "tools", "properties": {"x": 1}}},
            ],
        },
        10,
    )
    assert isinstance(batch, Batch)
    await Evaluator(opa, "authzen/decision", None, 4).all(batch.evaluations)
    check = validator("authzen-input")
    assert len(opa.inputs) == 2
    for doc in opa.inputs:
        check.validate(doc)
