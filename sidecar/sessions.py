"""Session (chain) state: what the agent already did feeds the next decision.

The key is the task (``task:<id>``) when the call carries a task grant, else the agent plus
its MCP session (``agent:<spiffe id>:<Mcp-Session-Id or "default">``). A call is reserved
before the policy is asked (so parallel calls see each other), then committed on allow or
released otherwise. State per key is bounded: counters, a window of recent calls, a capped
label set.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from sidecar.config import SessionsConfig
from sidecar.identity import Identity
from sidecar.state import GRACE_SECONDS, SessionLimits, SessionView, Store, TaskRecord

MCP_SESSION_HEADER = "mcp-session-id"
MAX_SESSION_ID = 128


@dataclass
class Reservation:
    """One call's place in its session, to commit or release exactly once."""

    store: Store
    key: str
    id: str
    ttl: int
    limits: SessionLimits
    view: SessionView
    done: bool = False

    async def commit(self, write: bool, labels: list[str], entry: dict[str, Any]) -> None:
        self.done = True
        await self.store.commit_call(self.key, self.id, write, labels, entry, time.time(), self.ttl, self.limits)

    async def release(self) -> None:
        if not self.done:
            self.done = True
            await self.store.release_call(self.key, self.id)


class SessionTracker:
    def __init__(self, store: Store, config: SessionsConfig) -> None:
        self._store = store
        self._idle_ttl = config.idle_ttl_seconds
        self._limits = SessionLimits(
            recent_window=config.recent_window,
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
        reservation = str(uuid.uuid4())
        view = await self._store.reserve_call(key, reservation, maybe_write, now, ttl, self._limits)
        return Reservation(self._store, key, reservation, ttl, self._limits, view)
