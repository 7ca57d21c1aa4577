"""Bounded background work off the response's path (shadow evaluations, refusal reports).

At most ``limit`` coroutines run at a time; past it a new one is not started (the caller counts
it), so a slow or dead OPA can neither slow the live path nor let work pile up without bound.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


class BoundedTasks:
    """Tasks started on the running loop, at most ``limit`` at once, awaited on :meth:`drain`."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._pending: set[asyncio.Task[None]] = set()

    def start(self, work: Coroutine[Any, Any, None]) -> bool:
        """Run ``work`` in the background; False (and ``work`` closed unstarted) when at the limit."""
        if len(self._pending) >= self._limit:
            work.close()
            return False
        task = asyncio.get_running_loop().create_task(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return True

    async def drain(self) -> None:
        """Wait for the work in flight (each piece bounded by its own timeout)."""
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
