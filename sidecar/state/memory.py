"""In-process state (default): one replica, lost on restart. Atomic by an asyncio lock."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

from sidecar.state import (
    GRACE_SECONDS,
    TASK_SLOT_TIMEOUT_SECONDS,
    AgentHistory,
    AgentLimits,
    ApprovalConflict,
    ApprovalRecord,
    ApprovalStatus,
    ParentEnded,
    PinState,
    SessionLimits,
    SessionView,
    TaskRecord,
    TaskStatus,
    ToolPin,
    TooManyApprovals,
    task_creator,
)

PURGE_EVERY = 256


@dataclass
class _Session:
    expires_at: float
    started_at: int
    calls: int = 0
    writes: int = 0
    inflight: dict[str, tuple[float, bool]] = field(default_factory=dict)  # reservation → (at, maybe write)
    minute: deque[float] = field(default_factory=deque)
    recent: deque[dict[str, Any]] = field(default_factory=deque)
    labels: set[str] = field(default_factory=set)


@dataclass
class _Agent:
    """One agent's own history, whatever its session or task (keyed by its SPIFFE ID)."""

    expires_at: float
    inflight: dict[str, float] = field(default_factory=dict)  # reservation → at
    minute: deque[float] = field(default_factory=deque)
    labels: dict[str, int] = field(default_factory=dict)  # label → last recorded (unix seconds)


def _remember(state: _Agent, labels: list[str], now: float, limits: AgentLimits) -> None:
    """When the agent last got each label; a new label only while the agent has room for it."""
    for label in labels:
        if label in state.labels or len(state.labels) < limits.max_labels:
            state.labels[label] = int(now)


