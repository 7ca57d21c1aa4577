"""``authz-sidecar policy replay`` and ``explain`` with a real ``opa`` on recorded decision-log events
(built from the sidecar's own input examples): changes found and grouped, recorded time honoured,
masked inputs never compared silently, untrusted paths never evaluated as Rego, bad input exit 2."""

from __future__ import annotations

import copy
import gzip
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sidecar.cli import main
from sidecar.policy.engine import Bundle, decision_query
from sidecar.policy.events import read_events

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "sidecar" / "schema" / "examples"
BUILT_AT_NS = 1767225600 * 1_000_000_000  # when the examples were built (tests/rego/input_examples_test.rego)
PATH = "agent/authz/decision"


def example(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((EXAMPLES / f"{name}.json").read_text())
    return document


def decide(opa: str, input_doc: dict[str, Any], bundle: Path = REPO / "rego", at_ns: int = BUILT_AT_NS) -> Any:
    """What OPA decides, straight from ``opa eval`` (the recorded result of an event)."""
    query = f"x := data.agent.authz.decision with time.now_ns as {at_ns}"  # not the code under test
    done = subprocess.run(
        [opa, "eval", "--bundle", str(bundle), "--ignore", "*_test.rego", "--stdin-input", "--format", "json", query],
        input=json.dumps(input_doc),
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)["result"][0]["bindings"]["x"]


def event(decision_id: str, input_doc: dict[str, Any], result: Any, **extra: Any) -> dict[str, Any]:
    """A decision-log event as OPA's console writes it."""
    return {
        "decision_id": decision_id,
        "path": PATH,
        "input": input_doc,
        "result": result,
        "nd_builtin_cache": {"time.now_ns": {"[]": BUILT_AT_NS}},
        "timestamp": "2026-01-01T00:00:00.000000001Z",
        "labels": {"id": "opa-1", "version": "1.22.2", "pod": "agent-1"},
        "msg": "Decision Log",
        "level": "info",
        **extra,
    }


@pytest.fixture(scope="module")
def candidate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped policy with one change: reading docs needs the writer role."""
    copy_dir = tmp_path_factory.mktemp("candidate") / "policy"
    shutil.copytree(REPO / "rego", copy_dir, ignore=shutil.ignore_patterns("*_test.rego"))
    data_file = copy_dir / "agent" / "config" / "data.json"
    data = json.loads(data_file.read_text())
    for route in (r for method_routes in data["routes"].values() for r in method_routes):
        if route.get("name") == "read docs":
            route["roles"] = ["writer"]
    data_file.write_text(json.dumps(data))
    return copy_dir


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory, opa_bin: str) -> Path:
    """A console log: the reader reads docs, the writer writes under a task (which has expired by
    now, but not when it was decided), an MCP call whose arguments OPA erased, other OPA lines."""
    read = example("rest-read-jwt")
    write = example("rest-write-under-task-jwt")
    mcp = example("mcp-tools-call-xfcc")
    erased_mcp = copy.deepcopy(mcp)
    del erased_mcp["mcp"]["arguments"]
    read_erased = copy.deepcopy(read)
    del read_erased["attributes"]["request"]["http"]["headers"]["authorization"]
    lines = [
        json.dumps({"level": "info", "msg": "Initializing server.", "time": "2026-01-01T00:00:00Z"}),
        json.dumps(
            event(
                "d-read",
                read_erased,
                decide(opa_bin, read),
                erased=["/input/attributes/request/http/headers/authorization"],
            )
        ),
        json.dumps(event("d-write", write, decide(opa_bin, write))),
        json.dumps(
            event(
                "d-mcp",
                erased_mcp,
                decide(opa_bin, mcp),
                erased=["/input/mcp/arguments"],
            )
        ),
        json.dumps(event("d-read", read_erased, {"verdict": "deny"})),  # the receiver's copy: read once
    ]
    path = tmp_path_factory.mktemp("log") / "opa.log"
    path.write_text("\n".join(lines) + "\n")
    return path


def replay_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code = main(["policy", "replay", *argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_the_live_bundle_replays_unchanged(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, report = replay_json(capsys, "--bundle", str(REPO / "rego"), "--log", str(log))
    assert code == 0
    assert (report["events"], report["compared"], report["changed"]) == (3, 2, [])
    assert report["counts"]["duplicate_events"] == 1 and report["counts"]["skipped_lines"] == 1


def test_the_recorded_time_decides(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The write's task expired long ago: decided again now it would be a deny; at the recorded time
    it is the allow it was."""
    code, report = replay_json(capsys, "--bundle", str(REPO / "rego"), "--log", str(log))
    assert code == 0 and "d-write" not in {c["decision_id"] for c in report["changed"]}
    stale = log.parent / "no-clock.log"
    lines = [json.loads(line) for line in log.read_text().splitlines()[1:]]
    for line in lines:
        line.pop("nd_builtin_cache")
        line["timestamp"] = "2026-12-01T00:00:00Z"  # as if decided much later: the task has expired
    stale.write_text("".join(json.dumps(line) + "\n" for line in lines))
    code, report = replay_json(capsys, "--bundle", str(REPO / "rego"), "--log", str(stale))
    assert code == 1
    [changed] = report["changed"]
    assert (changed["decision_id"], changed["old"]["verdict"], changed["new"]["verdict"]) == (
        "d-write",
        "allow",
        "deny",
    )
    assert changed["clock"] == "timestamp" and "is not active" in changed["new"]["reasons"][0]


def test_a_candidate_that_changes_a_rule(
    log: Path, candidate: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, report = replay_json(capsys, "--bundle", str(candidate), "--log", str(log))
    assert code == 1
    [changed] = report["changed"]
    assert changed["decision_id"] == "d-read" and changed["change"] == "verdict"
    assert (changed["old"]["verdict"], changed["new"]["verdict"], changed["rule"]) == ("allow", "deny", "read docs")
    assert changed["agent"] == "spiffe://demo.local/agent/reader" and changed["action"] == "GET /api/docs/handbook"
    assert report["by_rule"] == {"read docs": {"allow -> deny": 1}}
    # The erased authorization header is read by no rule: that decision was compared, with a note.
    assert changed["masked_unread"] == ["/input/attributes/request/http/headers/authorization"]

    # The same from a gzip file on stdin, as a table.
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(gzip.compress(log.read_bytes()))))
    assert main(["policy", "replay", "--bundle", str(candidate), "--log", "-"]) == 1
    table = capsys.readouterr().out
    assert "read docs" in table and "allow -> deny" in table and "d-read" in table
    assert 'was: route "read docs" allows' in table and "now: " in table


