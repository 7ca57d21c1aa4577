"""The typed log events: their exact line format, the round trip through JSON, refusal of malformed
lines, and the audit reading what the logger really wrote."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from sidecar import events
from sidecar.audit import read_logs, reconstruct
from sidecar.cli import main
from sidecar.events import (
    ApprovalEvent,
    DecisionEvent,
    EvaluationEvent,
    Event,
    MalformedEvent,
    TaskEvent,
    log_event,
)
from sidecar.logs import REDACTED, DecisionRecord, json_formatter

AT = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)
WRITER = "spiffe://demo.local/agent/writer"
ASSISTANT = "spiffe://demo.local/agent/assistant"


def _record(**overrides: Any) -> DecisionRecord:
    record = DecisionRecord(
        decision_id="d-1",
        request_id="r-1",
        method="POST",
        host="demo.local",
        path="/mcp",
        agent=WRITER,
        identity_source="xfcc",
        task="t-1",
        approval="a-1",
        mcp_method="tools/call",
        tool="delete_record",
        verdict="allow",
        status=200,
        stage="policy",
        reasons=["approved by a human", "within the task"],
        latency_ms=2.125,
        opa_ms=0.75,
    )
    for name, value in overrides.items():
        setattr(record, name, value)
    return record


DECISION = _record().event(AT)
EARLY_DECISION = _record(
    agent=None, identity_source=None, task=None, approval=None, mcp_method=None, tool=None, opa_ms=None, reasons=[]
).event(AT)
OPENED = TaskEvent(time=AT, operation="open", agent=WRITER, task="t-1", outcome="allow")
DELEGATED = TaskEvent(
    time=AT, operation="delegate", agent=WRITER, task="t-2", outcome="allow", parent="t-1", to=ASSISTANT
)
COMPLETED = TaskEvent(time=AT, operation="complete", agent=WRITER, task="t-1", outcome="allow", revoked=("t-1", "t-2"))
REFUSED = TaskEvent(
    time=AT, operation="POST /v1/tasks", agent=WRITER, task=None, outcome="deny", reason="too many open tasks"
)
APPROVED = ApprovalEvent(
    time=AT,
    operation="approve",
    approver="oidc:https://idp#alice",
    approval="a-1",
    agent=ASSISTANT,
    task="t-2",
    reason="duplicate record",
)
REJECTED = ApprovalEvent(
    time=AT, operation="reject", approver="oidc:https://idp#alice", approval="a-2", agent=WRITER, task=None, reason=None
)
PEP = "spiffe://demo.local/pep/gateway"
EVALUATED = EvaluationEvent(
    time=AT,
    decision_id="d-9",
    caller=PEP,
    endpoint="evaluations",
    request_id="r-9",
    batch="d-8",
    index=1,
    subject={"type": "agent", "id": WRITER},
    action="POST",
    resource={"type": "route", "id": "/api/tickets"},
    decision=False,
    verdict="deny",
    reasons=("writes need a task",),
    error=None,
    opa_ms=0.5,
)
UNDECIDED = EvaluationEvent(
    time=AT,
    decision_id="e-1",
    caller=PEP,
    endpoint="evaluation",
    request_id=None,
    batch=None,
    index=None,
    subject={"type": "agent", "id": WRITER},
    action=None,
    resource={"type": "route", "id": "/"},
    decision=None,
    verdict="error",
    reasons=(),
    error="policy engine timed out",
    opa_ms=None,
)
ALL: dict[str, Event] = {
    "authzen": EVALUATED,
    "authzen-undecided": UNDECIDED,
    "decision": DECISION,
    "decision-before-identity": EARLY_DECISION,
    "task-open": OPENED,
    "task-delegate": DELEGATED,
    "task-complete": COMPLETED,
    "task-refused": REFUSED,
    "approval-approve": APPROVED,
    "approval-reject": REJECTED,
}


@contextmanager
def _captured(redact: tuple[str, ...] = ()) -> Iterator[io.StringIO]:
    """What the sidecar's loggers write, through the formatter ``setup_logging`` installs."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(json_formatter(redact))
    names = (events.DECISION_LOGGER, events.TASKS_LOGGER, events.AUTHZEN_LOGGER)
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)


def _line(event: Event) -> str:
    with _captured() as stream:
        log_event(event)
    return stream.getvalue()


@pytest.mark.parametrize("name", ALL)
def test_round_trip_through_a_json_line(name: str) -> None:
    event = ALL[name]
    line = json.dumps(event.to_log())
    back = type(event).from_log(json.loads(line))
    assert back == event
    assert events.from_log(json.loads(line)) == event, "dispatched by its event key"
    assert events.from_log(json.loads(_line(event))) == event, "and from the whole line the logger wrote"


