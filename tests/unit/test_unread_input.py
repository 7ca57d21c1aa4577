"""``unread_input``: the sidecar leaves out what the policy names unread, and only while it does.

The policy's answer names input fields it never reads (decision document ``unread_input``); the
sidecar then leaves them out of the next calls' input. An answer to such a lean input that does not
name them came from a policy that may read them (a new bundle): the call is asked again with the
full input and that answer decides, so leaving fields out can never decide a call on less than the
policy reads.
"""

from __future__ import annotations

from typing import Any

import pytest

from sidecar.config import IdentityConfig, load_config
from sidecar.decision import unread_input
from sidecar.identity import IdentityResolver
from sidecar.opa import OpaAnswer
from sidecar.opa_fake import FakeOpa, Query, unreachable
from sidecar.pipeline import Pipeline
from sidecar.request import CheckRequest
from sidecar.sessions import SessionTracker
from sidecar.state.memory import MemoryStore
from sidecar.unread import left_out_of, without_unread
from tests.pipelines import QUIET, make_pipeline

WRITER = "spiffe://demo.local/agent/writer"
NAMES = {"unread_input": ["session.recent"]}


def _pipeline(opa: FakeOpa) -> Pipeline:
    identity = IdentityConfig.model_validate({"sources": ["pod"], "pod": {"spiffe_id": WRITER}})
    sessions = SessionTracker(MemoryStore(), load_config(None, {}).sessions)
    return make_pipeline(IdentityResolver(identity, None, None), opa, QUIET, sessions=sessions)


def _call() -> CheckRequest:
    return CheckRequest("GET", "/api/docs/handbook", {"host": "demo.local", "mcp-session-id": "s-1"}, b"")


def _has_recent(query: Query) -> bool:
    return "recent" in query.input["session"]


async def test_the_window_is_left_out_once_the_policy_names_it_unread() -> None:
    opa = FakeOpa(lambda q: OpaAnswer({"verdict": "allow", **NAMES}, f"d-{len(opa.queries)}", 0.001))
    pipeline = _pipeline(opa)
    for _ in range(3):
        assert (await pipeline.check(_call())).allowed
    assert [_has_recent(q) for q in opa.queries] == [True, False, False]
    assert "calls" in opa.queries[-1].input["session"]  # the rest of the session is still there


async def test_a_policy_that_stops_naming_it_gets_the_call_again_with_the_window() -> None:
    """The new policy denies what the window shows; its answer to the lean input (an allow) is
    never used."""

    def new_policy(query: Query) -> dict[str, Any]:
        if "recent" not in query.input["session"]:
            return {"verdict": "allow", "reasons": ["saw no history"]}
        return {"verdict": "deny", "reasons": ["history says no"]}

    answers = [lambda q: {"verdict": "allow", **NAMES}, new_policy, new_policy]
    opa = FakeOpa(lambda q: answers[min(len(opa.queries) - 1, 2)](q))
    pipeline = _pipeline(opa)
    assert (await pipeline.check(_call())).allowed
    decided = await pipeline.check(_call())
    assert not decided.allowed and decided.reasons == ("history says no",)
    assert [_has_recent(q) for q in opa.queries] == [True, False, True]
    # The new policy did not name it: later calls carry the window from the start.
    await pipeline.check(_call())
    assert [_has_recent(q) for q in opa.queries] == [True, False, True, True]


async def test_a_call_asked_twice_counts_both_queries_in_its_opa_time() -> None:
    replies = [
        OpaAnswer({"verdict": "allow", **NAMES}, "d-1", 0.004),
        OpaAnswer({"verdict": "allow"}, "d-2", 0.002),  # a new policy: asked again
        OpaAnswer({"verdict": "allow"}, "d-3", 0.003),
    ]
    pipeline = _pipeline(FakeOpa(lambda q: replies.pop(0)))
    for expected_ms in (4.0, 5.0):
        record = (await pipeline.check(_call())).record
        assert record is not None and record.opa_ms == expected_ms


async def test_a_failing_second_ask_is_a_503_never_the_lean_answer() -> None:
    replies: list[Any] = [{"verdict": "allow", **NAMES}, {"verdict": "allow"}]

    def handler(query: Query) -> Any:
        if replies:
            return replies.pop(0)
        raise unreachable()

    pipeline = _pipeline(opa := FakeOpa(handler))
    assert (await pipeline.check(_call())).allowed
    decided = await pipeline.check(_call())
    assert decided.status == 503 and len(opa.queries) == 3


@pytest.mark.parametrize(
    "result",
    [
        True,
        {"allowed": True, "unread_input": ["session.recent"]},  # the plugin shape names nothing
        {"verdict": "allow", "unread_input": "session.recent"},
        {"verdict": "allow", "unread_input": [1, None]},
        {"verdict": "allow", "unread_input": ["session.calls", "agent"]},  # not fields we leave out
        {"verdict": "allow"},
    ],
)
def test_answers_that_name_nothing_we_can_leave_out(result: Any) -> None:
    assert unread_input(result) == frozenset()


def test_only_the_window_goes_and_the_document_is_not_changed() -> None:
    doc: dict[str, Any] = {
        "session": {"key": "k", "calls": 1, "recent": [{"tool": "t"}]},
        "agent": {"spiffe_id": WRITER},
    }
    lean = without_unread(doc, frozenset({"session.recent"}))
    assert lean == {"session": {"key": "k", "calls": 1}, "agent": {"spiffe_id": WRITER}}
    assert doc["session"]["recent"] == [{"tool": "t"}]
    assert without_unread(doc, frozenset()) is doc
    assert without_unread({"session": None}, frozenset({"session.recent"})) == {"session": None}
    assert without_unread(doc, frozenset({"session.calls", "agent"})) is doc, "only omittable fields go"


def test_a_logged_input_shows_what_was_left_out() -> None:
    assert left_out_of({"session": {"key": "k"}}) == ("session.recent",)
    assert left_out_of({"session": {"key": "k", "recent": []}}) == ()
    assert left_out_of({"session": None}) == () and left_out_of({}) == () and left_out_of(None) == ()
