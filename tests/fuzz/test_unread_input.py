"""What the shipped policy names in ``unread_input`` it really never reads (static check, real OPA).

Every answer of ``data.agent.authz.decision`` names ``session.recent`` unread, and the sidecar then
leaves it out of later inputs (sidecar/phases/policy.py). If a rule of the bundle did read it, the
sidecar would hide from it the history it judges: a bypass. Two checks, each able to fail:

- statically (``opa parse``, the analysis ``policy replay`` uses), no reference to ``input`` in the
  bundle reaches ``input.session.recent`` except the session object taken whole, by name, in the
  places listed below (type checks and the counters read through it);
- on the sidecar's own input examples, mutated as in test_fast_path.py and given a random recent
  window (tools, methods, paths, writes), a real OPA decides the same with and without it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st

from sidecar.policy.engine import Bundle
from tests.fuzz.test_fast_path import CHANGES, EXAMPLES, REPO, ask, examples, mutate
from tests.real_opa import serve_bundle

# Where the bundle takes input.session as a whole (session.rego): `session := input.session`, the
# readable_session check's `s := input.session` and type checks. A new whole-session reference
# elsewhere must be looked at (does it reach .recent?) and listed here.
WHOLE_SESSION_FILES = {"agent/authz/session.rego"}


def test_no_rule_reads_the_recent_window() -> None:
    reaching = [r for r in Bundle(REPO / "rego").input_reads() if r.may_read(["session", "recent"])]
    assert reaching, "the analysis found no session reference at all: it is not looking"
    unexpected = [r for r in reaching if r.ref != ("session",) or r.file not in WHOLE_SESSION_FILES]
    assert not unexpected, unexpected


@pytest.fixture(scope="module")
def opa(opa_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve_bundle(opa_bin, REPO / "rego", tmp_path_factory.mktemp("unread-input-opa")) as url:
        yield url


ENTRY = st.fixed_dictionaries(
    {
        "at": st.integers(0, 2**33),
        "method": st.sampled_from(["GET", "POST", "DELETE", "PUT"]),
        "path": st.sampled_from(["/api/docs/handbook", "/api/tickets", "/api/records/42", "/mcp"]),
        "tool": st.sampled_from([None, "search_docs", "read_record", "create_ticket", "send_email"]),
        "write": st.booleans(),
    }
)


@given(example=st.integers(0, len(EXAMPLES) - 1), changes=CHANGES, recent=st.lists(ENTRY, max_size=20))
def test_the_decision_is_the_same_without_the_recent_window(
    opa: str, example: int, changes: list[tuple[tuple[str, ...], Any]], recent: list[dict[str, Any]]
) -> None:
    doc = examples()[example]
    for where, value in changes:
        doc = mutate(doc, where, value)
    if not isinstance(doc.get("session"), dict):
        return
    full = copy.deepcopy(doc)
    full["session"]["recent"] = recent
    lean = copy.deepcopy(doc)
    lean["session"].pop("recent", None)
    with requests.Session() as session:
        with_window, without = ask(session, opa, "decision", full), ask(session, opa, "decision", lean)
    assert with_window == without, (EXAMPLES[example].name, changes)
    assert "session.recent" in with_window["unread_input"]
