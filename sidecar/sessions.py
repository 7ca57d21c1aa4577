"""Session (chain) state: what the agent already did feeds the next decision.

The key is the task (``task:<id>``) when the call carries a task grant, else the agent plus
its MCP session (``agent:<spiffe id>:<Mcp-Session-Id or "default">``). A call is reserved
before the policy is asked (so parallel calls see each other), then committed on allow or
released otherwise. State per key is bounded: counters, a window of recent calls, a capped
label set.

Both keys above are partly the agent's choice (a new Mcp-Session-Id or a new task starts
afresh), so each call is also reserved in the agent's own history, keyed by its verified SPIFFE
ID only: its calls of the last minute and when it last got each label (``input.agent_history``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from sidecar.config import SessionsConfig
from sidecar.identity import Identity
from sidecar.state import (
    GRACE_SECONDS,
    AgentHistory,
    AgentLimits,
    SessionLimits,
    SessionView,
    Store,
    StoreError,
    TaskRecord,
)

A = TypeVar("A")
B = TypeVar("B")

MCP_SESSION_HEADER = "mcp-session-id"
MAX_SESSION_ID = 128


@dataclass
class Reservation:
    """One call's place in its session and in its agent's history, to commit or release exactly once."""

    store: Store
    key: str
    id: str
    ttl: int
    limits: SessionLimits
    view: SessionView
    agent: str
    agent_limits: AgentLimits
    history: AgentHistory
    delegators: tuple[str, ...] = ()  # the call's task was delegated by these agents (nearest first)
    done: bool = False

    async def commit(self, write: bool, labels: list[str], entry: dict[str, Any]) -> None:
        self.done = True
        now = time.time()
        await _both(
            self.store,
            self.store.commit_call(self.key, self.id, write, labels, entry, now, self.ttl, self.limits),
            self.store.commit_agent_call(self.agent, self.id, labels, now, self.agent_limits),
        )
        # A delegate acts for its delegators: what it read under their grant arms their ratchets
        # (input.agent_history.labels) as if they had read it, or a delegator could have its
        # delegate fetch restricted data and then send it out itself without a human.
        for delegator in self.delegators if labels else ():
            await self.store.remember_agent_labels(delegator, labels, now, self.agent_limits)

    async def release(self) -> None:
        if not self.done:
            self.done = True
            store = self.store
            await _both(store, store.release_call(self.key, self.id), store.release_agent_call(self.agent, self.id))


async def _both(store: Store, first: Awaitable[A], second: Awaitable[B]) -> tuple[A, B]:
    """Run two updates of ``store``: both are attempted, and a failure of either is raised (the
    first's when both fail). Together when they wait on I/O; one after the other in process, where
    neither ever waits (``Store.in_process``)."""
    if store.in_process:
        results: list[Any] = []
        for update in (first, second):
            try:
                results.append(await update)
            except Exception as exc:  # the other update is still attempted, as gather would
                results.append(exc)
        one, two = results
    else:
        one, two = await asyncio.gather(first, second, return_exceptions=True)
    if isinstance(one, BaseException):
        raise one
    if isinstance(two, BaseException):
        raise two
    return cast(A, one), cast(B, two)


class SessionTracker:
    def __init__(self, store: Store, config: SessionsConfig) -> None:
        self._store = store
        self._idle_ttl = config.idle_ttl_seconds
        self._limits = SessionLimits(
            recent_window=config.recent_window,
            max_labels=config.max_labels,
            inflight_timeout_seconds=config.inflight_timeout_seconds,
        )
        self._agent_limits = AgentLimits(
            label_retention_seconds=config.agent_label_retention_seconds,
            max_labels=config.max_labels,
            inflight_timeout_seconds=config.inflight_timeout_seconds,
        )

    async def reserve(
        self, identity: Identity | None, task: TaskRecord | None, headers: dict[str, str], maybe_write: bool
    ) -> Reservation | None:
        """Reserve this call in its session; None for anonymous calls (they have no session)."""
        if identity is None:
            return None
        now = time.time()
        if task is not None:
            key, ttl = f"task:{task.id}", max(1, int(task.expires_at - now) + GRACE_SECONDS)
        else:
            session = headers.get(MCP_SESSION_HEADER, "default")[:MAX_SESSION_ID]
            key, ttl = f"agent:{identity.spiffe_id}:{session}", self._idle_ttl
        reservation, agent = str(uuid.uuid4()), str(identity.spiffe_id)
        try:
            view, history = await _both(
                self._store,
                self._store.reserve_call(key, reservation, maybe_write, now, ttl, self._limits),
                self._store.reserve_agent_call(agent, reservation, now, self._agent_limits),
            )
        except StoreError:
            # One of the two may have been reserved: give it back (a failure here only delays that
            # until the in-flight timeout, and the caller answers 503 either way).
            await asyncio.gather(
                self._store.release_call(key, reservation),
                self._store.release_agent_call(agent, reservation),
                return_exceptions=True,
            )
            raise
        delegators = tuple(task.chain) if task is not None else ()
        return Reservation(
            self._store, key, reservation, ttl, self._limits, view, agent, self._agent_limits, history, delegators
        )
