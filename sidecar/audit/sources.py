"""Read the logs an audit is built from into plain records, one reader per source.

- the sidecar's JSON log: its typed events (:mod:`sidecar.events`, read only through their
  ``from_log``): one ``decision`` per check, ``task`` (opened, delegated, completed, refused) and
  ``approval`` (approved or rejected); and the OPA decision ids of its other queries
  (``authz.opa``, ``authz.shadow`` lines); ``authzen``, one per AuthZEN evaluation;
- OPA's decision-log events: console lines (``"msg": "Decision Log"``) or the JSON lines the
  decision-log receiver writes (the same event, as OPA shipped it);
- the upstream's JSON access lines (``"logger": "upstream.access"``), to find calls that reached
  the upstream without a decision.

Lines that are not JSON, or not of a kind a reader knows, are skipped and counted: logs are
shared with other output (Envoy, tracebacks), and an audit must not stop at one odd line. So is an
event line that does not parse (a malformed field, or a number ``log.redact`` blanked) and a line
of a sidecar from before typed events (no ``event`` key): never guessed at, but counted apart
(``unreadable_events``), as the audit is incomplete without them.

Any file may be ``-`` (standard input) or gzip-compressed, and may be an export of a cluster's
logs: a ``--log`` file mixes every kind (each line is recognised by its content), a line may carry
a prefix before its JSON (``kubectl logs --timestamps`` or ``--prefix``), or be wrapped the way a
container runtime stores it (``{"log": "<the line>", "stream": "stdout", ...}``).
"""

from __future__ import annotations

import gzip
import io
import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sidecar import events
from sidecar.logformat import parse_rfc3339


@dataclass
class Decision:
    """One check the sidecar answered (its :class:`sidecar.events.DecisionEvent`)."""

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
    """A task opened, delegated or completed, a refusal (:class:`sidecar.events.TaskEvent`), or an
    approval decided (:class:`sidecar.events.ApprovalEvent`: operation ``approval approve|reject``)."""

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
    labels: dict[str, str] = field(default_factory=dict)  # which OPA: id, version, pod, namespace, ...


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
class AuthzenEvaluation:
    """One AuthZEN evaluation the sidecar answered (its ``authz.authzen`` line)."""

    decision_id: str
    at: float
    caller: str | None  # the PEP that asked
    endpoint: str
    request_id: str | None
    batch: str | None
    subject: str  # type:id
    action: str | None
    resource: str  # type:id
    verdict: str
    reasons: list[str]
    error: str | None


@dataclass
class Sources:
    """Everything read, plus what was skipped and from where."""

    decisions: list[Decision] = field(default_factory=list)
    task_events: list[TaskEvent] = field(default_factory=list)
    opa_events: dict[str, OpaEvent] = field(default_factory=dict)
    upstream: list[UpstreamHit] = field(default_factory=list)
    authzen: list[AuthzenEvaluation] = field(default_factory=list)
    # OPA decision ids the sidecar logged beside its decisions: its other queries (``authz.opa``
    # lines: the task and approver APIs) and its shadow evaluations (``authz.shadow`` lines).
    opa_queries: dict[str, str] = field(default_factory=dict)  # OPA decision id -> path
    shadows: dict[str, dict[str, Any]] = field(default_factory=dict)  # the live decision id -> its shadow
    files: dict[str, str] = field(default_factory=dict)  # path -> kind
    kinds_read: set[str] = field(default_factory=set)  # sidecar, opa, upstream: what was actually read
    skipped_lines: int = 0
    # Sidecar event lines that could not be read (also in skipped_lines): an audit missing them
    # is incomplete, so the command says so rather than count them as unrelated.
    unreadable_events: int = 0
    first_unreadable: str | None = None  # why the first one was refused

    def unreadable(self, why: str) -> None:
        self.unreadable_events += 1
        self.first_unreadable = self.first_unreadable or why

    @property
    def has_upstream(self) -> bool:
        return "upstream" in self.kinds_read or any(kind == "upstream" for kind in self.files.values())

    @property
    def has_opa(self) -> bool:
        return "opa" in self.kinds_read or any(kind == "opa" for kind in self.files.values())

    @property
    def has_sidecar(self) -> bool:
        """Whether the sidecar's decisions (checks or AuthZEN evaluations) were read: only then can an
        OPA event lack its sidecar record (a log without decision lines, e.g. ``log.decisions: false``,
        accounts for nothing)."""
        return bool(self.decisions or self.authzen)

    def within(self, since: float | None, until: float | None) -> Sources:
        """The records from ``since`` (inclusive) to ``until`` (exclusive), epoch seconds; OPA's events
        and the sidecar's query lines stay whole, as they are looked up by decision id."""

        def keep(at: float) -> bool:
            return (since is None or at >= since) and (until is None or at < until)

        return Sources(
            decisions=[d for d in self.decisions if keep(d.at)],
            task_events=[e for e in self.task_events if keep(e.at)],
            opa_events=self.opa_events,
            upstream=[u for u in self.upstream if keep(u.at)],
            authzen=[a for a in self.authzen if keep(a.at)],
            opa_queries=self.opa_queries,
            shadows=self.shadows,
            files=self.files,
            kinds_read=self.kinds_read,
            skipped_lines=self.skipped_lines,
            unreadable_events=self.unreadable_events,
            first_unreadable=self.first_unreadable,
        )


