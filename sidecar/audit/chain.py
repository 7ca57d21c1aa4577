"""Reconstruct tool chains from the records :mod:`sidecar.audit.sources` read.

A chain is what one task (with every task delegated from it) or one agent did, in order: each
call with its verdict and reasons, the approvals asked for, decided and used, the delegation
hops, the credentials minted (ids only: the decision and the task they were minted for), and
the gaps — requests the upstream served that no allowed decision accounts for.

OPA decision-log events that no sidecar record accounts for (not a check the sidecar logged, nor
one of its task, approver or shadow queries) are not calls: something other than the sidecar
asked OPA, and the audit lists them apart (``unmatched``) for a reviewer to look into.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from sidecar.audit.sources import AuthzenEvaluation, Decision, OpaEvent, Sources, TaskEvent

# A deny, step-up or allow recorded at this stage came from the policy, so OPA logged the decision.
# (Earlier stages - body, identity, task, approval redemption - answer before OPA is asked.)
ASKED_OPA = frozenset({"policy"})


@dataclass
class Call:
    decision_id: str
    at: float
    seq: int
    agent: str | None
    task: str | None
    delegation_chain: list[str]
    method: str
    path: str
    tool: str | None
    verdict: str
    status: int
    stage: str
    reasons: list[str]
    approval_requested: str | None = None
    approval_presented: str | None = None
    step_up: str | None = None
    remember: list[str] = field(default_factory=list)
    credential: dict[str, Any] | None = None  # ids and what was asked for, never the token
    policy_revision: str | None = None
    opa_logged: bool = False
    upstream_status: int | None = None
    upstream_seen: int = 0
    source: str = "sidecar"  # or "opa" when only OPA's event was found (no sidecar log was read)
    shadow: dict[str, Any] | None = None  # the candidate policy's verdict in shadow mode (never enforced)

    @property
    def what(self) -> str:
        return f"{self.method} {self.path}" + (f" tool {self.tool}" if self.tool else "")


@dataclass
class Task:
    id: str
    agent: str | None = None
    parent: str | None = None
    purpose: str | None = None
    scopes: list[str] = field(default_factory=list)
    opened_at: float | None = None
    ended_at: float | None = None
    end: str | None = None
    delegated_to: list[str] = field(default_factory=list)


@dataclass
class Gap:
    kind: str
    at: float
    detail: str
    decision_id: str | None = None
    agent: str | None = None


@dataclass
class Chain:
    key: str
    kind: str  # "task" or "agent"
    subject: str
    calls: list[Call] = field(default_factory=list)
    tasks: list[Task] = field(default_factory=list)
    events: list[TaskEvent] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)

    def timeline(self) -> list[dict[str, Any]]:
        entries: list[tuple[float, int, dict[str, Any]]] = []
        for call in self.calls:
            entries.append((call.at, call.seq, _call_entry(call)))
        for event in self.events:
            entries.append((event.at, event.seq, _event_entry(event)))
        for gap in self.gaps:
            entry = {"kind": "gap", "gap": gap.kind, "at": gap.at, "summary": gap.detail}
            entries.append((gap.at, 1 << 40, {**entry, "decision_id": gap.decision_id, "agent": gap.agent}))
        entries.sort(key=lambda item: (item[0], item[1]))
        return [entry for _, _, entry in entries]

    def approvals(self) -> list[dict[str, Any]]:
        """Each approval: which call asked for it, who decided, which call used it."""
        found: dict[str, dict[str, Any]] = {}
        for call in self.calls:
            if call.approval_requested:
                found.setdefault(call.approval_requested, {"id": call.approval_requested})["requested_by"] = {
                    "decision_id": call.decision_id,
                    "agent": call.agent,
                    "at": call.at,
                    "what": call.what,
                }
        for event in self.events:
            if event.operation in ("approval approve", "approval reject"):
                approval_id = str(event.fields.get("approval", ""))
                found.setdefault(approval_id, {"id": approval_id})["decision"] = {
                    "outcome": "approved" if event.operation.endswith("approve") else "rejected",
                    "approver": event.fields.get("approver"),
                    "at": event.at,
                }
        for call in self.calls:
            if call.approval_presented:
                entry = found.setdefault(call.approval_presented, {"id": call.approval_presented})
                entry.setdefault("presented", []).append(
                    {"decision_id": call.decision_id, "agent": call.agent, "verdict": call.verdict, "at": call.at}
                )
        return sorted(found.values(), key=lambda a: a.get("requested_by", {}).get("at", 0.0))

    def delegations(self) -> list[dict[str, Any]]:
        return [
            {"from_task": t.parent, "task": t.id, "to": t.agent, "at": t.opened_at}
            for t in sorted(self.tasks, key=lambda t: t.opened_at or 0.0)
            if t.parent
        ]

    def credentials(self) -> list[dict[str, Any]]:
        return [c.credential for c in self.calls if c.credential is not None]

    def summary(self) -> dict[str, Any]:
        verdicts = Counter(call.verdict for call in self.calls)
        approvals = self.approvals()
        times = [c.at for c in self.calls] + [e.at for e in self.events]
        tools: list[str] = []
        for call in sorted(self.calls, key=lambda c: (c.at, c.seq)):
            name = call.tool or f"{call.method} {call.path}"
            if name not in tools:
                tools.append(name)
        return {
            "calls": len(self.calls),
            "allowed": verdicts.get("allow", 0),
            "denied": verdicts.get("deny", 0),
            "step_up": verdicts.get("step_up", 0),
            "errors": verdicts.get("error", 0),
            "agents": sorted({c.agent for c in self.calls if c.agent} | {t.agent for t in self.tasks if t.agent}),
            "tasks": len(self.tasks),
            "delegations": len(self.delegations()),
            "approvals_requested": sum(1 for a in approvals if "requested_by" in a),
            "approvals_approved": sum(1 for a in approvals if a.get("decision", {}).get("outcome") == "approved"),
            "approvals_used": sum(1 for a in approvals if any(p["verdict"] == "allow" for p in a.get("presented", []))),
            "credentials_minted": len(self.credentials()),
            "gaps": len(self.gaps),
            "first_at": min(times) if times else None,
            "last_at": max(times) if times else None,
            "tools": tools,
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "kind": self.kind,
            "subject": self.subject,
            "summary": self.summary(),
            "tasks": [asdict(t) for t in sorted(self.tasks, key=lambda t: t.opened_at or 0.0)],
            "calls": [asdict(c) for c in sorted(self.calls, key=lambda c: (c.at, c.seq))],
            "approvals": self.approvals(),
            "delegations": self.delegations(),
            "credentials": self.credentials(),
            "gaps": [asdict(g) for g in self.gaps],
            "timeline": self.timeline(),
        }


@dataclass
class Unmatched:
    """An OPA decision no sidecar record accounts for: something other than the sidecar asked OPA."""

    decision_id: str
    at: float
    path: str
    agent: str | None
    what: str
    verdict: str
    revision: str | None
    labels: dict[str, str]

    @property
    def detail(self) -> str:
        where = f" (OPA {self.labels['pod']})" if self.labels.get("pod") else ""
        return (
            f"OPA decided {self.path} ({self.what or 'no action'} -> {self.verdict}) as decision {self.decision_id}"
            f"{where}, but no sidecar record has it: something other than the sidecar asked OPA"
        )


@dataclass
class Audit:
    chains: list[Chain]
    gaps: list[Gap]  # every gap, including those no chain accounts for
    sources: Sources
    unmatched: list[Unmatched] = field(default_factory=list)
    # AuthZEN evaluations: questions a PEP asked about a subject, not calls an agent made.
    authzen: list[AuthzenEvaluation] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "generated_at": time.time(),
            "sources": {"files": self.sources.files, "skipped_lines": self.sources.skipped_lines},
            "chains": [chain.as_json() for chain in self.chains],
            "gaps": [asdict(g) for g in sorted(self.gaps, key=lambda g: g.at)],
            "unmatched_opa_events": [asdict(u) | {"detail": u.detail} for u in self.unmatched],
            "authzen_evaluations": [asdict(a) for a in self.authzen],
        }


def reconstruct(
    sources: Sources,
    *,
    task: str | None = None,
    agent: str | None = None,
    since: float | None = None,
    until: float | None = None,
) -> Audit:
    """All chains (one per root task, one per agent for calls outside tasks), or the one asked for:
    ``task`` (that task and everything delegated from it) or ``agent`` (everything it did);
    ``since`` / ``until`` (epoch seconds) keep what happened in that window."""
    unmatched = _unmatched(sources, since, until)
    with_sidecar = sources.has_sidecar  # of all the logs, before the window
    if since is not None or until is not None:
        sources = sources.within(since, until)
    calls = _calls(sources, with_sidecar, since, until)
    tasks = _tasks(sources, calls)
    gaps = _gaps(sources, calls)
    by_decision = {call.decision_id: call for call in calls}
    if task is not None:
        chains = [_task_chain(task, tasks, calls, sources, gaps, by_decision)]
    elif agent is not None:
        chains = [_agent_chain(agent, calls, tasks, sources, gaps, by_decision, only_taskless=False)]
    else:
        roots = sorted((t for t in tasks.values() if t.parent is None), key=lambda t: t.opened_at or 0.0)
        chains = [_task_chain(t.id, tasks, calls, sources, gaps, by_decision) for t in roots]
        agents = sorted({c.agent for c in calls if c.agent and c.task is None})
        chains += [_agent_chain(a, calls, tasks, sources, gaps, by_decision, only_taskless=True) for a in agents]
    if task is not None:
        members = _descendants(task, tasks)
        unmatched = [u for u in unmatched if _task_of(sources.opa_events[u.decision_id]) in members]
    elif agent is not None:
        unmatched = [u for u in unmatched if u.agent == agent]
    return Audit(chains, gaps, sources, unmatched, _authzen(sources, task, agent))


def _unmatched(sources: Sources, since: float | None, until: float | None) -> list[Unmatched]:
    """OPA's events whose decision id no sidecar line names (only when a sidecar log was read)."""
    if not sources.has_sidecar:
        return []
    known = (
        {d.decision_id for d in sources.decisions} | set(sources.opa_queries) | {a.decision_id for a in sources.authzen}
    )
    found = []
    for event in sources.opa_events.values():
        if event.decision_id in known:
            continue
        if (since is not None and event.at < since) or (until is not None and event.at >= until):
            continue
        call = _from_opa(event)
        operation = event.input.get("operation")
        what = call.what if call.method or call.path else f"operation {operation}" if isinstance(operation, str) else ""
        verdict = call.verdict if event.result is not None else "undefined"
        found.append(
            Unmatched(event.decision_id, event.at, event.path, call.agent, what, verdict, event.revision, event.labels)
        )
    return sorted(found, key=lambda u: u.at)


