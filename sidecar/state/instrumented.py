"""A :class:`~sidecar.state.Store` that times every operation and counts its failures.

Wraps whichever backend runs (memory, Redis single, Cluster or Sentinel), so the metrics
(``authz_state_store_seconds``, ``authz_state_store_errors_total``, by operation) mean the same on
each. A failure is a :class:`~sidecar.state.StoreError` (the backend could not answer: the caller
got a 503); refusals the store decides (a conflict, too many approvals, an ended parent) are answers.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import Any, TypeVar

from sidecar import metrics
from sidecar.state import (
    AgentHistory,
    AgentLimits,
    ApprovalRecord,
    ApprovalStatus,
    PinState,
    SessionLimits,
    SessionView,
    Store,
    StoreError,
    TaskRecord,
    TaskStatus,
    ToolPin,
)

T = TypeVar("T")


async def _measured(operation: str, call: Awaitable[T]) -> T:
    started = time.perf_counter()
    try:
        return await call
    except StoreError:
        metrics.STORE_ERRORS.labels(operation).inc()
        raise
    finally:
        metrics.STORE_SECONDS.labels(operation).observe(time.perf_counter() - started)


class InstrumentedStore:
    """``store``, measured; otherwise exactly ``store``."""

    def __init__(self, store: Store) -> None:
        self.inner = store
        self.in_process = store.in_process

    async def create_task(self, task: TaskRecord, slot: str | None = None) -> None:
        await _measured("create_task", self.inner.create_task(task, slot))

    async def reserve_task_slot(self, agent: str, slot: str, now: float) -> int:
        return await _measured("reserve_task_slot", self.inner.reserve_task_slot(agent, slot, now))

    async def release_task_slot(self, agent: str, slot: str) -> None:
        await _measured("release_task_slot", self.inner.release_task_slot(agent, slot))

    async def get_task(self, task_id: str) -> TaskRecord | None:
        return await _measured("get_task", self.inner.get_task(task_id))

    async def end_task(self, task_id: str, status: TaskStatus, reason: str, now: int) -> list[str]:
        return await _measured("end_task", self.inner.end_task(task_id, status, reason, now))

    async def reserve_call(
        self, key: str, reservation: str, maybe_write: bool, now: float, ttl: int, limits: SessionLimits
    ) -> SessionView:
        return await _measured("reserve_call", self.inner.reserve_call(key, reservation, maybe_write, now, ttl, limits))

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
        await _measured("commit_call", self.inner.commit_call(key, reservation, write, labels, entry, now, ttl, limits))

    async def release_call(self, key: str, reservation: str) -> None:
        await _measured("release_call", self.inner.release_call(key, reservation))

    async def reserve_agent_call(self, agent: str, reservation: str, now: float, limits: AgentLimits) -> AgentHistory:
        return await _measured("reserve_agent_call", self.inner.reserve_agent_call(agent, reservation, now, limits))

    async def commit_agent_call(
        self, agent: str, reservation: str, labels: list[str], now: float, limits: AgentLimits
    ) -> None:
        await _measured("commit_agent_call", self.inner.commit_agent_call(agent, reservation, labels, now, limits))

    async def release_agent_call(self, agent: str, reservation: str) -> None:
        await _measured("release_agent_call", self.inner.release_agent_call(agent, reservation))

    async def remember_agent_labels(self, agent: str, labels: list[str], now: float, limits: AgentLimits) -> None:
        await _measured("remember_agent_labels", self.inner.remember_agent_labels(agent, labels, now, limits))

    async def create_approval(self, approval: ApprovalRecord, max_pending: int, now: int) -> ApprovalRecord:
        return await _measured("create_approval", self.inner.create_approval(approval, max_pending, now))

    async def get_approval(self, approval_id: str) -> ApprovalRecord | None:
        return await _measured("get_approval", self.inner.get_approval(approval_id))

    async def list_approvals(self, status: ApprovalStatus) -> list[ApprovalRecord]:
        return await _measured("list_approvals", self.inner.list_approvals(status))

    async def decide_approval(
        self, approval_id: str, status: ApprovalStatus, approver: dict[str, Any], reason: str | None, now: int
    ) -> ApprovalRecord:
        return await _measured(
            "decide_approval", self.inner.decide_approval(approval_id, status, approver, reason, now)
        )

    async def consume_approval(self, approval_id: str, now: int) -> ApprovalRecord:
        return await _measured("consume_approval", self.inner.consume_approval(approval_id, now))

    async def restore_approval(self, approval_id: str) -> None:
        await _measured("restore_approval", self.inner.restore_approval(approval_id))

    async def pin_tools(
        self, scope: str, hashes: dict[str, str], ttl: int, param_headers: dict[str, str] | None = None
    ) -> dict[str, PinState]:
        return await _measured("pin_tools", self.inner.pin_tools(scope, hashes, ttl, param_headers))

    async def tool_pin(self, scope: str, name: str) -> ToolPin | None:
        return await _measured("tool_pin", self.inner.tool_pin(scope, name))

    async def repin_tool(self, scope: str, name: str) -> bool:
        return await _measured("repin_tool", self.inner.repin_tool(scope, name))

    async def ping(self) -> bool:
        return await _measured("ping", self.inner.ping())

    async def close(self) -> None:
        await self.inner.close()