STDIN = Path("-")  # a file argument of "-" reads standard input


def read_logs(
    *,
    sidecar: Iterable[Path] = (),
    opa: Iterable[Path] = (),
    upstream: Iterable[Path] = (),
    mixed: Iterable[Path] = (),
) -> Sources:
    """``mixed``: files that may hold every kind of line (a cluster's log export, several files
    concatenated); each line is read as what it is."""
    sources = Sources()
    for path in sidecar:
        _read(path, "sidecar", sources, (_take_sidecar,))
    for path in opa:
        _read(path, "opa", sources, (_take_opa,))
    for path in upstream:
        _read(path, "upstream", sources, (_take_upstream,))
    for path in mixed:
        _read(path, "mixed", sources, (_take_sidecar, _take_opa, _take_upstream))
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


def open_lines(path: Path) -> Iterator[str]:
    """The lines of ``path``: ``-`` is standard input; gzip is recognised by its magic bytes."""
    if path == STDIN:
        stdin: Any = sys.stdin.buffer
        yield from _maybe_gzip(stdin if isinstance(stdin, io.BufferedReader) else io.BufferedReader(stdin))
        return
    with path.open("rb") as raw:
        yield from _maybe_gzip(raw)


def _maybe_gzip(raw: io.BufferedReader) -> Iterator[str]:
    if raw.peek(2)[:2] == b"\x1f\x8b":
        with gzip.open(raw) as unzipped:
            yield from _decoded(unzipped)
    else:
        yield from _decoded(raw)


def _decoded(stream: Any) -> Iterator[str]:
    for line in stream:
        yield line.decode("utf-8", errors="replace")


def json_object(line: str) -> dict[str, Any] | None:
    """The JSON object a log line holds, if any: after a prefix (``kubectl logs --timestamps`` or
    ``--prefix``), or inside a container runtime's wrapper (``{"log": "...", "stream": ...}``)."""
    line = line.strip()
    start = line.find("{")
    if start < 0:
        return None
    try:
        value = json.loads(line[start:])
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    wrapped = value.get("log")
    if isinstance(wrapped, str) and "stream" in value and wrapped.lstrip().startswith("{"):
        return json_object(wrapped)
    return value


def _read(path: Path, kind: str, sources: Sources, takers: tuple[Any, ...]) -> None:
    sources.files[str(path)] = kind
    for number, line in enumerate(open_lines(path)):
        value = json_object(line)
        taken = value is not None and any(take(value, number, sources) for take in takers)
        if not taken and line.strip():
            sources.skipped_lines += 1


