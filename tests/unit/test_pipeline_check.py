"""The whole check path in process: ``Pipeline.check`` with tasks, sessions and approvals on the
memory store and the fake OPA, for each kind of verdict (the e2e suite runs the same through
real Envoy and OPA; this runs in well under a second)."""

from __future__ import annotations

import json
from typing import Any

from sidecar import wire_http
from sidecar.approvals import ApprovalService
from sidecar.config import ApprovalsConfig, IdentityConfig, SessionsConfig, TasksConfig
from sidecar.identity import IdentityResolver
from sidecar.identity.approvers import Approver
from sidecar.keys import KeySet
from sidecar.opa import OpaAnswer
from sidecar.opa_fake import FakeOpa, Query, always, malformed, routes
from sidecar.outcome import DECISION_ID_HEADER, SPIFFE_ID_HEADER
from sidecar.request import CheckRequest
from sidecar.sessions import SessionTracker
from sidecar.state.memory import MemoryStore
from sidecar.tasks import Grant, TaskService
from sidecar.wire_http import HEADERS_TO_REMOVE, HttpAnswer
from tests.pipelines import QUIET, make_pipeline

WRITER = "spiffe://demo.local/agent/writer"
AUTHZ = "agent/authz/decision"
TASK_HEADER, APPROVAL_HEADER = "x-agent-task-token", "x-agent-approval-id"
ALLOW = {"verdict": "allow", "reasons": ["writes under a task"], "headers": {"x-authz-rule": "tickets"}}
DENY = {"verdict": "deny", "reasons": ["not in scope"]}
APPROVAL = {"verdict": "step_up", "reasons": ["a human must approve"], "step_up": {"kind": "approval"}}


def _grant_requested(query: Query) -> dict[str, Any]:
    request = query.input["request"]
    return {"verdict": "allow", "reasons": [], "scopes": request["scopes"], "ttl_seconds": request["ttl_seconds"]}


