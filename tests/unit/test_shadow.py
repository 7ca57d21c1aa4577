"""Shadow mode against a fake candidate OPA over real HTTP: asked after the live decision with the
same input, logged under the live decision id, counted, never enforced, never slowing the answer."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import REGISTRY

from sidecar.config import IdentityConfig, validate_config
from sidecar.identity import IdentityResolver
from sidecar.opa import HttpOpaClient, OpaAnswer
from sidecar.opa_fake import FakeOpa, always
from sidecar.pipeline import Pipeline
from sidecar.request import CheckRequest
from sidecar.shadow import Shadow, make_shadow
from tests.opa_server import opa_server
from tests.pipelines import make_pipeline

LIVE_ID = "live-decision-1"


def _live_opa(result: Any) -> FakeOpa:
    """The live OPA's answer under its decision id (the live policy is not what is tested here)."""
    return FakeOpa(always(OpaAnswer(result, LIVE_ID, 0.001)))


class _Candidate:
    """A fake candidate OPA on a real loopback port: records what it is asked, answers as told."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, dict[str, Any]]] = []
        self.body: Any = {"result": {"verdict": "deny", "reasons": ["candidate says no"]}, "decision_id": "shadow-1"}
        self.delay = 0.0
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.asked.append((request.match_info["path"], (await request.json())["input"]))
        await asyncio.sleep(self.delay)
        text = self.body if isinstance(self.body, str) else json.dumps(self.body)
        return web.Response(text=text, content_type="application/json")


@pytest.fixture
async def candidate() -> AsyncIterator[_Candidate]:
    fake = _Candidate()
    async with opa_server(fake.handle) as url:
        fake.url = url
        yield fake


def _pipeline(live: FakeOpa, shadow: Shadow) -> Pipeline:
    identity = IdentityConfig.model_validate({"sources": ["jwt_svid"], "required": False})
    return make_pipeline(IdentityResolver(identity, None, None), live, shadow=shadow)


def _shadow(candidate: _Candidate, **settings: Any) -> Shadow:
    config = validate_config({"shadow": {"opa_url": candidate.url, "decision_path": "candidate/decision", **settings}})
    shadow = make_shadow(config)
    assert shadow is not None
    return shadow


def _count(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _request() -> CheckRequest:
    return CheckRequest("GET", "/api/docs/handbook?x=1", {"host": "tools.demo.local"}, b"")


def _shadow_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[str, dict[str, Any]]]:
    """(the live decision id, the shadow field) of each ``authz.shadow`` line."""
    return [(vars(r)["decision_id"], vars(r)["shadow"]) for r in caplog.records if r.name == "authz.shadow"]


async def _settle(shadow: Shadow) -> None:
    await shadow.close()  # waits for the queries in flight


async def test_a_disagreeing_candidate_is_logged_and_counted_but_not_enforced(
    candidate: _Candidate, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    live = _live_opa({"verdict": "allow", "reasons": ["route read docs"], "headers": {"x-authz-rule": "read docs"}})
    shadow = _shadow(candidate)
    await shadow.start()
    before = _count("authz_shadow_disagreements_total", live="allow", shadow="deny")
    answer = await _pipeline(live, shadow).check(_request())
    await _settle(shadow)

    assert answer.status == 200, "the live verdict is what the agent gets"
    assert candidate.asked == [("candidate/decision", live.inputs[0])], "the same input, at the candidate's path"
    assert _shadow_lines(caplog) == [
        (
            LIVE_ID,
            {
                "live": "allow",
                "path": "candidate/decision",
                "decision_id": "shadow-1",  # the candidate OPA's own event
                "verdict": "deny",
                "reasons": ["candidate says no"],
                "agree": False,
            },
        )
    ]
    assert _count("authz_shadow_disagreements_total", live="allow", shadow="deny") == before + 1
    assert not [r for r in caplog.records if r.name == "authz.opa"], "the shadow's queries have their own line"


async def test_an_agreeing_candidate_counts_an_agreement(candidate: _Candidate) -> None:
    candidate.body = {"result": {"verdict": "allow", "reasons": ["also fine"]}, "decision_id": "shadow-2"}
    shadow = _shadow(candidate)
    await shadow.start()
    before = _count("authz_shadow_agreements_total", verdict="allow")
    await _pipeline(_live_opa(True), shadow).check(_request())
    await _settle(shadow)
    assert _count("authz_shadow_agreements_total", verdict="allow") == before + 1


async def test_a_slow_candidate_never_slows_the_answer_and_is_bounded(
    candidate: _Candidate, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    candidate.delay = 1.0
    shadow = _shadow(candidate, timeout_ms=200, max_in_flight=1)
    await shadow.start()
    pipeline = _pipeline(_live_opa(True), shadow)
    busy, timeouts = (
        _count("authz_shadow_errors_total", kind="busy"),
        _count("authz_shadow_errors_total", kind="timeout"),
    )
    started = time.perf_counter()
    first = await pipeline.check(_request())
    second = await pipeline.check(_request())  # the one slot is taken: not shadowed
    answered = time.perf_counter() - started
    await _settle(shadow)

    assert (first.status, second.status) == (200, 200)
    assert answered < 0.15, f"the answers waited for the candidate ({answered:.3f} s)"
    assert _count("authz_shadow_errors_total", kind="busy") == busy + 1
    assert _count("authz_shadow_errors_total", kind="timeout") == timeouts + 1
    [(decision_id, line)] = _shadow_lines(caplog)
    assert decision_id == LIVE_ID and (line["verdict"], line["agree"]) == ("error", None)
    assert "timed out" in line["reasons"][0]


@pytest.mark.parametrize(
    ("body", "kind"),
    [("<html>", "malformed"), ({"decision_id": "x"}, "undefined"), ({"result": "maybe"}, "shape")],
)
async def test_an_unusable_candidate_answer_is_an_error_not_a_verdict(
    candidate: _Candidate, body: Any, kind: str
) -> None:
    candidate.body = body
    shadow = _shadow(candidate)
    await shadow.start()
    before = _count("authz_shadow_errors_total", kind=kind)
    assert (await _pipeline(_live_opa(False), shadow).check(_request())).status == 403
    await _settle(shadow)
    assert _count("authz_shadow_errors_total", kind=kind) == before + 1


async def test_the_sidecars_other_queries_are_logged_with_their_opa_decision_id(
    candidate: _Candidate, caplog: pytest.LogCaptureFixture
) -> None:
    """The task and approver APIs query other paths: each gets an ``authz.opa`` line, so the audit
    can tell them from a query someone else made."""
    caplog.set_level(logging.INFO)
    candidate.body = {"result": {"verdict": "allow"}, "decision_id": "task-query-1"}
    client = HttpOpaClient(candidate.url, "agent/authz/decision", 500, 1)
    await client.start()
    try:
        await client.decide({"operation": "open"}, "agent/tasks/decision")
    finally:
        await client.close()
    [record] = [r for r in caplog.records if r.name == "authz.opa"]
    assert (vars(record)["decision_id"], vars(record)["path"]) == ("task-query-1", "agent/tasks/decision")


@pytest.mark.parametrize(
    ("shadow", "error"),
    [
        ({"decision_path": "agent/authz/decision"}, "compare the live policy with itself"),
        ({"opa_url": "http://127.0.0.1:8181"}, "compare the live policy with itself"),
        ({"opa_url": "ftp://elsewhere"}, "shadow.opa_url"),
        ({"decision_path": "../x"}, "shadow.decision_path"),
        ({"decision_path": "cand/decision", "max_in_flight": 0}, "shadow.max_in_flight"),
    ],
)
def test_shadow_config_refuses_what_cannot_work(shadow: dict[str, Any], error: str) -> None:
    from sidecar.config import ConfigError

    with pytest.raises(ConfigError, match=error.replace(".", r"\.")):
        validate_config({"shadow": shadow})


def test_shadow_is_off_by_default() -> None:
    assert make_shadow(validate_config({})) is None