def _take_sidecar(line: dict[str, Any], number: int, sources: Sources) -> bool:
    logger = line.get("logger")
    try:
        event = events.from_log(line)
    except events.MalformedEvent as exc:
        sources.unreadable(str(exc))
        return False  # never read as what it might have meant
    if event is not None:
        _add_event(event, sources)
    elif logger in (events.DECISION_LOGGER, events.TASKS_LOGGER, events.AUTHZEN_LOGGER):
        sources.unreadable(f"an {logger} line without 'event': written before events were typed")
        return False
    elif logger == "authz.opa" and isinstance(line.get("decision_id"), str):
        sources.opa_queries[line["decision_id"]] = str(line.get("path", ""))
    elif logger == "authz.shadow" and isinstance(line.get("decision_id"), str) and isinstance(line.get("shadow"), dict):
        shadow = line["shadow"]
        sources.shadows[line["decision_id"]] = shadow
        if isinstance(shadow.get("decision_id"), str):
            sources.opa_queries[shadow["decision_id"]] = str(shadow.get("path", ""))
    else:
        return False
    sources.kinds_read.add("sidecar")
    return True


def _add_event(event: events.Event, sources: Sources) -> None:
    seq = len(sources.decisions) + len(sources.task_events)  # the order lines were read in
    at = event.time.timestamp()
    if isinstance(event, events.DecisionEvent):
        sources.decisions.append(
            Decision(
                decision_id=event.decision_id,
                at=at,
                seq=seq,
                agent=_str(event.agent),
                task=_str(event.task),
                method=event.method,
                path=event.path,
                tool=_str(event.tool),
                mcp_method=_str(event.mcp_method),
                verdict=event.verdict,
                status=event.status,
                stage=event.stage,
                reasons=list(event.reasons),
                approval=_str(event.approval),
            )
        )
    elif isinstance(event, events.EvaluationEvent):
        sources.authzen.append(
            AuthzenEvaluation(
                decision_id=event.decision_id,
                at=at,
                caller=event.caller,
                endpoint=event.endpoint,
                request_id=event.request_id,
                batch=event.batch,
                subject=f"{event.subject['type']}:{event.subject['id']}",
                action=event.action,
                resource=f"{event.resource['type']}:{event.resource['id']}",
                verdict=event.verdict,
                reasons=list(event.reasons),
                error=event.error,
            )
        )
    elif isinstance(event, events.TaskEvent):
        details = {"parent": event.parent, "to": event.to, "revoked": list(event.revoked), "reason": event.reason}
        sources.task_events.append(
            TaskEvent(event.operation, at, seq, _str(event.agent), _str(event.task), event.outcome, details)
        )
    else:
        details = {"approval": event.approval, "approver": event.approver, "reason": event.reason}
        operation = "approval " + event.operation
        sources.task_events.append(TaskEvent(operation, at, seq, _str(event.agent), _str(event.task), None, details))


def _take_opa(line: dict[str, Any], number: int, sources: Sources) -> bool:
    decision_id = line.get("decision_id")
    if not isinstance(decision_id, str) or "path" not in line or "input" not in line or "logger" in line:
        return False
    bundles = line.get("bundles") or {}
    revisions = [b.get("revision") for b in bundles.values() if isinstance(b, dict) and b.get("revision")]
    labels = line.get("labels")
    event = OpaEvent(
        decision_id=decision_id,
        at=_time(line.get("timestamp") or line.get("time")),
        path=str(line.get("path")),
        result=line.get("result"),
        input=line["input"] if isinstance(line["input"], dict) else {},
        revision=str(revisions[0]) if revisions else None,
        labels={str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {},
    )
    sources.opa_events.setdefault(decision_id, event)  # console and receiver hold the same event
    sources.kinds_read.add("opa")
    return True


def _take_upstream(line: dict[str, Any], number: int, sources: Sources) -> bool:
    if line.get("logger") != "upstream.access":
        return False
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
    sources.kinds_read.add("upstream")
    return True


def _time(value: Any) -> float:
    """Epoch seconds from an epoch number or RFC 3339 (OPA's events, the upstream's lines: UTC, up
    to nanoseconds); 0 when unknown. A time without a zone is unknown, never read as local time."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str) or not value:
        return 0.0
    try:
        return parse_rfc3339(value)
    except ValueError:
        return 0.0


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
