"""What the request path hands the response path: one context per allowed MCP call, by decision id."""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ResponseContext:
    """An allowed MCP call, as its response will be judged."""

    decision_id: str
    method: str
    name: str | None
    request_id: str | int | None
    agent: str | None
    pin_scope: str | None  # the agent's session, where its tool definitions are pinned
    request_input: dict[str, Any]  # the check's input document: the policy judges the response in its light


class PendingResponses:
    """Contexts waiting for their response: bounded and short-lived, each taken at most once.

    The oldest entry is dropped when full; a response whose context is gone is refused (the
    response path fails closed), so the bound costs availability, never safety."""

    def __init__(self, max_entries: int = 10_000, ttl_seconds: float = 60.0) -> None:
        self._entries: OrderedDict[str, tuple[float, ResponseContext]] = OrderedDict()
        self._max = max_entries
        self._ttl = ttl_seconds

    def put(self, context: ResponseContext) -> None:
        now = time.monotonic()
        self._entries[context.decision_id] = (now + self._ttl, context)
        self._entries.move_to_end(context.decision_id)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
        while self._entries:
            expires, _ = next(iter(self._entries.values()))
            if expires > now:
                break
            self._entries.popitem(last=False)

    def take(self, decision_id: str) -> ResponseContext | None:
        """The context of ``decision_id``, removed: a decision id judges one response only."""
        entry = self._entries.pop(decision_id, None)
        if entry is None or entry[0] <= time.monotonic():
            return None
        return entry[1]

    def __len__(self) -> int:
        return len(self._entries)


def pin_scope(agent: str, task_id: str | None, session_id: str | None) -> str:
    """Where an agent's tool definitions are pinned: its task, else its MCP session, else itself."""
    if task_id:
        return f"{agent}|task:{task_id}"
    if session_id:
        return f"{agent}|mcp:{session_id[:128]}"
    return f"{agent}|agent"
