"""Typed log events: one check decided, a task operation, an approval decided.

This module is the one definition of the sidecar's event lines. Each event is one JSON line:
:func:`log_event` writes exactly ``to_log()`` beside the logger's envelope (``level``, ``logger``,
``message``; ``time`` is the event's own), and ``from_log()`` reads it back from that dict or from
the whole line, raising :class:`MalformedEvent` on anything that is not a well-formed event. The
audit reads the sidecar's log only through ``from_log()``.

Every key is always written (``null`` when it does not apply), ``event`` names the type and
``time`` is RFC 3339 UTC with microseconds. A field named in ``log.redact`` arrives as
``"[redacted]"``: accepted where a string or a list of strings is expected, refused elsewhere.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Self, TypeVar, cast

from sidecar.errors import Kind, SidecarError
from sidecar.logformat import REDACTED, format_time, parse_time

DECISION_LOGGER = "authz.decision"
AUTHZEN_LOGGER = "authz.authzen"  # one line per AuthZEN evaluation
TASKS_LOGGER = "authz.tasks"  # task operations and approvals decided: the sidecar's own API

T = TypeVar("T")
Outcome = Literal["allow", "deny"]
ApprovalOperation = Literal["approve", "reject"]
_OUTCOMES: tuple[Outcome, ...] = ("allow", "deny")
_APPROVAL_OPERATIONS: tuple[ApprovalOperation, ...] = ("approve", "reject")


class MalformedEvent(SidecarError, ValueError):
    """A log line that is not a well-formed event of the type it was read as."""

    KIND = Kind.INVALID
    CODE = "malformed_event"


def now() -> dt.datetime:
    """The current time, aware and in UTC: what an event's ``time`` holds."""
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True, kw_only=True, slots=True)
class DecisionEvent:
    """What one check decided and why (logger ``authz.decision``, message ``decision``)."""

    LOGGER: ClassVar[str] = DECISION_LOGGER
    event: Literal["decision"] = field(default="decision", init=False)
    time: dt.datetime
    decision_id: str
    request_id: str  # Envoy's x-request-id: correlates Envoy's own 503s with this event
    method: str
    host: str
    path: str  # without its query string
    agent: str | None
    identity_source: str | None
    task: str | None
    approval: str | None
    mcp_method: str | None
    tool: str | None
    verdict: str  # allow, deny, step_up or error
    status: int
    stage: str  # the phase that decided
    reasons: tuple[str, ...]
    latency_ms: float
    opa_ms: float | None

    @property
    def message(self) -> str:
        return "decision"

    def to_log(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "time": format_time(self.time),
            "decision_id": self.decision_id,
            "request_id": self.request_id,
            "method": self.method,
            "host": self.host,
            "path": self.path,
            "agent": self.agent,
            "identity_source": self.identity_source,
            "task": self.task,
            "approval": self.approval,
            "mcp_method": self.mcp_method,
            "tool": self.tool,
            "verdict": self.verdict,
            "status": self.status,
            "stage": self.stage,
            "reasons": list(self.reasons),
            "latency_ms": self.latency_ms,
            "opa_ms": self.opa_ms,
        }

    @classmethod
    def from_log(cls, line: Mapping[str, Any]) -> Self:
        read = _Reader(line, "decision")
        return cls(
            time=read.time(),
            decision_id=read.text("decision_id"),
            request_id=read.text("request_id"),
            method=read.text("method"),
            host=read.text("host"),
            path=read.text("path"),
            agent=read.optional_text("agent"),
            identity_source=read.optional_text("identity_source"),
            task=read.optional_text("task"),
            approval=read.optional_text("approval"),
            mcp_method=read.optional_text("mcp_method"),
            tool=read.optional_text("tool"),
            verdict=read.text("verdict"),
            status=read.integer("status"),
            stage=read.text("stage"),
            reasons=read.texts("reasons"),
            latency_ms=read.number("latency_ms"),
            opa_ms=read.optional(read.number, "opa_ms"),
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class TaskEvent:
    """A task opened, delegated or completed, or a task API call refused (logger ``authz.tasks``).

    ``operation`` is ``open``, ``delegate`` or ``complete``; a refusal (``outcome`` ``deny``) names
    the call instead (``POST /v1/tasks``) and carries its ``reason``.
    """

    LOGGER: ClassVar[str] = TASKS_LOGGER
    event: Literal["task"] = field(default="task", init=False)
    time: dt.datetime
    operation: str
    agent: str  # the caller's SPIFFE ID
    task: str | None
    outcome: Outcome
    parent: str | None = None  # delegate: the task delegated from
    to: str | None = None  # delegate: the agent delegated to
    revoked: tuple[str, ...] = ()  # complete: every task that ended with it, itself included
    reason: str | None = None  # deny: why

    @property
    def message(self) -> str:
        return "task " + self.operation

    def to_log(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "time": format_time(self.time),
            "operation": self.operation,
            "agent": self.agent,
            "task": self.task,
            "outcome": self.outcome,
            "parent": self.parent,
            "to": self.to,
            "revoked": list(self.revoked),
            "reason": self.reason,
        }

    @classmethod
    def from_log(cls, line: Mapping[str, Any]) -> Self:
        read = _Reader(line, "task")
        return cls(
            time=read.time(),
            operation=read.text("operation"),
            agent=read.text("agent"),
            task=read.optional_text("task"),
            outcome=read.choice("outcome", _OUTCOMES),
            parent=read.optional_text("parent"),
            to=read.optional_text("to"),
            revoked=read.texts("revoked"),
            reason=read.optional_text("reason"),
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class ApprovalEvent:
    """A human or service approved or rejected a pending approval (logger ``authz.tasks``)."""

    LOGGER: ClassVar[str] = TASKS_LOGGER
    event: Literal["approval"] = field(default="approval", init=False)
    time: dt.datetime
    operation: ApprovalOperation
    approver: str
    approval: str
    agent: str  # the agent that asked for it
    task: str | None
    reason: str | None  # the approver's note

    @property
    def message(self) -> str:
        return "approval decided"

    def to_log(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "time": format_time(self.time),
            "operation": self.operation,
            "approver": self.approver,
            "approval": self.approval,
            "agent": self.agent,
            "task": self.task,
            "reason": self.reason,
        }

    @classmethod
    def from_log(cls, line: Mapping[str, Any]) -> Self:
        read = _Reader(line, "approval")
        return cls(
            time=read.time(),
            operation=read.choice("operation", _APPROVAL_OPERATIONS),
            approver=read.text("approver"),
            approval=read.text("approval"),
            agent=read.text("agent"),
            task=read.optional_text("task"),
            reason=read.optional_text("reason"),
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class EvaluationEvent:
    """One AuthZEN evaluation the PDP answered (logger ``authz.authzen``): the decision log's record.

    ``subject`` and ``resource`` are ``{type, id}`` only and ``action`` its name: properties and
    context are whatever the PEP sent (personal data, tokens), so only OPA's masked log holds them.
    ``decision`` is None when no decision could be made (``error`` says why; the PEP got false)."""

    LOGGER: ClassVar[str] = AUTHZEN_LOGGER
    event: Literal["authzen"] = field(default="authzen", init=False)
    time: dt.datetime
    decision_id: str
    caller: str  # the PEP whose JWT-SVID was verified
    endpoint: str  # evaluation, evaluations or search/action
    request_id: str | None
    batch: str | None  # the batch's first decision id, for the items of one evaluations call
    index: int | None  # the item's place in its batch
    subject: dict[str, str]
    action: str | None
    resource: dict[str, str]
    decision: bool | None
    verdict: str  # allow, deny or error
    reasons: tuple[str, ...]
    error: str | None
    opa_ms: float | None

    @property
    def message(self) -> str:
        return "authzen evaluation"

    def to_log(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "time": format_time(self.time),
            "decision_id": self.decision_id,
            "caller": self.caller,
            "endpoint": self.endpoint,
            "request_id": self.request_id,
            "batch": self.batch,
            "index": self.index,
            "subject": dict(self.subject),
            "action": self.action,
            "resource": dict(self.resource),
            "decision": self.decision,
            "verdict": self.verdict,
            "reasons": list(self.reasons),
            "error": self.error,
            "opa_ms": self.opa_ms,
        }

    @classmethod
    def from_log(cls, line: Mapping[str, Any]) -> Self:
        read = _Reader(line, "authzen")
        return cls(
            time=read.time(),
            decision_id=read.text("decision_id"),
            caller=read.text("caller"),
            endpoint=read.text("endpoint"),
            request_id=read.optional_text("request_id"),
            batch=read.optional_text("batch"),
            index=read.optional(read.integer, "index"),
            subject=read.entity("subject"),
            action=read.optional_text("action"),
            resource=read.entity("resource"),
            decision=read.optional(read.boolean, "decision"),
            verdict=read.text("verdict"),
            reasons=read.texts("reasons"),
            error=read.optional_text("error"),
            opa_ms=read.optional(read.number, "opa_ms"),
        )


Event = DecisionEvent | TaskEvent | ApprovalEvent | EvaluationEvent
EVENT_TYPES: dict[str, type[DecisionEvent] | type[TaskEvent] | type[ApprovalEvent] | type[EvaluationEvent]] = {
    "decision": DecisionEvent,
    "task": TaskEvent,
    "approval": ApprovalEvent,
    "authzen": EvaluationEvent,
}


def log_event(event: Event) -> None:
    """Write ``event`` as one line of its logger: the envelope plus exactly ``event.to_log()``."""
    # The extra "time" replaces the formatter's own (extras are merged after the envelope), so the
    # line carries the event's time; the golden-line test pins that.
    logging.getLogger(event.LOGGER).info(event.message, extra=event.to_log())


def from_log(line: Mapping[str, Any]) -> Event | None:
    """The event ``line`` holds, by its ``event`` key; None for a line that is no event of ours.
    Raises :class:`MalformedEvent` for a line that names an event type but is not one."""
    kind = line.get("event")
    event_type = EVENT_TYPES.get(kind) if isinstance(kind, str) else None
    return event_type.from_log(line) if event_type is not None else None


class _Reader:
    """Typed access to one line's fields; every failure is a :class:`MalformedEvent` naming the field."""

    def __init__(self, line: Mapping[str, Any], event: str) -> None:
        if not isinstance(line, Mapping):
            raise MalformedEvent(f"a {event} event must be a JSON object, not {type(line).__name__}")
        if line.get("event") != event:
            raise MalformedEvent(f"not a {event} event: event is {line.get('event')!r}")
        self._line = line
        self._event = event

    def _get(self, key: str) -> Any:
        if key not in self._line:
            raise MalformedEvent(f"{self._event} event without {key!r}")
        return self._line[key]

    def _wrong(self, key: str, expected: str) -> MalformedEvent:
        return MalformedEvent(f"{self._event} event: {key!r} must be {expected}, not {self._line[key]!r}")

    def optional(self, read: Callable[[str], T], key: str) -> T | None:
        return None if self._get(key) is None else read(key)

    def text(self, key: str) -> str:
        value = self._get(key)
        if not isinstance(value, str):
            raise self._wrong(key, "a string")
        return value

    def optional_text(self, key: str) -> str | None:
        return self.optional(self.text, key)

    def texts(self, key: str) -> tuple[str, ...]:
        value = self._get(key)
        if value == REDACTED:  # the whole list was redacted: keep that it was, not that it was empty
            return (REDACTED,)
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise self._wrong(key, "a list of strings")
        return tuple(value)

    def integer(self, key: str) -> int:
        value = self._get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self._wrong(key, "an integer")
        return value

    def boolean(self, key: str) -> bool:
        value = self._get(key)
        if not isinstance(value, bool):
            raise self._wrong(key, "a boolean")
        return value

    def entity(self, key: str) -> dict[str, str]:
        """An AuthZEN subject or resource as logged: ``{type, id}``, both strings."""
        value = self._get(key)
        if not isinstance(value, Mapping) or set(value) != {"type", "id"}:
            raise self._wrong(key, "an object with type and id")
        if not all(isinstance(value[k], str) for k in ("type", "id")):
            raise self._wrong(key, "an object with string type and id")
        return {"type": value["type"], "id": value["id"]}

    def number(self, key: str) -> float:
        value = self._get(key)
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise self._wrong(key, "a number")
        return float(value)

    def choice(self, key: str, allowed: tuple[T, ...]) -> T:
        value = self._get(key)
        if value not in allowed:
            raise self._wrong(key, "one of " + ", ".join(map(repr, allowed)))
        return cast(T, value)

    def time(self) -> dt.datetime:
        value = self.text("time")
        try:
            return parse_time(value)
        except ValueError:
            raise self._wrong("time", "an RFC 3339 timestamp with a zone") from None
