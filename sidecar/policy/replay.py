"""Replay a decision log against a candidate bundle: what would the candidate have decided?

Every recorded input is decided again by a real OPA on the candidate bundle, at the time it was
first decided, and compared with the result OPA logged then. A decision *changed* when the new
decision document differs from the recorded one (``verdict``: another verdict; ``document``: the
same verdict with other reasons, headers, credential, ...), or when the candidate has no answer
(undefined, or an OPA error, which the sidecar would turn into a 503).

Masked inputs are never compared silently. OPA logs an input after the mask policy erased or
replaced fields (``erased``/``masked``); the candidate then decides on less than the live policy
saw. When no reference to ``input`` in the candidate's Rego can reach a masked field (found with
``opa parse``: a reference reaches a field when one is a prefix of the other, any computed key
matching), the field cannot change its answer and the decision is compared, noting the field.
Otherwise it is listed apart as *masked*, with the fields and the lines of the policy that may
read them, and counted neither as compared nor as changed. A recorded result that was itself
masked (a ``/result`` pointer) is never compared. An input the sidecar left ``session.recent`` out
of (the live policy named it in ``unread_input``) counts as masked there, unless the candidate's
answer names it unread too: the sidecar would have left it out for the candidate as well.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from sidecar.audit.render import printable
from sidecar.decision import unread_input
from sidecar.policy.engine import Bundle, InputRead, Outcome, PolicyEngine, decision_query
from sidecar.policy.events import Event, EventLog, pointer_segments, rfc3339_ns


@dataclass
class Side:
    """One decision document, summarised."""

    verdict: str
    reasons: list[str]
    rule: str | None
    document: Any = None

    @classmethod
    def of(cls, defined: bool, result: Any, error: str | None = None) -> Side:
        if error is not None:
            return cls("error", [error], None)
        if not defined:
            return cls("undefined", ["no decision at this path"], None)
        return cls(_verdict(result), _reasons(result), _rule(result), result)


@dataclass
class Replayed:
    decision_id: str
    path: str
    agent: str | None
    action: str
    decided_at: str | None
    clock: str
    old: Side
    new: Side
    change: str | None  # None, "verdict" or "document"
    differs: list[str] = field(default_factory=list)  # top-level keys of the document that differ
    masked_unread: list[str] = field(default_factory=list)  # masked, but no rule can read them
    masked_read: dict[str, list[str]] = field(default_factory=dict)  # pointer -> "file:row" that may read it
    notes: list[str] = field(default_factory=list)

    @property
    def rule(self) -> str:
        """What the change is grouped by: the rule named in x-authz-rule, else the first reason."""
        named = self.old.rule or self.new.rule
        if named:
            return named
        side = self.new if self.new.verdict not in ("allow",) else self.old
        return side.reasons[0] if side.reasons else "-"

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        for side in ("old", "new"):
            data[side].pop("document")
        data["rule"] = self.rule
        return data


@dataclass
class Report:
    bundle: str
    log: str
    opa_version: str
    events: int
    skipped_lines: int
    duplicates: int
    compared: list[Replayed]
    masked: list[Replayed]

    @property
    def changed(self) -> list[Replayed]:
        return [r for r in self.compared if r.change]

    def by_rule(self) -> dict[str, dict[str, int]]:
        groups: dict[str, Counter[str]] = defaultdict(Counter)
        for replayed in self.changed:
            groups[replayed.rule][f"{replayed.old.verdict} -> {replayed.new.verdict}"] += 1
        return {rule: dict(counts) for rule, counts in sorted(groups.items(), key=lambda kv: -sum(kv[1].values()))}

    def as_json(self) -> dict[str, Any]:
        changed = self.changed
        return {
            "bundle": self.bundle,
            "log": self.log,
            "opa_version": self.opa_version,
            "events": self.events,
            "compared": len(self.compared),
            "unchanged": len(self.compared) - len(changed),
            "changed": [r.as_json() for r in changed],
            "counts": {
                "changed": len(changed),
                "verdict_changed": sum(r.change == "verdict" for r in changed),
                "document_changed": sum(r.change == "document" for r in changed),
                "masked": len(self.masked),
                "masked_would_change": sum(r.change is not None for r in self.masked),
                "skipped_lines": self.skipped_lines,
                "duplicate_events": self.duplicates,
            },
            "by_rule": self.by_rule(),
            "masked": [r.as_json() for r in self.masked],
        }


def replay(log: EventLog, bundle: Bundle, log_name: str, path: str | None = None) -> Report:
    events = [e for e in log.events if path is None or e.path == path.strip("/")]
    with PolicyEngine(bundle) as engine:  # first: it says best why a bundle does not load
        reads = bundle.input_reads() if any(e.masked or e.left_out or not e.has_input for e in events) else []
        outcomes = engine.evaluate(
            [(decision_query(e.path, e.at_ns), e.input if isinstance(e.input, dict) else None) for e in events]
        )
        version = engine.version
    compared: list[Replayed] = []
    masked: list[Replayed] = []
    for event, outcome in zip(events, outcomes, strict=True):
        replayed = _compare(event, outcome, reads)
        (masked if replayed.masked_read else compared).append(replayed)
    return Report(
        str(bundle.source), log_name, version, len(events), log.skipped_lines, log.duplicates, compared, masked
    )


def _compare(event: Event, outcome: Outcome, reads: list[InputRead]) -> Replayed:
    old = Side.of(event.has_result, event.result)
    new = Side.of(outcome.defined, outcome.result, outcome.error)
    replayed = Replayed(
        decision_id=event.decision_id,
        path=event.path,
        agent=event.agent,
        action=event.action,
        decided_at=rfc3339_ns(event.at_ns) if event.at_ns is not None else None,
        clock=event.clock,
        old=old,
        new=new,
        change=_change(event, outcome, old, new),
    )
    if replayed.change == "document":
        old_doc = event.result if isinstance(event.result, dict) else {}
        new_doc = outcome.result if isinstance(outcome.result, dict) else {}
        replayed.differs = sorted(k for k in old_doc.keys() | new_doc.keys() if old_doc.get(k) != new_doc.get(k))
    pointers = list(event.masked) if event.has_input else ["/input", *event.masked]
    # A field the sidecar left out is as good as masked, unless the candidate names it unread too:
    # then the live sidecar would have left it out for the candidate as well.
    named = unread_input(outcome.result) if outcome.defined else frozenset()
    pointers += ["/input/" + field.replace(".", "/") for field in event.left_out if field not in named]
    for pointer in pointers:
        segments = pointer_segments(pointer)
        if segments[:1] == ["result"]:
            replayed.masked_read[pointer] = ["the recorded result itself was masked"]
        elif segments[:1] == ["input"]:
            where = sorted({f"{r.file}:{r.row}" for r in reads if r.may_read(segments[1:])})
            if where:
                replayed.masked_read[pointer] = where
            else:
                replayed.masked_unread.append(pointer)
    if event.clock == "none":
        replayed.notes.append("no recorded time: decided at the current time")
    if event.other_nondeterministic:
        names = ", ".join(event.other_nondeterministic)
        replayed.notes.append(f"{names} ran again, not as recorded")
    return replayed


def _change(event: Event, outcome: Outcome, old: Side, new: Side) -> str | None:
    if old.verdict != new.verdict:
        return "verdict"
    if outcome.error is None and event.has_result == outcome.defined and _same(event.result, outcome.result):
        return None
    return "document"


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _verdict(result: Any) -> str:
    if isinstance(result, bool):
        return "allow" if result else "deny"
    if isinstance(result, dict):
        if isinstance(result.get("verdict"), str):
            return str(result["verdict"])
        if isinstance(result.get("allowed"), bool):
            return "allow" if result["allowed"] else "deny"
    return "other"


def _reasons(result: Any) -> list[str]:
    reasons = result.get("reasons") if isinstance(result, dict) else None
    return [str(r) for r in reasons] if isinstance(reasons, list) else []


def _rule(result: Any) -> str | None:
    headers = result.get("headers") if isinstance(result, dict) else None
    rule = headers.get("x-authz-rule") if isinstance(headers, dict) else None
    return rule if isinstance(rule, str) else None


def as_text(report: Report) -> str:
    changed = report.changed
    verdicts = sum(r.change == "verdict" for r in changed)
    lines = [
        f"replayed {report.events} decision(s) of {report.log} against {report.bundle}"
        + (f" (OPA {report.opa_version})" if report.opa_version else ""),
        f"  compared {len(report.compared)}: {len(report.compared) - len(changed)} unchanged, {len(changed)} changed"
        f" ({verdicts} verdict(s), {len(changed) - verdicts} other field(s) only)",
        f"  masked {len(report.masked)}: not compared, OPA masked input the candidate policy may read",
    ]
    if report.skipped_lines or report.duplicates:
        lines.append(
            f"  {report.skipped_lines} other line(s) skipped, {report.duplicates} duplicate event(s) (same decision id)"
        )
    if changed:
        lines += ["", "changed, by rule:"]
        for rule, counts in report.by_rule().items():
            what = ", ".join(f"{transition} {n}" for transition, n in counts.items())
            lines.append(f"  {_cut(rule, 60):<60} {what}")
        lines += ["", "changed decisions:"]
        for replayed in changed:
            lines += _entry(replayed)
    if report.masked:
        lines += ["", "masked inputs (not compared):"]
        for replayed in report.masked:
            lines += _entry(replayed, masked=True)
    return "\n".join(printable(line) for line in lines)


def _entry(replayed: Replayed, masked: bool = False) -> list[str]:
    agent = (replayed.agent or "-").removeprefix("spiffe://")
    transition = f"{replayed.old.verdict} -> {replayed.new.verdict}"
    head = f"  {replayed.decision_id}  {_cut(agent, 32)}  {_cut(replayed.action, 48)}  {transition}"
    if replayed.change == "document":
        head += f" (differs: {', '.join(replayed.differs) or 'definedness'})"
    lines = [head + f"  [{_cut(replayed.rule, 40)}]"]
    if masked:
        for pointer, where in replayed.masked_read.items():
            lines.append(f"      masked {pointer}; may be read at {', '.join(where)}")
        lines.append("      replayed on the masked input: " + ("would change" if replayed.change else "same answer"))
    lines.append(f"      was: {_cut('; '.join(replayed.old.reasons) or '-', 160)}")
    lines.append(f"      now: {_cut('; '.join(replayed.new.reasons) or '-', 160)}")
    for pointer in replayed.masked_unread:
        lines.append(f"      note: {pointer} was masked; no rule of the candidate reads it")
    lines += [f"      note: {note}" for note in replayed.notes]
    return lines


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