def _authzen(sources: Sources, task: str | None, agent: str | None) -> list[AuthzenEvaluation]:
    """Every evaluation; for ``agent``, those it asked (as a PEP) or was asked about; none belongs to a task."""
    if task is not None:
        return []
    if agent is None:
        return sources.authzen
    return [a for a in sources.authzen if agent in (a.caller, a.subject.partition(":")[2])]


def _task_of(event: OpaEvent) -> str | None:
    task = event.input.get("task")
    return task.get("id") if isinstance(task, dict) and isinstance(task.get("id"), str) else None


def _calls(sources: Sources, with_sidecar: bool, since: float | None, until: float | None) -> list[Call]:
    calls: list[Call] = []
    seen: set[str] = set()
    for decision in sources.decisions:
        event = sources.opa_events.get(decision.decision_id)
        calls.append(_from_decision(decision, event))
        calls[-1].shadow = sources.shadows.get(decision.decision_id)
        seen.add(decision.decision_id)
    # Without a sidecar log, the checks OPA logged are the only record of the calls. With one, an
    # event it does not account for is no call the sidecar made (see _unmatched).
    if not with_sidecar:
        for decision_id, event in sources.opa_events.items():
            in_window = (since is None or event.at >= since) and (until is None or event.at < until)
            if decision_id not in seen and "attributes" in event.input and in_window:
                calls.append(_from_opa(event))
    upstream = Counter(hit.decision_id for hit in sources.upstream if hit.decision_id)
    statuses = {hit.decision_id: hit.status for hit in sources.upstream if hit.decision_id}
    for call in calls:
        call.upstream_seen = upstream.get(call.decision_id, 0)
        call.upstream_status = statuses.get(call.decision_id)
    return calls