class _Sidecar:
    """One agent (the pod's identity) on a sidecar with every stateful feature on."""

    def __init__(self) -> None:
        self.policy: Any = always(ALLOW)  # the live policy; swapped by the tests
        self.opa = FakeOpa(
            routes(
                {
                    AUTHZ: lambda query: self.policy(query),
                    "agent/tasks/decision": _grant_requested,
                    "agent/approvals/decision": always({"verdict": "allow", "reasons": []}),
                }
            )
        )
        self.store = MemoryStore()
        identity = IdentityConfig.model_validate({"sources": ["pod"], "pod": {"spiffe_id": WRITER}})
        self.resolver = IdentityResolver(identity, None, None)
        self.tasks = TaskService(TasksConfig(), self.store, KeySet(None, "ES256", 10), self.opa, ["demo.local"])
        self.approvals = ApprovalService(ApprovalsConfig(), self.store, self.opa, None)
        self.pipeline = make_pipeline(
            self.resolver,
            self.opa,
            QUIET,
            tasks=self.tasks,
            sessions=SessionTracker(self.store, SessionsConfig()),
            approvals=self.approvals,
        )

    async def open_task(self) -> Grant:
        agent = self.resolver.resolve({})
        assert agent is not None
        return await self.tasks.open(agent, {"purpose": "triage", "scopes": ["tickets:write"], "ttl_seconds": 600})

    async def check(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> HttpAnswer:
        """The answer as Envoy's HTTP service mode receives it."""
        sent = {"host": "api.demo.local", **({"content-type": "application/json"} if body else {}), **(headers or {})}
        return wire_http.encode(await self.pipeline.check(CheckRequest(method, path, sent, body)))

    def authz_inputs(self) -> list[dict[str, Any]]:
        return [q.input for q in self.opa.queries if q.path == AUTHZ]


def _document(answer: HttpAnswer) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(answer.body)
    return document


async def test_allow_sends_the_identity_and_decision_upstream_and_commits_the_call() -> None:
    sidecar = _Sidecar()
    sidecar.policy = always(OpaAnswer(ALLOW, "opa-decision-1", 0.001))
    grant = await sidecar.open_task()
    answer = await sidecar.check("POST", "/api/tickets", b"{}", headers={TASK_HEADER: grant.token})
    assert answer.status == 200
    headers = dict(answer.headers)
    assert headers[DECISION_ID_HEADER] == "opa-decision-1", "OPA's decision id, for the audit"
    assert (headers[SPIFFE_ID_HEADER], headers["x-authz-rule"]) == (WRITER, "tickets")
    assert TASK_HEADER in headers[HEADERS_TO_REMOVE].split(","), "the task token never reaches the upstream"
    first = sidecar.authz_inputs()[0]
    assert first["task"]["id"] == grant.task.id and first["session"]["calls"] == 0
    assert (await sidecar.check("POST", "/api/tickets", b"{}", headers={TASK_HEADER: grant.token})).status == 200
    assert sidecar.authz_inputs()[1]["session"]["writes"] == 1, "the allowed write was committed"


async def test_deny_answers_the_policys_reasons_and_releases_the_call() -> None:
    sidecar = _Sidecar()
    sidecar.policy = always(DENY)
    answer = await sidecar.check("DELETE", "/api/records/1")
    assert answer.status == 403
    document = _document(answer)
    assert (document["verdict"], document["reasons"]) == ("deny", ["not in scope"])
    assert document["decision_id"] == dict(answer.headers)[DECISION_ID_HEADER]
    await sidecar.check("DELETE", "/api/records/1")
    assert sidecar.authz_inputs()[1]["session"]["calls"] == 0, "a denied call is not counted"


async def test_a_json_rpc_deny_is_a_json_rpc_error_with_the_request_id() -> None:
    sidecar = _Sidecar()
    sidecar.policy = always(DENY)
    call = {"jsonrpc": "2.0", "id": "call-9", "method": "tools/call", "params": {"name": "delete_record"}}
    answer = await sidecar.check("POST", "/mcp", json.dumps(call).encode())
    document = _document(answer)
    assert answer.status == 403 and document["id"] == "call-9" and document["error"]["data"]["verdict"] == "deny"
    assert sidecar.authz_inputs()[0]["mcp"]["name"] == "delete_record"


async def test_step_up_to_stronger_authentication_is_an_rfc_9470_challenge() -> None:
    sidecar = _Sidecar()
    sidecar.policy = always(
        {"verdict": "step_up", "reasons": ["mfa"], "step_up": {"kind": "acr", "acr_values": ["mfa"]}}
    )
    answer = await sidecar.check("POST", "/api/payments", b"{}")
    challenge = dict(answer.headers)["www-authenticate"]
    assert answer.status == 401 and 'error="insufficient_user_authentication"' in challenge
    assert 'acr_values="mfa"' in challenge and _document(answer)["verdict"] == "step_up"


async def test_an_approval_lets_the_identical_retry_through_once() -> None:
    sidecar = _Sidecar()
    sidecar.policy = lambda query: ALLOW if query.input["approval"] else APPROVAL
    grant = await sidecar.open_task()
    token = {TASK_HEADER: grant.token}
    asked = await sidecar.check("DELETE", "/api/records/42", headers=token)
    step_up = _document(asked)["step_up"]
    assert asked.status == 401 and step_up["status"] == "pending"
    approval_id = step_up["approval_id"]
    refused = await sidecar.check("DELETE", "/api/records/42", headers={**token, APPROVAL_HEADER: approval_id})
    assert refused.status == 403 and "still pending" in _document(refused)["reasons"][0]
    await sidecar.approvals.decide(Approver("oidc", "idp#alice"), approval_id, True, "checked")
    other = await sidecar.check("DELETE", "/api/records/43", headers={**token, APPROVAL_HEADER: approval_id})
    assert other.status == 403 and "different request" in _document(other)["reasons"][0]
    retried = await sidecar.check("DELETE", "/api/records/42", headers={**token, APPROVAL_HEADER: approval_id})
    assert retried.status == 200
    assert APPROVAL_HEADER in dict(retried.headers)[HEADERS_TO_REMOVE].split(",")
    seen = sidecar.authz_inputs()[-1]["approval"]
    assert (seen["id"], seen["status"], seen["approver"]) == (
        approval_id,
        "approved",
        {"kind": "oidc", "id": "idp#alice"},
    )
    again = await sidecar.check("DELETE", "/api/records/42", headers={**token, APPROVAL_HEADER: approval_id})
    assert again.status == 403 and "already used" in _document(again)["reasons"][0]


async def test_an_approval_is_given_back_when_the_policy_refuses_the_retry() -> None:
    sidecar = _Sidecar()
    sidecar.policy = always(APPROVAL)
    approval_id = _document(await sidecar.check("DELETE", "/api/records/42"))["step_up"]["approval_id"]
    await sidecar.approvals.decide(Approver("oidc", "idp#alice"), approval_id, True, "checked")
    sidecar.policy = always(DENY)
    assert (await sidecar.check("DELETE", "/api/records/42", headers={APPROVAL_HEADER: approval_id})).status == 403
    sidecar.policy = always(ALLOW)
    assert (await sidecar.check("DELETE", "/api/records/42", headers={APPROVAL_HEADER: approval_id})).status == 200


async def test_opa_failing_or_answering_garbage_is_a_503_never_an_allow() -> None:
    sidecar = _Sidecar()
    for policy, reason in ((always(malformed()), "invalid JSON"), (always("yes please"), "policy answer unusable")):
        sidecar.policy = policy
        answer = await sidecar.check("GET", "/api/docs/x")
        assert answer.status == 503 and _document(answer)["verdict"] == "error"
        assert reason in _document(answer)["reasons"][0]
    sidecar.policy = always(ALLOW)
    await sidecar.check("GET", "/api/docs/x")
    assert sidecar.authz_inputs()[-1]["session"]["calls"] == 0, "the failed calls were released"


async def test_a_revoked_task_is_refused_before_the_policy_is_asked() -> None:
    sidecar = _Sidecar()
    grant = await sidecar.open_task()
    agent = sidecar.resolver.resolve({})
    assert agent is not None
    await sidecar.tasks.end(agent, grant.task.id)
    answer = await sidecar.check("POST", "/api/tickets", b"{}", headers={TASK_HEADER: grant.token})
    assert answer.status == 403 and "was completed" in _document(answer)["reasons"][0]
    assert sidecar.authz_inputs() == []