# The format is a contract with log pipelines and with audits of old logs: a change here is a
# change for every user, so these lines change only on purpose.
GOLDEN: dict[str, tuple[Event, str]] = {
    "decision": (
        DECISION,
        '{"time": "2026-01-02T03:04:05.678901Z", "level": "INFO", "logger": "authz.decision", '
        '"message": "decision", "event": "decision", "decision_id": "d-1", "request_id": "r-1", '
        '"method": "POST", "host": "demo.local", "path": "/mcp", "agent": "spiffe://demo.local/agent/writer", '
        '"identity_source": "xfcc", "task": "t-1", "approval": "a-1", "mcp_method": "tools/call", '
        '"tool": "delete_record", "verdict": "allow", "status": 200, "stage": "policy", '
        '"reasons": ["approved by a human", "within the task"], "latency_ms": 2.125, "opa_ms": 0.75}',
    ),
    "task": (
        DELEGATED,
        '{"time": "2026-01-02T03:04:05.678901Z", "level": "INFO", "logger": "authz.tasks", '
        '"message": "task delegate", "event": "task", "operation": "delegate", '
        '"agent": "spiffe://demo.local/agent/writer", "task": "t-2", "outcome": "allow", "parent": "t-1", '
        '"to": "spiffe://demo.local/agent/assistant", "revoked": [], "reason": null}',
    ),
    "authzen": (
        EVALUATED,
        '{"time": "2026-01-02T03:04:05.678901Z", "level": "INFO", "logger": "authz.authzen", '
        '"message": "authzen evaluation", "event": "authzen", "decision_id": "d-9", '
        '"caller": "spiffe://demo.local/pep/gateway", "endpoint": "evaluations", "request_id": "r-9", '
        '"batch": "d-8", "index": 1, "subject": {"type": "agent", "id": "spiffe://demo.local/agent/writer"}, '
        '"action": "POST", "resource": {"type": "route", "id": "/api/tickets"}, "decision": false, '
        '"verdict": "deny", "reasons": ["writes need a task"], "error": null, "opa_ms": 0.5}',
    ),
    "approval": (
        APPROVED,
        '{"time": "2026-01-02T03:04:05.678901Z", "level": "INFO", "logger": "authz.tasks", '
        '"message": "approval decided", "event": "approval", "operation": "approve", '
        '"approver": "oidc:https://idp#alice", "approval": "a-1", "agent": "spiffe://demo.local/agent/assistant", '
        '"task": "t-2", "reason": "duplicate record"}',
    ),
}


@pytest.mark.parametrize("kind", GOLDEN)
def test_golden_line(kind: str) -> None:
    event, golden = GOLDEN[kind]
    assert _line(event) == golden + "\n"


def test_the_decision_record_emits_its_event() -> None:
    with _captured() as stream:
        _record().emit()
    line = json.loads(stream.getvalue())
    emitted = DecisionEvent.from_log(line)
    assert emitted == _record().event(emitted.time)
    assert abs(emitted.time.timestamp() - dt.datetime.now(dt.UTC).timestamp()) < 5, "stamped when emitted"


def test_times_are_rfc3339_utc() -> None:
    paris = dt.timezone(dt.timedelta(hours=1))
    event = TaskEvent(time=AT.astimezone(paris), operation="open", agent=WRITER, task="t-1", outcome="allow")
    assert event.to_log()["time"] == "2026-01-02T03:04:05.678901Z"
    offset = OPENED.to_log() | {"time": "2026-01-02T04:04:05.678901+01:00"}
    assert TaskEvent.from_log(offset).time == AT and TaskEvent.from_log(offset).time.tzinfo == dt.UTC
    with pytest.raises(ValueError, match="without a zone"):
        TaskEvent(time=AT.replace(tzinfo=None), operation="open", agent=WRITER, task=None, outcome="allow").to_log()


@pytest.mark.parametrize("event", [DECISION, DELEGATED, APPROVED, EVALUATED], ids=lambda e: e.event)
def test_every_field_is_required(event: Event) -> None:
    line = event.to_log()
    for key in line:
        with pytest.raises(MalformedEvent, match=repr(key) if key != "event" else "not a"):
            type(event).from_log({k: v for k, v in line.items() if k != key})


