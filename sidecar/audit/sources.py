"""Read the logs an audit is built from into plain records, one reader per source.

- the sidecar's JSON log: ``authz.decision`` lines (one per decision) and ``authz.tasks`` lines
  (task opened, delegated, completed; approvals decided);
- OPA's decision-log events: console lines (``"msg": "Decision Log"``) or the JSON lines the
  decision-log receiver writes (the same event, as OPA shipped it);
- the upstream's JSON access lines (``"logger": "upstream.access"``), to find calls that reached
  the upstream without a decision.

Lines that are not JSON, or not of a kind a reader knows, are skipped and counted: logs are
shared with other output (Envoy, tracebacks), and an audit must not stop at one odd line.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Decision:
    """One check the sidecar answered (its ``authz.decision`` line)."""

    decision_id: str
    at: float
    seq: int  # position in the sidecar's log: the order the sidecar decided in
    agent: str | None
    task: str | None
    method: str
    path: str
    tool: str | None
    mcp_method: str | None
    verdict: str
    status: int
    stage: str
    reasons: list[str]
    approval: str | None


@dataclass
class TaskEvent:
    """An ``authz.tasks`` line: a task opened, delegated or completed, an approval decided, a refusal."""

    operation: str
    at: float
    seq: int
    agent: str | None
    task: str | None
    outcome: str | None
    fields: dict[str, Any]


@dataclass
class OpaEvent:
    """OPA's decision-log event for one query (already masked by OPA)."""

    decision_id: str
    at: float
    path: str
    result: Any
    input: dict[str, Any]
    revision: str | None


@dataclass
class UpstreamHit:
    """A request the upstream received."""

    at: float
    seq: int
    method: str
    path: str
    status: int | None
    decision_id: str | None
    spiffe_id: str | None
    credential: dict[str, Any] | None


@dataclass
class Sources:
    """Everything read, plus what was skipped and from where."""

    decisions: list[Decision] = field(default_factory=list)
    task_events: list[TaskEvent] = field(default_factory=list)
    opa_events: dict[str, OpaEvent] = field(default_factory=dict)
    upstream: list[UpstreamHit] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # path -> kind
    skipped_lines: int = 0

    @property
    def has_upstream(self) -> bool:
        return any(kind == "upstream" for kind in self.files.values())

    @property
    def has_opa(self) -> bool:
        return any(kind == "opa" for kind in self.files.values())


def read_logs(
    *,
    sidecar: Iterable[Path] = (),
    opa: Iterable[Path] = (),
    upstream: Iterable[Path] = (),
) -> Sources:
    sources = Sources()
    for path in sidecar:
        _read_sidecar(path, sources)
    for path in opa:
        _read_opa(path, sources)
    for path in upstream:
        _read_upstream(path, sources)
    return sources


def logs_dir_files(logs: Path) -> dict[str, list[Path]]:
    """The files of a local stack's logs directory (``./taskw up``: ``.dev/logs``), by kind."""
    found: dict[str, list[Path]] = {"sidecar": [], "opa": [], "upstream": []}
    for name, kind in (("sidecar.log", "sidecar"), ("opa.log", "opa"), ("decisions.jsonl", "opa")):
        if (logs / name).is_file():
            found[kind].append(logs / name)
    found["sidecar"] += sorted(p for p in logs.glob("replica*.log") if p.is_file())
    if (logs / "upstream.log").is_file():
        found["upstream"].append(logs / "upstream.log")
    return found


def _json_lines(path: Path, sources: Sources) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines):
            line = line.strip()
            if not line.startswith("{"):
                if line:
                    sources.skipped_lines += 1
                continue
            try:
                value = json.loads(line)
            except ValueError:
                sources.skipped_lines += 1
                continue
            if isinstance(value, dict):
                yield number, value
            else:
                sources.skipped_lines += 1


