"""OPA's decision-log events, as OPA wrote them: console lines (``"msg": "Decision Log"``, e.g.
``.dev/logs/opa.log``) or the JSON lines a decision-log receiver wrote; plain, gzip or stdin.

An event keeps what replaying it needs: the query path, the input and result as logged (already
masked), which fields OPA erased or replaced (``erased``, ``masked``), and the time it was decided
(``nd_builtin_cache`` ``time.now_ns`` when OPA recorded it, else the event's ``timestamp``).
"""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sidecar.audit.sources import json_object, open_lines
from sidecar.errors import Kind, SidecarError
from sidecar.unread import left_out_of


class LogError(SidecarError, ValueError):
    """The log cannot be read, or holds no decision-log event."""

    KIND = Kind.INVALID
    CODE = "log"


@dataclass(frozen=True)
class Event:
    decision_id: str
    path: str
    input: Any  # None when the event has no input (see has_input)
    has_input: bool
    result: Any  # the recorded decision; absent (has_result False) when it was undefined
    has_result: bool
    masked: tuple[str, ...]  # JSON pointers OPA erased or replaced before logging
    at_ns: int | None  # when it was decided, in Unix nanoseconds
    clock: str  # where at_ns comes from: "nd_builtin_cache", "timestamp" or "none"
    other_nondeterministic: tuple[str, ...] = ()  # built-ins besides time.now_ns OPA recorded
    labels: dict[str, str] = field(default_factory=dict)
    revision: str | None = None
    left_out: tuple[str, ...] = ()  # input fields the sidecar left out (decision ``unread_input``)

    @property
    def agent(self) -> str | None:
        agent = self.input.get("agent") if isinstance(self.input, dict) else None
        spiffe_id = agent.get("spiffe_id") if isinstance(agent, dict) else None
        return spiffe_id if isinstance(spiffe_id, str) else None

    @property
    def action(self) -> str:
        """``GET /api/docs/x``, ``POST /mcp tool send_email``, or the task API's operation."""
        doc = self.input if isinstance(self.input, dict) else {}
        action, mcp = doc.get("action"), doc.get("mcp")
        if isinstance(action, dict):
            what = f"{action.get('method', '?')} {action.get('path', '?')}"
            if isinstance(mcp, dict) and isinstance(mcp.get("name"), str):
                what += f" tool {mcp['name']}"
            return what
        if isinstance(doc.get("operation"), str):
            return f"operation {doc['operation']}"
        return "-"


@dataclass
class EventLog:
    events: list[Event]
    skipped_lines: int  # not a decision-log event (other OPA output, other logs)
    duplicates: int  # the same decision id again (console and receiver hold the same event)


def read_events(path: Path) -> EventLog:
    """Every decision-log event in ``path`` (``-``: stdin), in order, once per decision id."""
    events: list[Event] = []
    seen: set[str] = set()
    skipped = duplicates = 0
    try:
        for line in open_lines(path):
            value = json_object(line)
            if value is None or not _is_event(value):
                skipped += bool(line.strip())
                continue
            if value["decision_id"] in seen:
                duplicates += 1
                continue
            seen.add(value["decision_id"])
            events.append(_event(value))
    except (OSError, EOFError) as exc:  # unreadable, or a truncated or corrupt gzip file
        raise LogError(f"cannot read {path}: {exc}") from exc
    return EventLog(events, skipped, duplicates)


def _is_event(value: dict[str, Any]) -> bool:
    # The sidecar's own lines have a decision id and a path too, and a "logger".
    return (
        isinstance(value.get("decision_id"), str)
        and isinstance(value.get("path"), str)
        and "logger" not in value
        and ("input" in value or "result" in value or "erased" in value)
    )


def _event(value: dict[str, Any]) -> Event:
    masked = [p for key in ("erased", "masked") for p in value.get(key) or [] if isinstance(p, str)]
    cache = value.get("nd_builtin_cache")
    cache = cache if isinstance(cache, dict) else {}
    at_ns, clock = _recorded_now(cache), "nd_builtin_cache"
    if at_ns is None:
        at_ns, clock = _timestamp_ns(value.get("timestamp")), "timestamp"
    if at_ns is None:
        clock = "none"
    bundles = value.get("bundles")
    revisions = [b.get("revision") for b in (bundles or {}).values() if isinstance(b, dict) and b.get("revision")]
    labels = value.get("labels")
    return Event(
        decision_id=value["decision_id"],
        path=value["path"],
        input=value.get("input"),
        has_input="input" in value,
        result=value.get("result"),
        has_result="result" in value,
        masked=tuple(masked),
        left_out=left_out_of(value.get("input")),  # once the live policy named them unread
        at_ns=at_ns,
        clock=clock,
        other_nondeterministic=tuple(sorted(str(name) for name in cache if name != "time.now_ns")),
        labels={str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {},
        revision=str(revisions[0]) if isinstance(bundles, dict) and revisions else None,
    )


def _recorded_now(cache: dict[str, Any]) -> int | None:
    """``time.now_ns()`` as OPA recorded it for this decision (``nd_builtin_cache: true``)."""
    calls = cache.get("time.now_ns")
    values = list(calls.values()) if isinstance(calls, dict) else []
    return values[0] if values and isinstance(values[0], int) and not isinstance(values[0], bool) else None


def _timestamp_ns(value: Any) -> int | None:
    """Unix nanoseconds of OPA's RFC 3339 ``timestamp`` (nanoseconds kept exactly)."""
    if not isinstance(value, str) or len(value) < 20:
        return None
    text = value.strip()
    head, dot, rest = text.partition(".")
    digits = "".join(itertools.takewhile(str.isdigit, rest)) if dot else ""
    zone = rest[len(digits) :] if dot else head[19:]
    head = head[:19]
    try:
        whole = dt.datetime.fromisoformat(head + (zone.replace("Z", "+00:00").replace("z", "+00:00") or "?"))
    except ValueError:
        return None
    if whole.tzinfo is None:
        return None
    return int(whole.timestamp()) * 1_000_000_000 + int((digits + "000000000")[:9])


def pointer_segments(pointer: str) -> list[str]:
    """A JSON pointer's segments (``~1`` is ``/``, ``~0`` is ``~``)."""
    return [s.replace("~1", "/").replace("~0", "~") for s in pointer.split("/")[1:]]


def rfc3339_ns(at_ns: int) -> str:
    seconds, nanos = divmod(at_ns, 1_000_000_000)
    stamp = dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{nanos:09d}Z"