@pytest.mark.parametrize(
    ("event", "key", "value"),
    [
        (DECISION, "event", "task"),
        (DECISION, "time", "2026-01-02 03:04:05,678"),  # the old local time: never guessed
        (DECISION, "time", "2026-01-02T03:04:05.678901"),  # no zone
        (DECISION, "time", 1767323045.678901),
        (DECISION, "decision_id", None),
        (DECISION, "agent", 7),
        (DECISION, "status", "200"),
        (DECISION, "status", True),
        (DECISION, "status", REDACTED),  # only strings may be redacted
        (DECISION, "latency_ms", None),
        (DECISION, "opa_ms", "fast"),
        (DECISION, "reasons", "denied"),
        (DECISION, "reasons", ["ok", 3]),
        (DELEGATED, "outcome", "maybe"),
        (DELEGATED, "revoked", None),
        (DELEGATED, "agent", None),
        (APPROVED, "operation", "approved"),
        (APPROVED, "approval", ["a-1"]),
        (EVALUATED, "decision", "false"),
        (EVALUATED, "index", 1.5),
        (EVALUATED, "subject", {"type": "agent"}),
        (EVALUATED, "subject", {"type": "agent", "id": "x", "properties": {"email": "a@b"}}),
        (EVALUATED, "resource", {"type": "route", "id": 7}),
        (EVALUATED, "caller", None),
    ],
)
def test_malformed_fields_are_refused(event: Event, key: str, value: Any) -> None:
    with pytest.raises(MalformedEvent):
        type(event).from_log(event.to_log() | {key: value})


def test_not_an_object_is_refused() -> None:
    with pytest.raises(MalformedEvent, match="JSON object"):
        DecisionEvent.from_log(["decision"])  # type: ignore[arg-type]


def test_lines_that_are_no_event_are_not_read_as_one() -> None:
    assert events.from_log({"logger": "authz.decision", "message": "decision", "decision_id": "d-1"}) is None
    assert events.from_log({"logger": "sidecar.webhook", "event": "approval.pending"}) is None
    with pytest.raises(MalformedEvent):
        events.from_log({"event": "decision", "decision_id": "d-1"})


def test_redacted_strings_are_still_an_event() -> None:
    with _captured(redact=("reasons", "reason", "approver")) as stream:
        log_event(DECISION)
        log_event(APPROVED)
    decision, approval = (events.from_log(json.loads(line)) for line in stream.getvalue().splitlines())
    assert isinstance(decision, DecisionEvent) and decision.reasons == (REDACTED,)
    assert isinstance(approval, ApprovalEvent) and (approval.reason, approval.approver) == (REDACTED, REDACTED)


def test_the_audit_reads_what_the_logger_wrote(tmp_path: Path) -> None:
    call = _record(decision_id="d-2", agent=ASSISTANT, task="t-2", approval="a-1", verdict="allow", status=200)
    with _captured() as stream:
        for event in (OPENED, DELEGATED, APPROVED, REFUSED):
            log_event(event)
        log_event(call.event(AT))  # one time for all: the order read breaks the ties
        log_event(COMPLETED)
    log = tmp_path / "sidecar.log"
    log.write_text(stream.getvalue())

    sources = read_logs(sidecar=[log])
    assert sources.skipped_lines == 0
    [decision] = sources.decisions
    assert (decision.decision_id, decision.agent, decision.task, decision.approval) == ("d-2", ASSISTANT, "t-2", "a-1")
    assert (decision.tool, decision.reasons, decision.status) == ("delete_record", list(call.reasons), 200)
    assert [(e.operation, e.outcome) for e in sources.task_events] == [
        ("open", "allow"),
        ("delegate", "allow"),
        ("approval approve", None),
        ("POST /v1/tasks", "deny"),
        ("complete", "allow"),
    ]
    assert sources.task_events[0].at == AT.timestamp()

    [chain] = reconstruct(sources, task="t-1").chains
    timeline = [(entry["kind"], entry["summary"]) for entry in chain.timeline()]
    assert timeline[:3] == [
        ("task_opened", f"{WRITER} opened task t-1"),
        ("delegated", f"{WRITER} delegated task t-1 to {ASSISTANT}"),
        ("approval_approved", "oidc:https://idp#alice approved approval a-1"),
    ]
    assert timeline[-1] == ("task_completed", f"{WRITER} completed task t-1, revoking t-2")
    assert {t.id: t.end for t in chain.tasks} == {"t-1": "completed", "t-2": "revoked with t-1"}
    assert chain.approvals()[0]["decision"]["approver"] == "oidc:https://idp#alice"


def test_the_audit_warns_of_event_lines_it_could_not_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = DECISION.to_log() | {"status": REDACTED}  # log.redact named a number
    before_events = {k: v for k, v in DECISION.to_log().items() if k != "event"} | {"logger": "authz.decision"}
    log = tmp_path / "sidecar.log"
    lines = [DECISION.to_log(), broken, before_events, {"logger": "sidecar.webhook", "event": "approval.pending"}]
    log.write_text("".join(json.dumps(line) + "\n" for line in lines) + "Traceback (not JSON)\n")

    sources = read_logs(sidecar=[log])
    assert (len(sources.decisions), sources.skipped_lines, sources.unreadable_events) == (1, 4, 2)
    assert main(["audit", "--sidecar-log", str(log), "--format", "json"]) == 0
    err = capsys.readouterr().err
    assert "warning: 2 sidecar event line(s) could not be read" in err and "'status' must be an integer" in err