def _read_sidecar(path: Path, sources: Sources) -> None:
    sources.files[str(path)] = "sidecar"
    for _, line in _json_lines(path, sources):
        logger = line.get("logger")
        seq = len(sources.decisions) + len(sources.task_events)  # the order lines were read in
        if logger == "authz.decision" and isinstance(line.get("decision_id"), str):
            sources.decisions.append(
                Decision(
                    decision_id=line["decision_id"],
                    at=_time(line.get("time")),
                    seq=seq,
                    agent=_str(line.get("agent")),
                    task=_str(line.get("task")),
                    method=str(line.get("method", "")),
                    path=str(line.get("path", "")),
                    tool=_str(line.get("tool")),
                    mcp_method=_str(line.get("mcp_method")),
                    verdict=str(line.get("verdict", "error")),
                    status=_int(line.get("status")) or 0,
                    stage=str(line.get("stage", "")),
                    reasons=[str(r) for r in line.get("reasons") or []],
                    approval=_str(line.get("approval")),
                )
            )
        elif logger == "authz.tasks":
            message = str(line.get("message", ""))
            operation = str(line.get("operation") or message)
            known = {"time", "level", "logger", "message", "operation", "agent", "task", "outcome"}
            sources.task_events.append(
                TaskEvent(
                    operation="approval " + operation if message.startswith("approval") else operation,
                    at=_time(line.get("time")),
                    seq=seq,
                    agent=_str(line.get("agent")),
                    task=_str(line.get("task")),
                    outcome=_str(line.get("outcome")),
                    fields={k: v for k, v in line.items() if k not in known},
                )
            )
        else:
            sources.skipped_lines += 1


def _read_opa(path: Path, sources: Sources) -> None:
    sources.files[str(path)] = "opa"
    for _, line in _json_lines(path, sources):
        decision_id = line.get("decision_id")
        if not isinstance(decision_id, str) or "path" not in line or "input" not in line:
            sources.skipped_lines += 1
            continue
        bundles = line.get("bundles") or {}
        revisions = [b.get("revision") for b in bundles.values() if isinstance(b, dict) and b.get("revision")]
        event = OpaEvent(
            decision_id=decision_id,
            at=_time(line.get("timestamp") or line.get("time")),
            path=str(line.get("path")),
            result=line.get("result"),
            input=line["input"] if isinstance(line["input"], dict) else {},
            revision=str(revisions[0]) if revisions else None,
        )
        sources.opa_events.setdefault(decision_id, event)  # console and receiver hold the same event


def _read_upstream(path: Path, sources: Sources) -> None:
    sources.files[str(path)] = "upstream"
    for number, line in _json_lines(path, sources):
        if line.get("logger") != "upstream.access":
            sources.skipped_lines += 1
            continue
        credential = line.get("credential")
        sources.upstream.append(
            UpstreamHit(
                at=_time(line.get("time")),
                seq=number,
                method=str(line.get("method", "")),
                path=str(line.get("path", "")),
                status=_int(line.get("status")),
                decision_id=_str(line.get("decision_id")),
                spiffe_id=_str(line.get("spiffe_id")),
                credential=credential if isinstance(credential, dict) else None,
            )
        )


def _time(value: Any) -> float:
    """Epoch seconds from an epoch number, RFC 3339 (OPA, nanoseconds allowed) or the sidecar's
    ``asctime`` (local time, ``2026-01-02 03:04:05,678``); 0 when unknown."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str) or not value:
        return 0.0
    text = value.strip()
    try:
        if "T" in text:
            text = text.replace("Z", "+00:00")
            head, dot, rest = text.partition(".")
            if dot:  # Python parses at most microseconds: trim OPA's nanoseconds
                digits = "".join(c for c in rest if c.isdigit())
                zone = rest[len(digits) :]
                text = f"{head}.{digits[:6]}{zone}"
            return dt.datetime.fromisoformat(text).timestamp()
        return dt.datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()
    except ValueError:
        return 0.0


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
