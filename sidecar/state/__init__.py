"""State that feeds later decisions: task grants and their revocation, session (chain) state,
and step-up approvals. One interface, two backends: memory (one replica) and Redis (several
replicas, restarts). Updates are atomic per task; a store failure is a :class:`StoreError`,
which callers turn into a 503 — never an allow.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

from sidecar.errors import Kind, SidecarError

TaskStatus = Literal["active", "completed", "revoked"]
# Records outlive their expiry by this much, so a late call still gets "expired", not "unknown".
GRACE_SECONDS = 60


class StoreError(SidecarError):
    """The state backend is unreachable or failed; the request must fail closed."""

    KIND = Kind.UNAVAILABLE
    CODE = "store"


class ParentEnded(SidecarError):
    """A delegated task cannot be created: its parent is no longer active."""

    KIND = Kind.CONFLICT
    CODE = "parent_ended"


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


@dataclass(frozen=True)
class AgentLimits:
    """Bounds of the per-agent history (keyed by the verified SPIFFE ID only, whatever the session)."""

    label_retention_seconds: int = 86_400
    max_labels: int = 64
    inflight_timeout_seconds: int = 30
    max_minute_entries: int = 10_000


@dataclass
class AgentHistory:
    """``input.agent_history``: what this agent did across all its sessions and tasks.

    ``calls_last_minute`` counts its allowed calls of the last minute plus its other calls in
    flight; ``labels`` maps each remembered label to when it was last recorded (unix seconds),
    for labels recorded within the retention."""

    calls_last_minute: int
    labels: dict[str, int]


# An open-task request in flight stops counting against the agent's cap after this long.
TASK_SLOT_TIMEOUT_SECONDS = 60


def task_creator(task: TaskRecord) -> str:
    """Who opened a task: the delegator for a delegated one (nearest first in ``chain``), else its holder.

    The open-task cap counts tasks by creator, so delegations count against the delegator and
    no agent can fill another's cap by delegating to it."""
    return task.chain[0] if task.chain else task.sub


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
    summary_cuts: list[dict[str, Any]] = field(default_factory=list)  # what the approver's view leaves out
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

    @property
    def same_request_key(self) -> str:
        """Approvals with this key ask for the same thing: the agent, task and exact request, under
        the same approver requirements (a request that now needs stronger approvers is asked anew)."""
        bound = [self.agent, self.task_id, self.fingerprint, self.data_class, self.approvers]
        return hashlib.sha256(json.dumps(bound, sort_keys=True).encode()).hexdigest()


class ApprovalConflict(SidecarError):
    """The approval is not in the state the operation needs (already decided, used, or expired)."""

    KIND = Kind.CONFLICT
    CODE = "approval_conflict"


class TooManyApprovals(SidecarError):
    """The agent already has as many pending approvals as it may; ``pending`` counts them."""

    KIND = Kind.TOO_MANY
    CODE = "too_many_approvals"

    def __init__(self, agent: str, pending: int) -> None:
        super().__init__(agent)
        self.agent = agent
        self.pending = pending


PinState = Literal["new", "same", "changed"]


@dataclass(frozen=True)
class ToolPin:
    """A tool ``scope`` has listed: its pin's state, and the ``x-mcp-header`` annotations of the
    definition it listed last (``sidecar.mcp_headers.encode_declared``'s text; None when that
    listing recorded none)."""

    state: PinState
    param_headers: str | None = None


class Store(Protocol):
    """What the governance features need from a state backend."""

    # True when every operation completes without waiting on I/O (the memory store): a call's two
    # updates (its session, its agent's history) then run one after the other, since running them
    # concurrently would only add two tasks and a gather to the event loop for each.
    in_process: bool

    async def create_task(self, task: TaskRecord, slot: str | None = None) -> None:
        """Store a new task; for a delegated task, atomically require an active parent (else ParentEnded).

        ``slot``: the creator's open-task reservation (:meth:`reserve_task_slot`) this task replaces."""

    async def reserve_task_slot(self, agent: str, slot: str, now: float) -> int:
        """Atomically count an open-task request of ``agent`` as in flight; returns how many tasks it
        created that are still active and unexpired, plus its other requests in flight."""

    async def release_task_slot(self, agent: str, slot: str) -> None:
        """The request did not create a task: forget its reservation."""

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

    async def reserve_agent_call(self, agent: str, reservation: str, now: float, limits: AgentLimits) -> AgentHistory:
        """Like :meth:`reserve_call`, for the agent's own history (whatever the session or task)."""

    async def commit_agent_call(
        self, agent: str, reservation: str, labels: list[str], now: float, limits: AgentLimits
    ) -> None:
        """The call was allowed: count it in the agent's last minute and record when it got each label."""

    async def release_agent_call(self, agent: str, reservation: str) -> None:
        """The call was not allowed (or failed): forget the agent-level reservation."""

    async def remember_agent_labels(self, agent: str, labels: list[str], now: float, limits: AgentLimits) -> None:
        """Record when ``agent`` got each of ``labels`` without counting a call of its own: a delegate
        acted for it under its grant. The same cap and retention as :meth:`commit_agent_call`."""

    async def create_approval(self, approval: ApprovalRecord, max_pending: int, now: int) -> ApprovalRecord:
        """Atomically: the agent's unexpired pending approval for the same request
        (:attr:`ApprovalRecord.same_request_key`) if there is one, else ``approval``, stored; but
        TooManyApprovals when the agent already has ``max_pending`` unexpired pending approvals."""

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

    async def pin_tools(
        self, scope: str, hashes: dict[str, str], ttl: int, param_headers: dict[str, str] | None = None
    ) -> dict[str, PinState]:
        """Pin each tool's definition hash the first time ``scope`` (an agent's session) lists it.

        Per tool: ``new`` (pinned now), ``same`` (matches its pin) or ``changed`` (differs: the
        pin stays, the new hash is held until :meth:`repin_tool`). ``ttl`` renews the scope.
        ``param_headers`` (per tool, opaque text) replaces what the tool's last listing recorded
        whatever its pin's state: a client mirrors arguments by the definition it saw last."""
        ...

    async def tool_pin(self, scope: str, name: str) -> ToolPin | None:
        """``same`` or ``changed`` for a tool ``scope`` has listed, with its recorded
        ``param_headers``; None when it never did."""
        ...

    async def repin_tool(self, scope: str, name: str) -> bool:
        """Accept a changed tool's held definition as its pin (after a human re-approved it)."""
        ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...
