"""bench/capacity.py measures what it says: round trips counted in the client, Redis commands and
memory from the server (a real redis-server)."""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit

from bench.capacity import Report, Servers, measure_costs, measure_memory
from sidecar.state.redis import RedisStore


async def test_costs_and_memory_per_object(redis_url: str) -> None:
    prefix = f"capacity-{uuid.uuid4().hex[:8]}:"
    store = RedisStore.from_url(redis_url, prefix, 1000)
    servers = Servers([int(urlsplit(redis_url).port or 6379)])
    report = Report()
    try:
        await measure_costs(store, servers, report, n=5)
        await measure_memory(store, servers, prefix, 20, report, busy_agents=0)
    finally:
        await store.close()
    costs = {c.operation: c for c in report.costs}
    # The sidecar's hot path: read the task, reserve in session and agent history, commit both.
    assert costs["decision (hot path)"].round_trips == 5
    assert costs["open a task"].round_trips == 2 and costs["use it"].round_trips == 2
    assert all(c.commands >= c.round_trips for c in report.costs), "scripts run several commands each"
    task_keys = report.memory_usage_per["task, opened (with its tree)"]
    assert task_keys["keys"] == 3, "the task, its tree and its creator's open tasks"
    assert task_keys["{t}:task"] > 300, "the grant is stored whole"
    session = report.memory_usage_per["session, window full (20 calls in its last minute)"]
    assert session["keys"] == 4 and session["{s}:recent"] > 20 * 60, "h, minute, recent, labels; 20 entries kept"
    assert report.memory_usage_per["approval, pending"]["keys"] == 3, "the approval, the agent's index, same-request"