def test_masked_inputs_are_listed_not_compared(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, report = replay_json(capsys, "--bundle", str(REPO / "rego"), "--log", str(log))
    assert code == 0, "a masked decision is no change"
    [masked] = report["masked"]
    assert masked["decision_id"] == "d-mcp"
    read_at = masked["masked_read"]["/input/mcp/arguments"]
    # Each location is a line of the shipped policy that reads what was erased (not a pinned number).
    lines = [policy_line(where) for where in read_at]
    assert lines and all("input.mcp" in line for line in lines), read_at
    assert report["counts"]["masked"] == 1 and report["compared"] == 2


def test_a_left_out_recent_window_is_compared_only_where_the_candidate_names_it_unread(
    tmp_path: Path, opa_bin: str, candidate: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The sidecar left input.session.recent out (the live policy named it unread). A candidate that
    names it too would have got the same input: compared. One that does not (it may read it) is
    listed as masked, with where it may read it."""
    lean = example("rest-write-under-task-jwt")
    assert isinstance(lean["session"], dict)
    lean["session"].pop("recent", None)
    path = tmp_path / "opa.log"
    path.write_text(json.dumps(event("d-lean", lean, decide(opa_bin, lean))) + "\n")
    code, report = replay_json(capsys, "--bundle", str(REPO / "rego"), "--log", str(path))
    assert (code, report["compared"], report["masked"]) == (0, 1, [])

    reads_it = tmp_path / "reads-recent"
    shutil.copytree(candidate, reads_it)
    unread = reads_it / "agent" / "authz" / "policy.rego"
    unread.write_text(unread.read_text().replace('unread_input := ["session.recent"]', "unread_input := []"))
    code, report = replay_json(capsys, "--bundle", str(reads_it), "--log", str(path))
    [masked] = report["masked"]
    assert report["compared"] == 0 and "/input/session/recent" in masked["masked_read"]


def test_a_recorded_result_that_was_masked_is_never_compared(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    read = example("rest-read-jwt")
    path = tmp_path / "opa.log"
    path.write_text(json.dumps(event("d-1", read, {"verdict": "allow"}, erased=["/result/reasons"])) + "\n")
    code, report = replay_json(capsys, "--bundle", str(REPO / "rego"), "--log", str(path))
    assert (code, report["compared"], len(report["masked"])) == (0, 0, 1)


def test_a_path_from_the_log_is_never_rego(tmp_path: Path, opa_bin: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A hostile path is quoted as data: it names no rule (undefined), it does not run."""
    read = example("rest-read-jwt")
    hostile = 'agent/authz/decision"] with time.now_ns as 0; x := data["agent'
    path = tmp_path / "opa.log"
    path.write_text(json.dumps(event("d-1", read, decide(opa_bin, read)) | {"path": hostile}) + "\n")
    code, report = replay_json(capsys, "--bundle", str(REPO / "rego"), "--log", str(path))
    assert code == 1 and report["changed"][0]["new"]["verdict"] == "undefined"
    assert decision_query('a"b/c', None) == 'x := data["a\\"b"]["c"]'


def test_explain_names_the_rules_and_lines(log: Path, candidate: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "explain", "--log", str(log), "d-read"]) == 0
    text = capsys.readouterr().out
    assert "recorded: allow" in text and "re-evaluated with" in text
    # Rules and body lines are printed as "file:line  text": each must be that line of the policy.
    shown = re.findall(r"(agent/authz/\w+\.rego):(\d+)  (.+)", text)
    assert any(file == "agent/authz/rest.rego" for file, _, _ in shown), "the route rule that decided"
    for file, number, line in shown:
        assert policy_line(f"{file}:{number}").strip() == line.strip(), (file, number)
    assert "_test.rego" not in text and "query:" not in text, "no tests, no OPA internals"

    assert main(["policy", "explain", "--log", str(log), "d-read", "--bundle", str(candidate), "--json"]) == 0
    explained = json.loads(capsys.readouterr().out)
    assert (explained["recorded"]["verdict"], explained["now"]["verdict"]) == ("allow", "deny")
    assert explained["same_as_recorded"] is False
    assert any(r["file"] == "agent/authz/checks.rego" and r["adds"] for r in explained["held"]), "the deny's reason"
    assert all(not r["file"].startswith("/") for r in explained["held"] + explained["not_held"])


def test_explain_honours_the_recorded_time(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "explain", "--log", str(log), "d-write", "--json"]) == 0
    explained = json.loads(capsys.readouterr().out)
    assert explained["now"]["verdict"] == "allow" and explained["decided_at"] == "2026-01-01T00:00:00.000000000Z"


