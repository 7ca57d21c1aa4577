"""State that feeds later decisions: task grants and their revocation, session (chain) state,
and step-up approvals. One interface, two backends: memory (one replica) and Redis (several
replicas, restarts). Updates are atomic per task; a store failure is a :class:`StoreError`,
which callers turn into a 503 — never an allow.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

TaskStatus = Literal["active", "completed", "revoked"]
# Records outlive their expiry by this much, so a late call still gets "expired", not "unknown".
GRACE_SECONDS = 60


class StoreError(Exception):
    """The state backend is unreachable or failed; the request must fail closed."""


class ParentEnded(Exception):
    """A delegated task cannot be created: its parent is no longer active."""


@dataclass
class TaskRecord:
    id: str
    sub: str  # the SPIFFE ID the grant is bound to
    purpose: str
    scopes: list[str]
    issued_at: int
    expires_at: int
    parent_id: str | None = None
    root_id: str = ""
    depth: int = 0
    chain: list[str] = field(default_factory=list)  # delegators, nearest first
    intent: dict[str, Any] | None = None
    status: TaskStatus = "active"
    ended_at: int | None = None
    end_reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TaskRecord:
        return cls(**data)


ApprovalStatus = Literal["pending", "approved", "rejected", "consumed"]


@dataclass(frozen=True)
class SessionLimits:
    """Bounds that keep a session's state the same size whatever its length."""

    recent_window: int = 20
    max_labels: int = 64
    inflight_timeout_seconds: int = 30
    max_minute_entries: int = 1000


@dataclass
class SessionView:
    """``input.session``: what this agent already did in this session.

    ``calls``/``writes``/``calls_last_minute`` count earlier allowed calls plus the other calls in
    flight (reserved, not yet decided), so parallel calls cannot all slip under a limit."""

    key: str
    calls: int
    writes: int
    calls_last_minute: int
    labels: list[str]
    recent: list[dict[str, Any]]
    started_at: int

    def to_json(self) -> dict[str, Any]:
        # Shallow on purpose: it is a fresh snapshot per call, and asdict's deep copy showed in profiles.
        return {
            "key": self.key,
            "calls": self.calls,
            "writes": self.writes,
            "calls_last_minute": self.calls_last_minute,
            "labels": self.labels,
            "recent": self.recent,
            "started_at": self.started_at,
        }


@dataclass
class ApprovalRecord:
    id: str
    agent: str
    task_id: str | None
    fingerprint: str
    created_at: int
    expires_at: int
    decision_id: str
    reasons: list[str]
    summary: dict[str, Any]
    delegation_chain: list[str] = field(default_factory=list)
    data_class: str | None = None
    approvers: dict[str, Any] = field(default_factory=dict)
    status: ApprovalStatus = "pending"
    approver: dict[str, Any] | None = None
    decision_reason: str | None = None
    decided_at: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ApprovalRecord:
        return cls(**data)


class ApprovalConflict(Exception):
    """The approval is not in the state the operation needs (already decided, used, or expired)."""


class Store(Protocol):
    """What the governance features need from a state backend."""

    async def create_task(self, task: TaskRecord) -> None:
        """Store a new task; for a delegated task, atomically require an active parent (else ParentEnded)."""

    async def get_task(self, task_id: str) -> TaskRecord | None: ...

    async def end_task(self, task_id: str, status: TaskStatus, reason: str, now: int) -> list[str]:
        """End a task and revoke every descendant; returns the ids that changed state."""

    async def reserve_call(
        self, key: str, reservation: str, maybe_write: bool, now: float, ttl: int, limits: SessionLimits
    ) -> SessionView:
        """Atomically count this call as in flight and return the session as the policy should see it."""

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
        """The call was allowed: count it, remember its labels, add it to the recent window."""

    async def release_call(self, key: str, reservation: str) -> None:
        """The call was not allowed (or failed): forget the reservation."""

    async def create_approval(self, approval: ApprovalRecord) -> None: ...

    async def get_approval(self, approval_id: str) -> ApprovalRecord | None: ...

    async def list_approvals(self, status: ApprovalStatus) -> list[ApprovalRecord]: ...

    async def decide_approval(
        self, approval_id: str, status: ApprovalStatus, approver: dict[str, Any], reason: str | None, now: int
    ) -> ApprovalRecord:
        """pending → approved/rejected, atomically; ApprovalConflict when not pending or expired."""

    async def consume_approval(self, approval_id: str, now: int) -> ApprovalRecord:
        """approved → consumed, atomically (single use); ApprovalConflict otherwise."""

    async def restore_approval(self, approval_id: str) -> None:
        """consumed → approved: the call it was consumed for did not go through."""

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...
