"""JSON logging (python-json-logger) and the one-line-per-decision record.

The decision record carries ids, verdicts and reasons, never a token, a secret or a raw
credential: the path is logged without its query string, headers are not logged at all.
On top of that every line is scrubbed as it is written: fields named in ``log.redact`` (at any
depth) become ``"[redacted]"``, and anything shaped like a JWT or a bearer credential in any
string (messages, reasons, tracebacks) is replaced, whoever logged it.

Every line's ``time`` is RFC 3339 in UTC with microseconds (``2026-01-02T03:04:05.678901Z``), like
OPA's decision logs, so lines from different machines and zones order and join without guessing.
The decision line's fields are :class:`sidecar.events.DecisionEvent`'s, the one definition of it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from sidecar.events import DecisionEvent, log_event, now
from sidecar.logformat import REDACTED, rfc3339

__all__ = [
    "REDACTED",
    "DecisionRecord",
    "RedactingJsonFormatter",
    "json_formatter",
    "rfc3339",
    "scrub_text",
    "setup_logging",
]

# A compact JWS/JWT (header.payload[.signature]), or an opaque token after "Bearer" (20+
# token characters, at least one not a letter, so prose like "bearer credentials" survives).
_CREDENTIAL = re.compile(
    r"eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}(?:\.[A-Za-z0-9_-]*)?"
    r"|(?i:\bbearer\s+)(?=[A-Za-z0-9._~+/=-]*[0-9._~+/=-])[A-Za-z0-9._~+/=-]{20,}"
)
_MAX_DEPTH = 8


class RedactingJsonFormatter(JsonFormatter):
    """JSON lines with the configured fields and every credential-shaped string redacted."""

    def __init__(self, *args: Any, redact: Iterable[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.redact_fields = frozenset(name.lower() for name in redact)
        encoder: Callable[..., json.JSONEncoder] = self.json_encoder or json.JSONEncoder
        self._encoder = encoder(default=self.json_default, indent=self.json_indent, ensure_ascii=self.json_ensure_ascii)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return rfc3339(record.created)

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        # A flat line (every event's) is scrubbed once serialized, when its text holds something
        # credential-shaped (serialize_log_record): cheaper than visiting each value of every line.
        if not self.redact_fields and _flat(log_data):
            return log_data
        scrubbed: dict[str, Any] = self._scrub(log_data, 0)
        return scrubbed

    def serialize_log_record(self, log_data: dict[str, Any]) -> str:
        text = super().serialize_log_record(log_data)
        if not _may_hold_credential(text):
            return text
        # Every string keeps its exact scrubbing (the pattern on each value); the pass over the
        # text then also catches what no value walk sees: keys, objects written by json_default.
        text = super().serialize_log_record(self._scrub(log_data, 0))
        return _CREDENTIAL.sub(_replacement, text)

    def jsonify_log_record(self, log_data: dict[str, Any]) -> str:
        if self.json_serializer is not json.dumps:
            return super().jsonify_log_record(log_data)
        # json.dumps with these arguments, without building an encoder for every line.
        return self._encoder.encode(log_data)

    def _scrub(self, value: Any, depth: int) -> Any:
        if isinstance(value, str):
            return scrub_text(value)
        if value is None or isinstance(value, int | float):  # bool is an int: every line has many
            return value
        if depth >= _MAX_DEPTH:
            return REDACTED
        if isinstance(value, dict):
            if not self.redact_fields:  # the default: only strings can hold a credential
                return {key: self._scrub(item, depth + 1) for key, item in value.items()}
            return {
                key: REDACTED if str(key).lower() in self.redact_fields else self._scrub(item, depth + 1)
                for key, item in value.items()
            }
        if isinstance(value, list | tuple):
            return [self._scrub(item, depth + 1) for item in value]
        return value


def scrub_text(text: str) -> str:
    """``text`` with JWT- and bearer-shaped substrings replaced (cheap when there are none)."""
    if not _may_hold_credential(text):
        return text
    return _CREDENTIAL.sub(_replacement, text)


def _may_hold_credential(text: str) -> bool:
    """False only when the pattern cannot match ``text``, nor any string whose JSON ``text`` is
    (JSON writes these letters as they are, so a string's match shows in its line)."""
    # Must see every string the pattern can match: "bearer" in any case ("BeArEr").
    return "eyJ" in text or "bearer" in text.lower()


_SCALARS = frozenset({str, int, float, bool, type(None)})


def _flat(log_data: dict[str, Any]) -> bool:
    """Every value a scalar or a list of scalars: nothing for the depth limit to cut."""
    for value in log_data.values():
        kind = type(value)
        if kind is list or kind is tuple:
            if not all(type(item) in _SCALARS for item in value):
                return False
        elif kind not in _SCALARS:
            return False
    return True


def _replacement(match: re.Match[str]) -> str:
    found = match.group(0)
    if found.startswith("eyJ"):
        return "[redacted jwt]"
    scheme = found.split(None, 1)[0]
    return f"{scheme} {REDACTED}"


def json_formatter(redact: Iterable[str] = ()) -> RedactingJsonFormatter:
    """The formatter of every line the sidecar writes: ``time``, ``level``, ``logger``, ``message``,
    then the record's extra fields (an event's ``to_log()``)."""
    return RedactingJsonFormatter(
        "{asctime}{levelname}{name}{message}",
        style="{",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        redact=redact,
    )


def setup_logging(level: str, redact: Iterable[str] = ()) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(json_formatter(redact))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # Our lines carry no source file or line: skip the caller's frame lookup on every line (the
    # logging HOWTO, "Optimization").
    logging._srcfile = None


@dataclass
class DecisionRecord:
    """What one check decided and why, filled in as the check runs; logged as a :class:`DecisionEvent`."""

    decision_id: str = ""
    request_id: str = ""  # Envoy's x-request-id: correlates Envoy's own 503s with this record
    method: str = ""
    host: str = ""
    path: str = ""
    agent: str | None = None
    identity_source: str | None = None
    task: str | None = None
    approval: str | None = None
    mcp_method: str | None = None
    tool: str | None = None
    verdict: str = "error"
    status: int = 503
    stage: str = "start"
    reasons: list[str] = field(default_factory=list)
    latency_ms: float = 0.0
    opa_ms: float | None = None
    trace_id: str | None = None  # the W3C trace the check was part of (sidecar/tracing.py)

    def event(self, at: dt.datetime | None = None) -> DecisionEvent:
        """The record as it stands, as an immutable event at ``at`` (default: now)."""
        return DecisionEvent(
            time=at or now(),
            decision_id=self.decision_id,
            request_id=self.request_id,
            method=self.method,
            host=self.host,
            path=self.path,
            agent=self.agent,
            identity_source=self.identity_source,
            task=self.task,
            approval=self.approval,
            mcp_method=self.mcp_method,
            tool=self.tool,
            verdict=self.verdict,
            status=self.status,
            stage=self.stage,
            reasons=tuple(self.reasons),
            latency_ms=self.latency_ms,
            opa_ms=self.opa_ms,
            trace_id=self.trace_id,
        )

    def emit(self) -> None:
        log_event(self.event())