def _from_decision(decision: Decision, event: OpaEvent | None) -> Call:
    call = Call(
        decision_id=decision.decision_id,
        at=decision.at,
        seq=decision.seq,
        agent=decision.agent,
        task=decision.task,
        delegation_chain=[],
        method=decision.method,
        path=decision.path,
        tool=decision.tool,
        verdict=decision.verdict,
        status=decision.status,
        stage=decision.stage,
        reasons=decision.reasons,
    )
    if decision.approval:
        if decision.verdict == "step_up":
            call.approval_requested = decision.approval
        else:
            call.approval_presented = decision.approval
    if event is not None:
        _enrich(call, event)
    return call


def _from_opa(event: OpaEvent) -> Call:
    data = event.input
    action = data.get("action") or {}
    agent = (data.get("agent") or {}).get("spiffe_id")
    task = (data.get("task") or {}).get("id")
    mcp = data.get("mcp") or {}
    result = event.result if isinstance(event.result, dict) else {}
    verdict = result.get("verdict") or ("allow" if event.result is True else "deny")
    call = Call(
        decision_id=event.decision_id,
        at=event.at,
        seq=1 << 30,
        agent=agent if isinstance(agent, str) else None,
        task=task if isinstance(task, str) else None,
        delegation_chain=[],
        method=str(action.get("method", "")),
        path=str(action.get("path", "")),
        tool=mcp.get("name") if isinstance(mcp.get("name"), str) else None,
        verdict=str(verdict),
        status=0,
        stage="policy",
        reasons=[str(r) for r in result.get("reasons") or []],
        source="opa",
    )
    _enrich(call, event)
    return call


