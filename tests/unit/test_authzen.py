"""The AuthZEN PDP without processes: request validation, batch semantics, the HTTP binding.

OPA is a fake here (tests/e2e/test_authzen.py runs the real one); the fake answers by the
action's name, so each test says what the policy would decide.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY
from spiffe import SpiffeId

from sidecar import agent_api
from sidecar.authzen.evaluate import Evaluator, Outcome, PolicyAnswerError, decision_of
from sidecar.authzen.log import log_outcome
from sidecar.authzen.model import AuthzenError, Batch, Evaluation, parse_evaluation, parse_evaluations
from sidecar.authzen.routes import add_authzen_routes
from sidecar.config import AuthzenConfig
from sidecar.identity import Identity, IdentityError, IdentityResolver
from sidecar.input import authzen_policy_input
from sidecar.opa import HttpOpaClient, OpaAnswer, OpaClient, OpaError
from sidecar.wire_status import HTTP_STATUS
from tests.opa_server import opa_server

PEP = "spiffe://demo.local/pep/gateway"
SUBJECT = {"type": "user", "id": "alice"}
RESOURCE = {"type": "doc", "id": "1"}


class FakeOpa:
    """Answers ``allow`` -> true, ``deny`` -> false, ``boom`` -> OPA error, ``odd`` -> not a decision."""

    def __init__(self) -> None:
        self.asked: list[dict[str, Any]] = []

    async def decide(self, input_doc: dict[str, Any], path: str | None = None, *, trace: bool = True) -> OpaAnswer:
        self.asked.append(input_doc)
        if path == "authzen/actions":
            return OpaAnswer([{"name": "allow"}, {"name": "deny"}], "search-id", 0.001)
        name = input_doc["action"]["name"]
        if name == "boom":
            raise OpaError("policy engine timed out", "timeout")
        result: Any = {"allow": True, "deny": {"decision": False, "context": {"reasons": ["no"]}}, "odd": "yes"}[name]
        return OpaAnswer(result, f"opa-{len(self.asked)}", 0.001)


def evaluation(action: str) -> Evaluation:
    return Evaluation(SUBJECT, {"name": action}, RESOURCE, {})


def evaluator(opa: FakeOpa, actions_path: str | None = "authzen/actions") -> Evaluator:
    return Evaluator(cast(OpaClient, opa), "authzen/decision", actions_path, concurrency=4)


# ---------------------------------------------------------------------------
# Requests


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ([], "the request body must be a JSON object"),
        ({"action": {"name": "a"}, "resource": RESOURCE}, "subject is required"),
        ({"subject": "alice", "action": {"name": "a"}, "resource": RESOURCE}, "subject must be a JSON object"),
        (
            {"subject": {"type": "user"}, "action": {"name": "a"}, "resource": RESOURCE},
            "subject.id must be a non-empty string",
        ),
        (
            {"subject": {"type": "", "id": "a"}, "action": {"name": "a"}, "resource": RESOURCE},
            "subject.type must be a non-empty string",
        ),
        ({"subject": SUBJECT, "action": {}, "resource": RESOURCE}, "action.name must be a non-empty string"),
        ({"subject": SUBJECT, "action": {"name": 3}, "resource": RESOURCE}, "action.name must be a non-empty string"),
        ({"subject": SUBJECT, "action": {"name": "a"}}, "resource is required"),
        (
            {"subject": SUBJECT, "action": {"name": "a"}, "resource": {"type": "doc", "id": 1}},
            "resource.id must be a non-empty string",
        ),
        (
            {"subject": SUBJECT, "action": {"name": "a", "properties": []}, "resource": RESOURCE},
            "action.properties must be an object",
        ),
        (
            {"subject": SUBJECT, "action": {"name": "a"}, "resource": RESOURCE, "context": "now"},
            "context must be a JSON object",
        ),
    ],
)
def test_bad_evaluation_requests_are_400_with_the_reason(body: Any, reason: str) -> None:
    with pytest.raises(AuthzenError) as raised:
        parse_evaluation(body)
    assert (HTTP_STATUS[raised.value.kind], raised.value.reason) == (400, reason)


def test_unknown_fields_are_ignored_and_kept_for_the_policy() -> None:
    parsed = parse_evaluation(
        {"subject": {**SUBJECT, "x": 1}, "action": {"name": "a"}, "resource": RESOURCE, "extra": True}
    )
    assert authzen_policy_input(parsed) == {
        "subject": {**SUBJECT, "x": 1},
        "action": {"name": "a"},
        "resource": RESOURCE,
        "context": {},
    }


def test_batch_defaults_come_from_the_top_level_and_items_replace_them_whole() -> None:
    parsed = parse_evaluations(
        {
            "subject": SUBJECT,
            "action": {"name": "read", "properties": {"method": "GET"}},
            "context": {"time": "t"},
            "evaluations": [{"resource": RESOURCE}, {"resource": RESOURCE, "action": {"name": "edit"}, "context": {}}],
        },
        10,
    )
    assert isinstance(parsed, Batch) and parsed.semantic == "execute_all"
    assert parsed.evaluations[0] == Evaluation(
        SUBJECT, {"name": "read", "properties": {"method": "GET"}}, RESOURCE, {"time": "t"}
    )
    assert parsed.evaluations[1] == Evaluation(SUBJECT, {"name": "edit"}, RESOURCE, {})


@pytest.mark.parametrize("items", [None, []])
def test_evaluations_without_items_is_a_single_evaluation(items: Any) -> None:
    body = {"subject": SUBJECT, "action": {"name": "a"}, "resource": RESOURCE, "evaluations": items}
    assert parse_evaluations(body, 10) == Evaluation(SUBJECT, {"name": "a"}, RESOURCE, {})


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"evaluations": {}}, "evaluations must be an array"),
        ({"evaluations": [{}] * 3}, "evaluations has 3 items; this PDP takes at most 2"),
        ({"evaluations": [1]}, "evaluations[0] must be a JSON object"),
        ({"action": {"name": "a"}, "resource": RESOURCE, "evaluations": [{}]}, "evaluations[0].subject is required"),
        ({"subject": 1, "evaluations": [{"subject": SUBJECT}]}, "subject must be a JSON object"),
        (
            {
                "subject": SUBJECT,
                "action": {"name": "a"},
                "resource": RESOURCE,
                "evaluations": [{"resource": {"type": "x"}}],
            },
            "evaluations[0].resource.id must be a non-empty string",
        ),
        (
            {"subject": SUBJECT, "action": {"name": "a"}, "resource": RESOURCE, "evaluations": [{}], "options": 1},
            "options must be a JSON object",
        ),
        (
            {
                "subject": SUBJECT,
                "action": {"name": "a"},
                "resource": RESOURCE,
                "evaluations": [{}],
                "options": {"evaluations_semantic": "first_wins"},
            },
            "options.evaluations_semantic must be one of execute_all, deny_on_first_deny, permit_on_first_permit",
        ),
    ],
)
def test_bad_batches_are_400_with_the_reason(body: Any, reason: str) -> None:
    with pytest.raises(AuthzenError) as raised:
        parse_evaluations(body, 2)
    assert (HTTP_STATUS[raised.value.kind], raised.value.reason) == (400, reason)


# ---------------------------------------------------------------------------
# Policy answers and batch semantics


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (True, (True, None)),
        (False, (False, None)),
        ({"decision": True}, (True, None)),
        ({"decision": False, "context": {"reasons": ["r"]}}, (False, {"reasons": ["r"]})),
    ],
)
def test_policy_answers(result: Any, expected: Any) -> None:
    assert decision_of(result) == expected


@pytest.mark.parametrize("result", [None, "true", 1, {}, {"decision": "true"}, {"decision": True, "context": []}])
def test_anything_else_from_the_policy_is_an_error(result: Any) -> None:
    with pytest.raises(PolicyAnswerError):
        decision_of(result)


async def test_failures_are_false_decisions_with_the_error_in_context() -> None:
    checker = evaluator(FakeOpa())
    timed_out = await checker.one(evaluation("boom"))
    assert timed_out.response() == {
        "decision": False,
        "context": {"error": {"status": 503, "message": "policy engine timed out"}},
    }
    odd = await checker.one(evaluation("odd"))
    assert odd.decision is False and odd.error and odd.decision_id == "opa-2"


@pytest.mark.parametrize(
    ("semantic", "answered"),
    [
        ("execute_all", [True, False, True, False]),
        ("deny_on_first_deny", [True, False]),
        ("permit_on_first_permit", [True]),
    ],
)
async def test_batch_semantics(semantic: Any, answered: list[bool]) -> None:
    opa = FakeOpa()
    batch = Batch([evaluation(a) for a in ("allow", "deny", "allow", "deny")], semantic)
    outcomes = await evaluator(opa).batch(batch)
    assert [o.decision for o in outcomes] == answered
    assert len(opa.asked) == len(answered)  # short-circuits ask no further


async def test_permit_on_first_permit_runs_until_a_permit() -> None:
    batch = Batch([evaluation(a) for a in ("deny", "boom", "allow", "allow")], "permit_on_first_permit")
    outcomes = await evaluator(FakeOpa()).batch(batch)
    assert [o.decision for o in outcomes] == [False, False, True]
    assert outcomes[1].error == "policy engine timed out"


async def test_deny_on_first_deny_stops_at_a_failure() -> None:
    batch = Batch([evaluation(a) for a in ("allow", "boom", "allow")], "deny_on_first_deny")
    assert [o.decision for o in await evaluator(FakeOpa()).batch(batch)] == [True, False]


# ---------------------------------------------------------------------------
# The HTTP binding


class Resolver:
    """The API resolver's contract: ``Bearer good`` is the PEP's JWT-SVID, ``Bearer pod`` the pod."""

    def resolve(self, headers: dict[str, str]) -> Identity | None:
        token = headers.get("authorization", "")
        if token == "Bearer good":
            return Identity(SpiffeId(PEP), "jwt_svid")
        if token == "Bearer other":
            return Identity(SpiffeId("spiffe://demo.local/agent/reader"), "jwt_svid")
        if token == "Bearer pod":
            return Identity(SpiffeId(PEP), "pod")
        if token:
            raise IdentityError("invalid JWT-SVID")
        return None


async def pdp(
    settings: AuthzenConfig | None = None, actions_path: str | None = "authzen/actions"
) -> TestClient[Any, Any]:
    app = web.Application()
    app[agent_api.API_RESOLVER] = cast(IdentityResolver, Resolver())
    add_authzen_routes(app, evaluator(FakeOpa(), actions_path), settings or AuthzenConfig(max_evaluations=3))
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    return client


AUTH = {"authorization": "Bearer good"}
QUESTION = {"subject": SUBJECT, "action": {"name": "allow"}, "resource": RESOURCE}


async def test_evaluation_answers_with_the_decision_and_its_id() -> None:
    client = await pdp()
    try:
        response = await client.post("/access/v1/evaluation", json=QUESTION, headers={**AUTH, "X-Request-ID": "r-1"})
        assert response.status == 200
        assert await response.json() == {"decision": True}
        assert response.headers["x-request-id"] == "r-1"
        assert response.headers["x-authz-decision-id"] == "opa-1"
    finally:
        await client.close()


async def test_evaluations_answer_in_order_and_log_each_with_the_caller(caplog: pytest.LogCaptureFixture) -> None:
    client = await pdp()
    body = {**QUESTION, "evaluations": [{}, {"action": {"name": "deny"}}, {"action": {"name": "boom"}}]}
    try:
        with caplog.at_level(logging.INFO, logger="authz.authzen"):
            response = await client.post("/access/v1/evaluations", json=body, headers=AUTH)
        assert response.status == 200
        answered = await response.json()
    finally:
        await client.close()
    assert [e["decision"] for e in answered["evaluations"]] == [True, False, False]
    assert answered["evaluations"][1]["context"] == {"reasons": ["no"]}
    records = [r for r in caplog.records if r.name == "authz.authzen"]
    assert [(r.__dict__["caller"], r.__dict__["verdict"], r.__dict__["index"]) for r in records] == [
        (PEP, "allow", 0),
        (PEP, "deny", 1),
        (PEP, "error", 2),
    ]
    assert records[1].__dict__["reasons"] == ["no"] and records[1].__dict__["action"] == "deny"
    assert len({r.__dict__["decision_id"] for r in records}) == 3 and len({r.__dict__["batch"] for r in records}) == 1
    assert response.headers["x-authz-decision-id"] == ",".join(r.__dict__["decision_id"] for r in records)


def test_evaluations_are_counted_by_verdict() -> None:
    def count(verdict: str) -> float:
        return (
            REGISTRY.get_sample_value(
                "authz_authzen_evaluations_total", {"verdict": verdict, "endpoint": "evaluations"}
            )
            or 0.0
        )

    before = {v: count(v) for v in ("allow", "deny", "error")}
    caller = Identity(SpiffeId(PEP), "jwt_svid")
    for outcome in (Outcome(evaluation("a"), True, None, "1"), Outcome(evaluation("b"), False, None, "2", error="x")):
        log_outcome(outcome, caller, "evaluations", None, "b", 0)
    assert {v: count(v) - before[v] for v in before} == {"allow": 1.0, "deny": 0.0, "error": 1.0}


@pytest.mark.parametrize(
    ("headers", "status", "reason"),
    [
        ({}, 401, "a JWT-SVID is required"),
        ({"authorization": "Bearer pod"}, 401, "a JWT-SVID is required"),
        ({"authorization": "Bearer forged"}, 401, "invalid JWT-SVID"),
        (
            {"authorization": "Bearer other"},
            403,
            "spiffe://demo.local/agent/reader may not ask this PDP (authzen.callers)",
        ),
    ],
)
async def test_callers_must_authenticate_as_an_allowed_pep(headers: dict[str, str], status: int, reason: str) -> None:
    client = await pdp(AuthzenConfig(callers=[PEP]))
    try:
        response = await client.post("/access/v1/evaluation", json=QUESTION, headers=headers)
        assert (response.status, await response.text()) == (status, reason)
        assert "decision" not in await response.text()
        assert ("www-authenticate" in response.headers) is (status == 401)
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("data", "content_type", "status", "reason"),
    [
        (json.dumps(QUESTION), "text/plain", 400, "Content-Type must be application/json"),
        ("{not json", "application/json", 400, "request body is not valid JSON"),
        ("[NaN]", "application/json", 400, "request body is not valid JSON"),
        (json.dumps({"subject": SUBJECT}), "application/json", 400, "action is required"),
        (json.dumps({**QUESTION, "pad": "x" * 200}), "application/json", 413, "request body is larger than 100 bytes"),
    ],
)
async def test_bad_requests_get_the_spec_error_never_a_decision(
    data: str, content_type: str, status: int, reason: str
) -> None:
    client = await pdp(AuthzenConfig(max_body_bytes=100))
    try:
        response = await client.post(
            "/access/v1/evaluation", data=data, headers={**AUTH, "content-type": content_type, "x-request-id": "r-2"}
        )
        assert (response.status, await response.text()) == (status, reason)
        assert response.headers["x-request-id"] == "r-2"
    finally:
        await client.close()


async def test_a_body_sent_in_pieces_is_read_whole() -> None:
    client = await pdp(AuthzenConfig(max_evaluations=1000))
    items = [{"resource": {"type": "doc", "id": f"{i:0>100}"}} for i in range(1000)]  # about 150 KB
    body = json.dumps({**QUESTION, "evaluations": items}).encode()

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 16_384):
            yield body[start : start + 16_384]
            await asyncio.sleep(0.01)  # the handler sees what has arrived so far

    try:
        headers = {**AUTH, "content-type": "application/json"}
        response = await client.post("/access/v1/evaluations", data=pieces(), headers=headers)
        assert response.status == 200, await response.text()
        assert len((await response.json())["evaluations"]) == 1000
    finally:
        await client.close()


async def test_too_many_evaluations_is_a_bad_request() -> None:
    client = await pdp()
    try:
        response = await client.post("/access/v1/evaluations", json={**QUESTION, "evaluations": [{}] * 4}, headers=AUTH)
        assert (response.status, await response.text()) == (400, "evaluations has 4 items; this PDP takes at most 3")
    finally:
        await client.close()


async def test_action_search_returns_the_permitted_candidates() -> None:
    client = await pdp()
    try:
        response = await client.post(
            "/access/v1/search/action", json={"subject": SUBJECT, "resource": RESOURCE}, headers=AUTH
        )
        assert response.status == 200
        assert await response.json() == {"results": [{"name": "allow"}]}
    finally:
        await client.close()


async def test_discovery_lists_only_what_is_served() -> None:
    client = await pdp(AuthzenConfig(base_url="https://pdp.example.com"))
    off = await pdp(actions_path=None)
    try:
        document = await (await client.get("/.well-known/authzen-configuration")).json()
        assert document == {
            "policy_decision_point": "https://pdp.example.com",
            "access_evaluation_endpoint": "https://pdp.example.com/access/v1/evaluation",
            "access_evaluations_endpoint": "https://pdp.example.com/access/v1/evaluations",
            "search_action_endpoint": "https://pdp.example.com/access/v1/search/action",
        }
        reflected = await (await off.get("/.well-known/authzen-configuration")).json()
        assert "search_action_endpoint" not in reflected
        assert reflected["policy_decision_point"] == f"http://{off.server.host}:{off.server.port}"
        search = await off.post(
            "/access/v1/search/action", json={"subject": SUBJECT, "resource": RESOURCE}, headers=AUTH
        )
        assert search.status in (404, 405)
    finally:
        await client.close()
        await off.close()


@pytest.mark.parametrize(
    "settings",
    [
        {"callers": ["demo.local/pep"]},
        {"base_url": "ftp://pdp"},
        {"base_url": "https://pdp/?x"},
        {"decision_path": "a b"},
    ],
)
def test_bad_settings_are_refused_at_start(settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        AuthzenConfig.model_validate(settings)


def test_settings_are_normalised() -> None:
    settings = AuthzenConfig.model_validate({"base_url": "https://pdp.example.com/", "decision_path": "/x/y/"})
    assert (settings.base_url, settings.decision_path) == ("https://pdp.example.com", "x/y")


async def test_evaluations_are_not_traced_twice(caplog: pytest.LogCaptureFixture) -> None:
    """The authz.authzen line carries OPA's decision id, so OpaClient writes no authz.opa line for it."""

    async def data_api(_: web.Request) -> web.Response:
        return web.json_response({"result": True, "decision_id": "opa-7"})

    async with opa_server(data_api) as url:
        opa = HttpOpaClient(url, "agent/authz/decision", 1000, 4)
        await opa.start()
        try:
            with caplog.at_level(logging.INFO, logger="authz.opa"):
                outcome = await Evaluator(opa, "authzen/decision", None, 4).one(evaluation("allow"))
                assert outcome.decision_id == "opa-7" and outcome.decision is True
                assert not [r for r in caplog.records if r.name == "authz.opa"]
                await opa.decide({}, "agent/tasks/decision")  # other queries still are
                assert [r.__dict__["decision_id"] for r in caplog.records if r.name == "authz.opa"] == ["opa-7"]
        finally:
            await opa.close()
