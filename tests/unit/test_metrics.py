"""Each operator metric moves when its event happens, and only then (real services on the memory
store and the fake OPA; a Redis nobody listens on for store failures)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from prometheus_client import REGISTRY

from sidecar import status_metrics
from sidecar.approvals import ApprovalError, ApprovalService
from sidecar.config import ApprovalsConfig, IdentityConfig, StateConfig, TasksConfig
from sidecar.decision import StepUp
from sidecar.identity import IdentityError, IdentityResolver
from sidecar.identity.approvers import Approver
from sidecar.keys import KeySet
from sidecar.opa_fake import FakeOpa, Query, always, routes
from sidecar.request import CheckRequest
from sidecar.state import StoreError
from sidecar.state.instrumented import InstrumentedStore
from sidecar.state.memory import MemoryStore
from sidecar.state.redis import RedisStore
from sidecar.tasks import TaskService
from tests.pipelines import QUIET, make_pipeline

WRITER = "spiffe://demo.local/agent/writer"
ALICE = Approver("oidc", "https://idp.demo.local#alice", {"groups": ["security-approvers"]})


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@contextmanager
def _moves(*samples: tuple[str, dict[str, str]]) -> Iterator[Callable[[], list[float]]]:
    """How much each sample moved over the block (read the deltas after it)."""
    before = [_value(name, **labels) for name, labels in samples]
    deltas: list[float] = []
    yield lambda: deltas
    deltas.extend(_value(name, **labels) - was for (name, labels), was in zip(samples, before, strict=True))


def _store_samples(operation: str) -> tuple[tuple[str, dict[str, str]], ...]:
    return (
        ("authz_state_store_seconds_count", {"operation": operation}),
        ("authz_state_store_errors_total", {"operation": operation}),
    )


async def test_store_operations_are_timed_and_only_failures_count_as_errors() -> None:
    store = InstrumentedStore(MemoryStore())
    with _moves(*_store_samples("get_task"), *_store_samples("ping")) as moved:
        assert await store.get_task("no-such-task") is None
    assert moved() == [1, 0, 0, 0]

    down = InstrumentedStore(RedisStore.from_config(StateConfig(backend="redis", redis_url="redis://127.0.0.1:1/0")))
    try:
        with _moves(*_store_samples("get_task"), *_store_samples("ping")) as moved, pytest.raises(StoreError):
            await down.get_task("t-1")
        assert moved() == [1, 1, 0, 0]
    finally:
        await down.close()


def _resolver(sources: list[str], **extra: Any) -> IdentityResolver:
    config = IdentityConfig.model_validate({"sources": sources, **extra})
    return IdentityResolver(config, None, "an-xfcc-secret-of-16+-characters")


IDENTITY = tuple(
    ("authz_identity_failures_total", {"source": source}) for source in ("xfcc", "jwt_svid", "pod", "none", "mismatch")
)


@pytest.mark.parametrize(
    ("sources", "headers", "moved"),
    [
        (["jwt_svid"], {"authorization": "Bearer not-a-jwt"}, [0, 1, 0, 0, 0]),
        (["xfcc"], {"x-forwarded-client-cert": "URI=spiffe://demo.local/agent/writer"}, [1, 0, 0, 0, 0]),
        (["jwt_svid"], {}, [0, 0, 0, 1, 0]),
    ],
    ids=["jwt_svid", "xfcc-without-secret", "none"],
)
def test_identity_failures_count_by_source(sources: list[str], headers: dict[str, str], moved: list[int]) -> None:
    with _moves(*IDENTITY) as deltas, pytest.raises(IdentityError):
        _resolver(sources).resolve(headers)
    assert deltas() == moved


def test_a_resolved_identity_moves_no_failure() -> None:
    with _moves(*IDENTITY) as deltas:
        assert _resolver(["pod"], pod={"spiffe_id": WRITER}).resolve({}) is not None
    assert deltas() == [0, 0, 0, 0, 0]


def _grant(query: Query) -> dict[str, Any]:
    request = query.input["request"]
    return {"verdict": "allow", "reasons": [], "scopes": request["scopes"], "ttl_seconds": request["ttl_seconds"]}


TASKS: tuple[tuple[str, dict[str, str]], ...] = (
    ("authz_tasks_opened_total", {"kind": "open"}),
    ("authz_tasks_opened_total", {"kind": "delegate"}),
    ("authz_tasks_ended_total", {}),
)


async def test_tasks_opened_delegated_and_ended() -> None:
    policy: dict[str, Any] = {"answer": _grant}
    opa = FakeOpa(routes({"agent/tasks/decision": lambda query: policy["answer"](query)}))
    tasks = TaskService(TasksConfig(), MemoryStore(), KeySet(None, "ES256", 10), opa, ["demo.local"])
    writer = _resolver(["pod"], pod={"spiffe_id": WRITER}).resolve({})
    assert writer is not None
    body = {"purpose": "triage", "scopes": ["tickets:write"], "ttl_seconds": 600}
    with _moves(*TASKS) as deltas:
        grant = await tasks.open(writer, body)
    assert deltas() == [1, 0, 0]
    with _moves(*TASKS) as deltas:
        await tasks.delegate(
            writer,
            grant.task.id,
            {"to": "spiffe://demo.local/agent/helper", "scopes": ["tickets:write"], "ttl_seconds": 60},
        )
    assert deltas() == [0, 1, 0]
    with _moves(*TASKS) as deltas:
        await tasks.end(writer, grant.task.id)
    assert deltas() == [0, 0, 2], "the task and the task delegated from it"
    policy["answer"] = always({"verdict": "deny", "reasons": ["no"]})
    with _moves(*TASKS) as deltas, pytest.raises(Exception):  # noqa: B017 - any refusal; none may count
        await tasks.open(writer, body)
    assert deltas() == [0, 0, 0]


APPROVALS: tuple[tuple[str, dict[str, str]], ...] = (
    ("authz_approvals_requested_total", {}),
    ("authz_approvals_decided_total", {"decision": "approved"}),
    ("authz_approvals_decided_total", {"decision": "rejected"}),
)


async def test_approvals_requested_decided_and_pending() -> None:
    store = MemoryStore()
    service = ApprovalService(ApprovalsConfig(), store, FakeOpa(always({"verdict": "allow", "reasons": []})), None)

    async def request(fingerprint: str) -> str:
        approval = await service.request(
            StepUp("approval", ttl_seconds=300),
            agent=WRITER,
            task_id=None,
            chain=(),
            fingerprint=fingerprint,
            decision_id="d-1",
            reasons=[],
            summary={},
        )
        return approval.id

    opa = FakeOpa(always(True), revisions={"authz": "r1"})
    with _moves(*APPROVALS) as deltas:
        first = await request("fp-1")
        assert await request("fp-1") == first, "asking again waits for the same approval: not a new one"
        second = await request("fp-2")
    assert deltas() == [2, 0, 0]
    await status_metrics.refresh(opa, store)
    assert _value("authz_approvals_pending") == 2
    with _moves(*APPROVALS) as deltas:
        await service.decide(ALICE, first, True, "ok")
        await service.decide(ALICE, second, False, "no")
        with pytest.raises(ApprovalError):
            await service.decide(ALICE, first, True, "again")
    assert deltas() == [0, 1, 1]
    await status_metrics.refresh(opa, store)
    assert _value("authz_approvals_pending") == 0


async def test_bundle_revision_and_age_follow_opa_and_vanish_when_it_cannot_say() -> None:
    opa = FakeOpa(always(True), revisions={"authz": "r1"})
    await status_metrics.refresh(opa, None)
    assert _value("authz_bundle_info", bundle="authz", revision="r1") == 1
    assert 0 <= _value("authz_bundle_age_seconds", bundle="authz") < 60
    opa.revisions = {"authz": "r2"}
    await status_metrics.refresh(opa, None)
    assert REGISTRY.get_sample_value("authz_bundle_info", {"bundle": "authz", "revision": "r1"}) is None
    assert _value("authz_bundle_info", bundle="authz", revision="r2") == 1
    opa.revisions = None
    with _moves(("authz_status_errors_total", {"source": "opa"})) as deltas:
        await status_metrics.refresh(opa, None)
    assert deltas() == [1]
    assert REGISTRY.get_sample_value("authz_bundle_info", {"bundle": "authz", "revision": "r2"}) is None


async def test_decision_latency_is_observed_under_its_verdict_only() -> None:
    resolver = _resolver(["pod"], pod={"spiffe_id": WRITER})
    samples = tuple(("authz_decision_seconds_count", {"verdict": v}) for v in ("allow", "deny", "step_up", "error"))
    for answer, moved in [
        ({"verdict": "allow", "reasons": []}, [1, 0, 0, 0]),
        ({"verdict": "deny", "reasons": ["no"]}, [0, 1, 0, 0]),
        ("not a decision", [0, 0, 0, 1]),
    ]:
        pipeline = make_pipeline(resolver, FakeOpa(always(answer)), QUIET)
        with _moves(*samples) as deltas:
            await pipeline.check(CheckRequest("GET", "/api/docs", {"host": "tools.local"}, b""))
        assert deltas() == moved, answer