def _enrich(call: Call, event: OpaEvent) -> None:
    call.opa_logged = True
    call.policy_revision = event.revision
    chain = (event.input.get("delegation") or {}).get("chain")
    if isinstance(chain, list):
        call.delegation_chain = [str(x) for x in chain]
    result = event.result if isinstance(event.result, dict) else {}
    remember = result.get("remember")
    if isinstance(remember, list):
        call.remember = [str(x) for x in remember]
    step_up = result.get("step_up")
    if isinstance(step_up, dict):
        call.step_up = str(step_up.get("kind"))
    credential = result.get("credential")
    if call.verdict == "allow" and isinstance(credential, dict):
        call.credential = {
            "decision_id": call.decision_id,
            "task_id": call.task,
            "agent": call.agent,
            "audience": credential.get("audience"),
            "scopes": credential.get("scopes"),
            "ttl_seconds": credential.get("ttl_seconds"),
        }


def _tasks(sources: Sources, calls: list[Call]) -> dict[str, Task]:
    tasks: dict[str, Task] = {}

    def get(task_id: str) -> Task:
        return tasks.setdefault(task_id, Task(task_id))

    for event in sources.task_events:
        if event.outcome == "deny" or event.task is None:
            continue
        if event.operation == "open":
            task = get(event.task)
            task.agent, task.opened_at = event.agent, event.at
        elif event.operation == "delegate":
            child = get(event.task)
            child.parent = _opt(event.fields.get("parent"))
            child.agent = _opt(event.fields.get("to"))
            child.opened_at = event.at
            if child.parent:
                get(child.parent).delegated_to.append(event.task)
        elif event.operation == "complete":
            for ended in [event.task, *[str(t) for t in event.fields.get("revoked") or [] if t]]:
                task = get(ended)
                if task.ended_at is None:
                    task.ended_at = event.at
                    task.end = "completed" if ended == event.task else f"revoked with {event.task}"
    for opa_event in sources.opa_events.values():  # purpose, scopes and parents from what OPA was told
        grant = opa_event.input.get("task")
        if isinstance(grant, dict) and isinstance(grant.get("id"), str):
            task = get(grant["id"])
            task.purpose = task.purpose or _opt(grant.get("purpose"))
            task.scopes = task.scopes or [str(s) for s in grant.get("scopes") or []]
            task.parent = task.parent or _opt(grant.get("parent_id"))
    for call in calls:
        if call.task:
            task = get(call.task)
            task.agent = task.agent or call.agent
    for task in list(tasks.values()):
        parent = tasks.get(task.parent) if task.parent else None
        if parent is not None and task.id not in parent.delegated_to:
            parent.delegated_to.append(task.id)
    return tasks