def test_events_keep_what_replay_needs(log: Path) -> None:
    events = read_events(log).events
    assert [e.decision_id for e in events] == ["d-read", "d-write", "d-mcp"]
    assert events[0].at_ns == BUILT_AT_NS and events[0].clock == "nd_builtin_cache"
    assert events[0].labels["pod"] == "agent-1"
    assert Bundle(REPO / "rego").input_reads(), "the shipped policy reads its input"


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["replay", "--bundle", "rego", "--log", "nowhere.log"], "no such file"),
        (["replay", "--bundle", "no-such-bundle", "--log", "LOG"], "no such bundle"),
        (["replay", "--bundle", "rego", "--log", "EMPTY"], "holds no OPA decision-log event"),
        (["replay", "--bundle", "BROKEN", "--log", "LOG"], "could not load"),
        (["replay", "--bundle", "rego", "--log", "LOG", "--path", "other/path"], "no decision-log event at path"),
        (["explain", "--log", "LOG", "no-such-decision"], "no decision 'no-such-decision'"),
        (["replay", "--bundle", "rego", "--log", "CORRUPT"], "cannot read"),
    ],
)
def test_bad_input_exits_2(
    argv: list[str], error: str, log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "policy.rego").write_text("package broken\n\nx := \n")
    (tmp_path / "empty.log").write_text('{"msg": "not a decision"}\n')
    whole = gzip.compress(log.read_bytes() * 20)
    (tmp_path / "corrupt.log.gz").write_bytes(whole[: len(whole) // 2])
    names = {
        "LOG": str(log),
        "EMPTY": str(tmp_path / "empty.log"),
        "BROKEN": str(broken),
        "CORRUPT": str(tmp_path / "corrupt.log.gz"),
        "rego": str(REPO / "rego"),
    }
    assert main(["policy", *[names.get(a, a) for a in argv]]) == 2
    assert error in capsys.readouterr().err


def policy_line(where: str) -> str:
    """The text of ``file.rego:N`` in the shipped policy."""
    file, _, number = where.rpartition(":")
    return (REPO / "rego" / file).read_text().splitlines()[int(number) - 1]
