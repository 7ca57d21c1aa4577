"""Refusal reports: which records are reported to OPA, with what input, and how many at once."""

from __future__ import annotations

import asyncio

from prometheus_client import REGISTRY

from sidecar.logs import DecisionRecord
from sidecar.opa import OpaAnswer
from sidecar.opa_fake import FakeOpa, Query, always, undefined, unreachable
from sidecar.refusals import RefusalReporter

PATH = "agent/refusals/decision"


def _record(**changes: object) -> DecisionRecord:
    fields: dict[str, object] = {
        "decision_id": "6a3f1e0c-0000-4000-8000-000000000001",
        "method": "GET",
        "host": "api.demo.local",
        "path": "/api/docs/handbook",
        "verdict": "deny",
        "status": 401,
        "stage": "identity",
        "reasons": ["no verified agent identity"],
    }
    fields.update(changes)
    return DecisionRecord(**fields)  # type: ignore[arg-type]


def _count(outcome: str) -> float:
    return REGISTRY.get_sample_value("authz_refusal_reports_total", {"outcome": outcome}) or 0.0


async def _reported(reporter: RefusalReporter, *records: DecisionRecord) -> None:
    for record in records:
        reporter.observe(record)
    await reporter.close()


async def test_a_refusal_before_the_policy_is_reported_with_the_sidecars_decision_id() -> None:
    opa = FakeOpa(always({"verdict": "deny", "reasons": ["logged"]}), decision_path="agent/authz/decision")
    await _reported(RefusalReporter(opa, PATH, 4), _record(agent=None, task=None))
    (query,) = opa.queries
    assert query.path == PATH
    refusal = query.input["refusal"]
    assert refusal["decision_id"] == "6a3f1e0c-0000-4000-8000-000000000001"
    assert (refusal["stage"], refusal["status"], refusal["verdict"]) == ("identity", 401, "deny")
    assert refusal["reasons"] == ["no verified agent identity"]
    assert (refusal["method"], refusal["host"], refusal["path"]) == ("GET", "api.demo.local", "/api/docs/handbook")


async def test_only_calls_opa_never_answered_are_reported() -> None:
    opa = FakeOpa(always(True))
    asked = [
        _record(verdict="allow", status=200, stage="policy", opa_ms=1.0),  # allowed
        _record(stage="policy", status=403, opa_ms=1.0),  # the policy denied: already in OPA's log
        _record(stage="approval", status=429, opa_ms=1.0),  # a step-up refused after the policy
        _record(stage="session", status=503, verdict="error", opa_ms=1.0),  # commit failed after the policy
        _record(stage="opa", status=503, verdict="error"),  # OPA itself failed: it was asked
        _record(stage="decision", status=503, verdict="error", opa_ms=1.0),
    ]
    refused = [
        _record(stage="body", status=400),
        _record(stage="task", status=403),
        _record(stage="approval", status=403),
        _record(stage="session", status=503, verdict="error"),
    ]
    await _reported(RefusalReporter(opa, PATH, 16), *asked, *refused)
    assert [q.input["refusal"]["stage"] for q in opa.queries] == ["body", "task", "approval", "session"]


async def test_a_flood_of_refusals_is_bounded_and_counted() -> None:
    release = asyncio.Event()

    async def slow(query: Query) -> OpaAnswer:
        await release.wait()
        return OpaAnswer({"verdict": "deny"}, "d", 0.0)

    opa = FakeOpa(slow, timeout_ms=60_000)
    reporter = RefusalReporter(opa, PATH, 2)
    busy_before = _count("busy")
    for _ in range(5):
        reporter.observe(_record())
    await asyncio.sleep(0)
    assert _count("busy") - busy_before == 3, "past the in-flight limit a refusal is counted, not queued"
    release.set()
    await reporter.close()
    assert len(opa.queries) == 2


async def test_outcomes_are_counted_by_the_opa_error_code() -> None:
    reported, unreachable_before = _count("reported"), _count("unreachable")
    # A bundle without the rule: OPA still logged the query, so it counts as reported.
    await _reported(RefusalReporter(FakeOpa(always(undefined())), PATH, 4), _record())
    await _reported(RefusalReporter(FakeOpa(always(unreachable())), PATH, 4), _record())
    assert _count("reported") - reported == 1
    assert _count("unreachable") - unreachable_before == 1