def _descendants(root: str, tasks: dict[str, Task]) -> set[str]:
    found, pending = set(), [root]
    while pending:
        current = pending.pop()
        if current in found:
            continue
        found.add(current)
        pending += [t.id for t in tasks.values() if t.parent == current]
    return found


def _task_chain(
    task_id: str,
    tasks: dict[str, Task],
    calls: list[Call],
    sources: Sources,
    gaps: list[Gap],
    by_decision: dict[str, Call],
) -> Chain:
    members = _descendants(task_id, tasks)
    chain = Chain(key=f"task:{task_id}", kind="task", subject=task_id)
    chain.tasks = [tasks[t] for t in members if t in tasks]
    chain.calls = [c for c in calls if c.task in members]
    approval_ids = {c.approval_requested for c in chain.calls if c.approval_requested}
    chain.events = [
        e
        for e in sources.task_events
        if e.outcome != "deny"
        and (
            e.task in members or str(e.fields.get("approval", "")) in approval_ids or e.fields.get("parent") in members
        )
    ]
    chain.gaps = _gaps_for(chain.calls, gaps, by_decision)
    return chain


def _agent_chain(
    agent: str,
    calls: list[Call],
    tasks: dict[str, Task],
    sources: Sources,
    gaps: list[Gap],
    by_decision: dict[str, Call],
    *,
    only_taskless: bool,
) -> Chain:
    chain = Chain(key=f"agent:{agent}", kind="agent", subject=agent)
    chain.calls = [c for c in calls if c.agent == agent and not (only_taskless and c.task)]
    if not only_taskless:
        chain.tasks = [t for t in tasks.values() if t.agent == agent]
        approval_ids = {c.approval_requested for c in chain.calls if c.approval_requested}
        chain.events = [
            e
            for e in sources.task_events
            if e.agent == agent or e.fields.get("to") == agent or str(e.fields.get("approval", "")) in approval_ids
        ]
    chain.gaps = _gaps_for(chain.calls, gaps, by_decision)
    if not only_taskless:  # requests that claimed to be this agent, or no one: a reviewer must see them
        chain.gaps += [g for g in gaps if g not in chain.gaps and g.agent in (agent, None)]
    return chain


def _gaps_for(calls: list[Call], gaps: list[Gap], by_decision: dict[str, Call]) -> list[Gap]:
    ids = {c.decision_id for c in calls}
    return [g for g in gaps if g.decision_id in ids]