class MemoryStore:
    in_process = True  # nothing here waits: its lock is never held across an await

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._tasks: dict[str, TaskRecord] = {}
        self._children: dict[str, set[str]] = {}
        self._sessions: dict[str, _Session] = {}
        self._approvals: dict[str, ApprovalRecord] = {}
        self._agents: dict[str, _Agent] = {}
        self._created: dict[str, set[str]] = {}  # creator → ids of the tasks it opened or delegated
        self._task_slots: dict[str, dict[str, float]] = {}  # creator → open-task reservation → at
        self._pending_by_agent: dict[str, set[str]] = {}  # agent → ids of its pending approvals
        self._same_request: dict[str, str] = {}  # ApprovalRecord.same_request_key → the latest id
        self._writes = 0
        # scope → (expiry, name → [pin, held, param headers of the last listing])
        self._pins: dict[str, tuple[float, dict[str, list[str | None]]]] = {}

    async def create_task(self, task: TaskRecord, slot: str | None = None) -> None:
        async with self._lock:
            if task.parent_id is not None:
                parent = self._live(task.parent_id)
                if parent is None or parent.status != "active":
                    raise ParentEnded(task.parent_id)
                self._children.setdefault(task.parent_id, set()).add(task.id)
            self._tasks[task.id] = replace(task)
            creator = task_creator(task)
            self._created.setdefault(creator, set()).add(task.id)
            if slot is not None:
                self._task_slots.get(creator, {}).pop(slot, None)
            self._count_write()

    async def reserve_task_slot(self, agent: str, slot: str, now: float) -> int:
        async with self._lock:
            created = self._created.get(agent, set())
            created -= {i for i in created if not self._active(i, now)}
            stale = now - TASK_SLOT_TIMEOUT_SECONDS
            slots = {s: at for s, at in self._task_slots.get(agent, {}).items() if at >= stale}
            count = len(created) + len(slots)
            slots[slot] = now
            self._task_slots[agent] = slots
            self._count_write()
            return count

    async def release_task_slot(self, agent: str, slot: str) -> None:
        async with self._lock:
            self._task_slots.get(agent, {}).pop(slot, None)

    async def get_task(self, task_id: str) -> TaskRecord | None:
        async with self._lock:
            task = self._live(task_id)
            return replace(task) if task else None

    async def end_task(self, task_id: str, status: TaskStatus, reason: str, now: int) -> list[str]:
        async with self._lock:
            ended: list[str] = []
            queue, first = [task_id], True
            while queue:
                current = queue.pop(0)
                task = self._live(current)
                if task is None:
                    continue
                if task.status == "active":
                    task.status = status if first else "revoked"
                    task.end_reason = reason if first else f"ancestor task {task_id} ended: {reason}"
                    task.ended_at = now
                    ended.append(current)
                first = False
                queue.extend(sorted(self._children.get(current, ())))
            return ended

    # -- sessions --------------------------------------------------------------------------
    async def reserve_call(
        self, key: str, reservation: str, maybe_write: bool, now: float, ttl: int, limits: SessionLimits
    ) -> SessionView:
        async with self._lock:
            session = self._sessions.get(key)
            if session is None or session.expires_at < now:
                session = self._sessions[key] = _Session(expires_at=now + ttl, started_at=int(now))
            stale = now - limits.inflight_timeout_seconds
            session.inflight = {r: v for r, v in session.inflight.items() if v[0] >= stale}
            while session.minute and session.minute[0] < now - 60:
                session.minute.popleft()
            inflight_writes = sum(1 for _, write in session.inflight.values() if write)
            view = SessionView(
                key=key,
                calls=session.calls + len(session.inflight),
                writes=session.writes + inflight_writes,
                calls_last_minute=len(session.minute) + len(session.inflight),
                labels=sorted(session.labels),
                recent=list(session.recent),
                started_at=session.started_at,
            )
            session.inflight[reservation] = (now, maybe_write)
            session.expires_at = max(session.expires_at, now + ttl)
            self._count_write()
            return view

    async def commit_call(
        self,
        key: str,
        reservation: str,
        write: bool,
        labels: list[str],
        entry: dict[str, Any],
        now: float,
        ttl: int,
        limits: SessionLimits,
    ) -> None:
        async with self._lock:
            session = self._sessions.get(key)
            if session is None:
                session = self._sessions[key] = _Session(expires_at=now + ttl, started_at=int(now))
            session.inflight.pop(reservation, None)
            session.calls += 1
            session.writes += int(write)
            session.minute.append(now)
            while len(session.minute) > limits.max_minute_entries:
                session.minute.popleft()
            if limits.recent_window:
                session.recent.appendleft(entry)
                while len(session.recent) > limits.recent_window:
                    session.recent.pop()
            for label in labels:
                if len(session.labels) < limits.max_labels:
                    session.labels.add(label)
            session.expires_at = max(session.expires_at, now + ttl)

    async def release_call(self, key: str, reservation: str) -> None:
        async with self._lock:
            session = self._sessions.get(key)
            if session is not None:
                session.inflight.pop(reservation, None)

    # -- the agent's own history -----------------------------------------------------------
    async def reserve_agent_call(self, agent: str, reservation: str, now: float, limits: AgentLimits) -> AgentHistory:
        async with self._lock:
            state = self._agent(agent, now, limits)
            stale = now - limits.inflight_timeout_seconds
            state.inflight = {r: at for r, at in state.inflight.items() if at >= stale}
            while state.minute and state.minute[0] < now - 60:
                state.minute.popleft()
            cutoff = now - limits.label_retention_seconds
            state.labels = {label: at for label, at in state.labels.items() if at >= cutoff}
            history = AgentHistory(len(state.minute) + len(state.inflight), dict(state.labels))
            state.inflight[reservation] = now
            self._count_write()
            return history

    async def commit_agent_call(
        self, agent: str, reservation: str, labels: list[str], now: float, limits: AgentLimits
    ) -> None:
        async with self._lock:
            state = self._agent(agent, now, limits)
            state.inflight.pop(reservation, None)
            state.minute.append(now)
            while len(state.minute) > limits.max_minute_entries:
                state.minute.popleft()
            _remember(state, labels, now, limits)

    async def remember_agent_labels(self, agent: str, labels: list[str], now: float, limits: AgentLimits) -> None:
        async with self._lock:
            _remember(self._agent(agent, now, limits), labels, now, limits)

    async def release_agent_call(self, agent: str, reservation: str) -> None:
        async with self._lock:
            state = self._agents.get(agent)
            if state is not None:
                state.inflight.pop(reservation, None)

    def _agent(self, agent: str, now: float, limits: AgentLimits) -> _Agent:
        """The agent's history, created on first use; kept while anything in it can still count."""
        state = self._agents.get(agent)
        if state is None:
            state = self._agents[agent] = _Agent(expires_at=now)
        state.expires_at = max(state.expires_at, now + max(60, limits.label_retention_seconds))
        return state

    # -- approvals -------------------------------------------------------------------------
    async def create_approval(self, approval: ApprovalRecord, max_pending: int, now: int) -> ApprovalRecord:
        async with self._lock:
            key = approval.same_request_key
            existing = self._same_request.get(key)
            if existing is not None and self._is_pending(existing, now):
                return replace(self._approvals[existing])
            pending = {i for i in self._pending_by_agent.get(approval.agent, ()) if self._is_pending(i, now)}
            if len(pending) >= max_pending:
                raise TooManyApprovals(approval.agent, len(pending))
            self._approvals[approval.id] = replace(approval)
            self._pending_by_agent[approval.agent] = pending | {approval.id}
            self._same_request[key] = approval.id
            self._count_write()
            return replace(approval)

    async def get_approval(self, approval_id: str) -> ApprovalRecord | None:
        async with self._lock:
            approval = self._approvals.get(approval_id)
            if approval is None or approval.expires_at + GRACE_SECONDS < time.time():
                return None
            return replace(approval)

    async def list_approvals(self, status: ApprovalStatus) -> list[ApprovalRecord]:
        now = time.time()
        async with self._lock:
            return [
                replace(a)
                for a in sorted(self._approvals.values(), key=lambda a: a.created_at)
                if a.status == status and a.expires_at > now
            ]

    async def decide_approval(
        self, approval_id: str, status: ApprovalStatus, approver: dict[str, Any], reason: str | None, now: int
    ) -> ApprovalRecord:
        async with self._lock:
            approval = self._approvals.get(approval_id)
            if approval is None or approval.status != "pending" or approval.expires_at <= now:
                raise ApprovalConflict(approval_id)
            approval.status, approval.approver = status, approver
            approval.decision_reason, approval.decided_at = reason, now
            self._pending_by_agent.get(approval.agent, set()).discard(approval_id)
            return replace(approval)

    async def consume_approval(self, approval_id: str, now: int) -> ApprovalRecord:
        async with self._lock:
            approval = self._approvals.get(approval_id)
            if approval is None or approval.status != "approved" or approval.expires_at <= now:
                raise ApprovalConflict(approval_id)
            approval.status = "consumed"
            return replace(approval)

    async def restore_approval(self, approval_id: str) -> None:
        async with self._lock:
            approval = self._approvals.get(approval_id)
            if approval is not None and approval.status == "consumed":
                approval.status = "approved"

    # -- pinned tool definitions ---------------------------------------------------------------
    def _live_pins(self, scope: str) -> dict[str, list[str | None]] | None:
        entry = self._pins.get(scope)
        if entry is None or entry[0] <= time.time():
            self._pins.pop(scope, None)
            return None
        return entry[1]

    async def pin_tools(
        self, scope: str, hashes: dict[str, str], ttl: int, param_headers: dict[str, str] | None = None
    ) -> dict[str, PinState]:
        async with self._lock:
            pins = self._live_pins(scope) or {}
            states: dict[str, PinState] = {}
            for name, digest in hashes.items():
                pin = pins.get(name)
                listed = (param_headers or {}).get(name)
                if pin is None:
                    pins[name] = [digest, None, listed]
                    states[name] = "new"
                    continue
                pin[2] = listed
                if pin[0] == digest:
                    pin[1] = None  # back to the approved definition
                    states[name] = "same"
                else:
                    pin[1] = digest
                    states[name] = "changed"
            self._pins[scope] = (time.time() + ttl, pins)
            return states

    async def tool_pin(self, scope: str, name: str) -> ToolPin | None:
        async with self._lock:
            pin = (self._live_pins(scope) or {}).get(name)
            if pin is None:
                return None
            return ToolPin("changed" if pin[1] is not None else "same", pin[2])

    async def repin_tool(self, scope: str, name: str) -> bool:
        async with self._lock:
            pin = (self._live_pins(scope) or {}).get(name)
            if pin is None or pin[1] is None:
                return False
            pin[0], pin[1] = pin[1], None
            return True

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None

    def _is_pending(self, approval_id: str, now: int) -> bool:
        approval = self._approvals.get(approval_id)
        return approval is not None and approval.status == "pending" and approval.expires_at > now

    def _live(self, task_id: str) -> TaskRecord | None:
        task = self._tasks.get(task_id)
        if task is not None and task.expires_at + GRACE_SECONDS < time.time():
            return None
        return task

    def _active(self, task_id: str, now: float) -> bool:
        task = self._tasks.get(task_id)
        return task is not None and task.status == "active" and task.expires_at > now

    def _count_write(self) -> None:
        self._writes += 1
        if self._writes % PURGE_EVERY == 0:
            self._purge()

    def _purge(self) -> None:
        """Drop what has expired, so memory stays bounded by live state."""
        now = time.time()
        cutoff = now - GRACE_SECONDS
        for task_id in [t.id for t in self._tasks.values() if t.expires_at < cutoff]:
            del self._tasks[task_id]
            self._children.pop(task_id, None)
        for key in [k for k, v in self._sessions.items() if v.expires_at < now]:
            del self._sessions[key]
        for agent in [a for a, v in self._agents.items() if v.expires_at < now]:
            del self._agents[agent]
        for creator, created in list(self._created.items()):
            created.intersection_update(self._tasks.keys())
            if not created:
                del self._created[creator]
        stale = now - TASK_SLOT_TIMEOUT_SECONDS
        for creator in [c for c, slots in self._task_slots.items() if all(at < stale for at in slots.values())]:
            del self._task_slots[creator]
        for approval_id in [a.id for a in self._approvals.values() if a.expires_at < cutoff]:
            del self._approvals[approval_id]
        for agent, ids in list(self._pending_by_agent.items()):
            ids.intersection_update(self._approvals)
            if not ids:
                del self._pending_by_agent[agent]
        for key in [k for k, i in self._same_request.items() if i not in self._approvals]:
            del self._same_request[key]
