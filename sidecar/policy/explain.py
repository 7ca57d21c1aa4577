"""Explain one recorded decision: which rules of the policy decided it, and on which lines.

The decision's input is evaluated again with ``opa eval --explain=full`` on a bundle (default:
the shipped ``rego/``), at the time it was recorded. OPA's trace has every step of every rule it
tried; what a person needs is the rules that *held* — produced a value — in the order they
decided, nested under the rule that asked for them, each with the lines of its body OPA
evaluated. Steps outside the bundle's own files (the query itself, OPA internals) are dropped,
and test files are not loaded at all. ``trace()`` notes the policy wrote are kept.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from sidecar.audit.render import printable
from sidecar.policy.engine import Bundle, decision_query, explain, source_lines
from sidecar.policy.events import Event, rfc3339_ns
from sidecar.policy.replay import Side

MAX_BODY_LINES = 12


@dataclass
class Rule:
    name: str
    file: str
    row: int
    head: str  # the source line the rule starts on
    depth: int  # how many held rules it is nested under
    body: list[tuple[int, str]] = field(default_factory=list)  # (row, source) OPA evaluated, in order
    adds: bool = False  # a multi-value rule (``contains``): it added an element, e.g. a reason


@dataclass
class Explanation:
    decision_id: str
    path: str
    agent: str | None
    action: str
    decided_at: str | None
    bundle: str
    recorded: Side
    now: Side
    held: list[Rule]
    not_held: list[Rule]  # entered, but no value came out (first line only)
    notes: list[tuple[str, str]]  # (file:row, message) from trace()
    masked: list[str]

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        for side in ("recorded", "now"):
            data[side].pop("document")
        data["same_as_recorded"] = self.recorded.document == self.now.document
        data["notes"] = [{"at": at, "message": message} for at, message in self.notes]
        return data


def explain_decision(event: Event, bundle: Bundle) -> Explanation:
    query = decision_query(event.path, event.at_ns)
    document = explain(bundle, query, event.input, event.has_input)
    rows = document.get("result") or []
    bindings = rows[0].get("bindings", {}) if rows and isinstance(rows[0], dict) else {}
    now = Side.of("x" in bindings, bindings.get("x"))
    held, not_held, notes = _rules(document.get("explanation") or [], bundle)
    return Explanation(
        decision_id=event.decision_id,
        path=event.path,
        agent=event.agent,
        action=event.action,
        decided_at=rfc3339_ns(event.at_ns) if event.at_ns is not None else None,
        bundle=str(bundle.source),
        recorded=Side.of(event.has_result, event.result),
        now=now,
        held=held,
        not_held=not_held,
        notes=notes,
        masked=list(event.masked),
    )


_PACKAGE = re.compile(r"^\s*package\s+([\w.]+)", re.MULTILINE)


def _rules(trace: list[dict[str, Any]], bundle: Bundle) -> tuple[list[Rule], list[Rule], list[tuple[str, str]]]:
    sources: dict[str, list[str]] = {}

    def lines_of(file: str) -> list[str]:
        if file not in sources:
            sources[file] = source_lines(bundle, file)
        return sources[file]

    def text(file: str, row: int) -> str:
        lines = lines_of(file)
        return lines[row - 1].strip() if 0 < row <= len(lines) else ""

    def package(file: str) -> str:
        found = _PACKAGE.search("\n".join(lines_of(file)))
        return found.group(1) if found else "?"

    entered: dict[int, tuple[str, int, str, bool]] = {}  # query id -> the rule whose body it evaluates
    parents: dict[int, int] = {}
    exited: set[int] = set()
    evaluated: dict[int, list[int]] = {}
    order: list[int] = []
    notes: list[tuple[str, str]] = []
    for step in trace:
        location = step.get("Location") or {}
        file, row = str(location.get("file") or ""), int(location.get("row") or 0)
        query, parent, node = int(step.get("QueryID", 0)), int(step.get("ParentID", 0)), step.get("Node")
        if query != parent:
            parents.setdefault(query, parent)  # every query, so nesting survives negations and comprehensions
        if not _own(file):
            continue
        head = node.get("head") if isinstance(node, dict) else None
        is_rule = isinstance(head, dict)
        op = step.get("Op")
        if op == "Enter" and isinstance(head, dict) and query not in entered:
            ref = head.get("ref") or []
            name = ".".join(str(t.get("value")) for t in ref if isinstance(t, dict)) or str(head.get("name"))
            adds = "key" in head and "value" not in head  # `name contains x if ...`
            entered[query] = (file, row, f"{package(file)}.{name}", adds)
            order.append(query)
        elif op == "Exit" and is_rule:
            exited.add(query)
        elif op == "Eval" and query in entered and file == entered[query][0]:
            evaluated.setdefault(query, [])
            if row not in evaluated[query] and row != entered[query][1]:
                evaluated[query].append(row)
        elif op == "Note":
            notes.append((f"{file}:{row}", str(step.get("Message", ""))))

    def depth(query: int) -> int:
        level, current, seen = 0, parents.get(query), set()
        while current is not None and current not in seen:
            seen.add(current)
            if current in exited:
                level += 1
            current = parents.get(current)
        return level

    held: list[Rule] = []
    not_held: list[Rule] = []
    shown: set[tuple[str, int]] = set()
    for query in order:
        file, row, name, adds = entered[query]
        if query in exited:
            if (file, row) in shown:
                continue
            shown.add((file, row))
            body = [(r, text(file, r)) for r in evaluated.get(query, [])[:MAX_BODY_LINES]]
            held.append(Rule(name, file, row, text(file, row), depth(query), body, adds))
        elif (file, row) not in {(r.file, r.row) for r in not_held}:
            not_held.append(Rule(name, file, row, text(file, row), 0))
    held_at = {(r.file, r.row) for r in held}
    return held, [r for r in not_held if (r.file, r.row) not in held_at], notes


def _own(file: str) -> bool:
    """A file of the bundle: not the query (no file) and not OPA's own."""
    return bool(file) and not file.startswith("/") and not file.endswith("_test.rego")


def as_text(explanation: Explanation) -> str:
    e = explanation
    lines = [
        f"decision {e.decision_id}  {e.path}" + (f"  decided at {e.decided_at}" if e.decided_at else ""),
        f"  agent {e.agent or '-'}  {e.action}",
        f"  recorded: {e.recorded.verdict}    re-evaluated with {e.bundle}: {e.now.verdict}"
        + ("" if e.recorded.document == e.now.document else "  (the decision document differs from the recorded one)"),
    ]
    lines += [f"    {reason}" for reason in e.now.reasons]
    if e.masked:
        lines.append(f"  note: OPA masked {', '.join(e.masked)} before logging; the policy saw it, this run did not")
    added = [rule for rule in e.held if rule.adds]
    if added:
        lines += [
            "",
            "what the decision was built from: the multi-value rules that added to it (reasons, step-ups, ...):",
        ]
        lines += [f"  {rule.file}:{rule.row}  {rule.head}" for rule in added]
    lines += ["", f"why: the rules that held, in the order they decided ({len(e.held)}):"]
    for rule in e.held:
        indent = "  " * (rule.depth + 1)
        lines.append(f"{indent}{rule.file}:{rule.row}  {rule.head}")
        lines += [f"{indent}    {row:>4}  {source}" for row, source in rule.body if source]
    if e.notes:
        lines += ["", "notes (trace):"] + [f"  {at}  {message}" for at, message in e.notes]
    lines.append("")
    lines.append(f"{len(e.not_held)} rule(s) were tried and did not hold (--json lists them)")
    return "\n".join(printable(line) for line in lines)