def _gaps(sources: Sources, calls: list[Call]) -> list[Gap]:
    """Requests the upstream served that no allowed decision accounts for; allowed checks OPA never logged."""
    gaps: list[Gap] = []
    by_id = {c.decision_id: c for c in calls}
    served: Counter[str] = Counter()
    for hit in sorted(sources.upstream, key=lambda h: (h.at, h.seq)):
        what = f"{hit.method} {hit.path}"
        if not hit.decision_id:
            gaps.append(
                Gap("no_decision", hit.at, f"the upstream served {what} with no decision id", None, hit.spiffe_id)
            )
            continue
        call = by_id.get(hit.decision_id)
        served[hit.decision_id] += 1
        if call is None and hit.decision_id in sources.opa_events:
            detail = (
                f"the upstream served {what} under decision {hit.decision_id}, which OPA made but no sidecar record"
                " has: something other than the sidecar asked OPA"
            )
            gaps.append(Gap("opa_only_decision", hit.at, detail, hit.decision_id, hit.spiffe_id))
        elif call is None:
            detail = f"the upstream served {what} under decision {hit.decision_id}, which no log holds"
            gaps.append(Gap("unknown_decision", hit.at, detail, hit.decision_id, hit.spiffe_id))
        elif call.verdict != "allow":
            detail = f"the upstream served {what} under decision {hit.decision_id}, whose verdict was {call.verdict}"
            gaps.append(Gap("not_allowed", hit.at, detail, hit.decision_id, call.agent))
        elif served[hit.decision_id] > 1:
            detail = f"the upstream served {what} again under decision {hit.decision_id} (one decision, one request)"
            gaps.append(Gap("replayed_decision", hit.at, detail, hit.decision_id, call.agent))
        elif (call.method, call.path) != (hit.method, hit.path):
            detail = f"decision {hit.decision_id} allowed {call.method} {call.path} but the upstream served {what}"
            gaps.append(Gap("different_request", hit.at, detail, hit.decision_id, call.agent))
        elif hit.spiffe_id and call.agent and hit.spiffe_id != call.agent:
            detail = f"decision {hit.decision_id} was for {call.agent} but the upstream saw {hit.spiffe_id}"
            gaps.append(Gap("different_agent", hit.at, detail, hit.decision_id, call.agent))
    if sources.has_opa:
        for call in calls:
            if call.source == "sidecar" and call.stage in ASKED_OPA and call.verdict != "error" and not call.opa_logged:
                detail = f"no OPA decision-log event for decision {call.decision_id} ({call.verdict} {call.what})"
                gaps.append(Gap("missing_opa_event", call.at, detail, call.decision_id, call.agent))
    return gaps


def _call_entry(call: Call) -> dict[str, Any]:
    extra = []
    if call.approval_requested:
        extra.append(f"approval {call.approval_requested} requested")
    if call.approval_presented:
        extra.append(f"approval {call.approval_presented} presented")
    if call.credential:
        extra.append(f"credential minted for {call.credential['audience']}")
    if call.delegation_chain:
        extra.append("acting for " + " <- ".join(call.delegation_chain))
    if call.shadow is not None and call.shadow.get("agree") is False:
        extra.append(f"shadow policy: {call.shadow.get('verdict')}")
    summary = f"{call.what} -> {call.verdict}" + (f" ({'; '.join(extra)})" if extra else "")
    return {
        "kind": "call",
        "at": call.at,
        "agent": call.agent,
        "task": call.task,
        "decision_id": call.decision_id,
        "verdict": call.verdict,
        "summary": summary,
        "reasons": call.reasons,
    }


def _event_entry(event: TaskEvent) -> dict[str, Any]:
    fields = event.fields
    if event.operation == "open":
        kind, summary = "task_opened", f"{event.agent} opened task {event.task}"
    elif event.operation == "delegate":
        kind, summary = "delegated", f"{event.agent} delegated task {fields.get('parent')} to {fields.get('to')}"
    elif event.operation == "complete":
        revoked = [t for t in fields.get("revoked") or [] if t != event.task]
        kind = "task_completed"
        summary = f"{event.agent} completed task {event.task}" + (f", revoking {', '.join(revoked)}" if revoked else "")
    elif event.operation.startswith("approval "):
        outcome = "approved" if event.operation.endswith("approve") else "rejected"
        kind, summary = f"approval_{outcome}", f"{fields.get('approver')} {outcome} approval {fields.get('approval')}"
    else:
        kind, summary = "task_refused", f"{event.agent}: {event.operation} refused: {fields.get('reason')}"
    return {"kind": kind, "at": event.at, "agent": event.agent, "task": event.task, "summary": summary}


def _opt(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def group_counts(chains: list[Chain]) -> dict[str, int]:
    totals: dict[str, int] = defaultdict(int)
    for chain in chains:
        for key, value in chain.summary().items():
            if isinstance(value, int) and not isinstance(value, bool):
                totals[key] += value
    return dict(totals)
