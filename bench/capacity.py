"""``python -m bench.capacity`` (``./taskw capacity``): what the Redis state store costs.

On a fresh local redis-server (no persistence) and a fresh local Redis Cluster (three primaries,
a replica each), through the store's own code (sidecar/state/redis.py):

* memory per object: ``MEMORY USAGE`` of every key it adds (value, name, keyspace entry) plus
  their share of the keyspace's and the expiry table's slots (``MEMORY STATS``), averaged over
  many objects; the allocator's fragmentation (RSS over this, typically 1.1 to 1.5) comes on top;
* Redis work per operation: client round trips (counted in the client) and commands Redis
  executed, scripts' own commands included (``INFO commandstats`` deltas), with their CPU time;
* a sample of S agents x 10 open tasks whose sessions each made 20 calls (their recent window
  full) within the last minute, at two sample sizes, and the linear extrapolation to 10,000 agents;
* decisions per second of the store's hot path (what the sidecar does per call under a task:
  read the task, reserve the call in its session and in the agent's history, commit both) with
  C concurrent callers, one instance against the Cluster.

A table on stdout, JSON in bench/results/capacity.json. Everything runs on this machine's cores,
the client included: throughput is a floor, the server CPU time per decision is the figure to
size with.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import redis

from devstack.redis_cluster import LocalRedisCluster
from devstack.redis_server import RedisServer
from sidecar.config import StateConfig
from sidecar.state import AgentLimits, ApprovalRecord, SessionLimits, TaskRecord
from sidecar.state.redis import RedisStore
from sidecar.tasks import child_task

RESULTS = Path(__file__).parent / "results"
LIMITS = SessionLimits()  # the defaults: recent window 20, 64 labels
AGENT_LIMITS = AgentLimits()
LABELS = ["pii_read", "external_send", "tickets", "customer_data"]
TARGET_AGENTS = 10_000
TASKS_PER_AGENT = 10
WINDOW = LIMITS.recent_window


def agent_id() -> str:
    return f"spiffe://prod.example.com/ns/agents/sa/agent-{uuid.uuid4().hex[:12]}"


def new_task(sub: str, parent: TaskRecord | None = None) -> TaskRecord:
    now, task_id, scopes = int(time.time()), str(uuid.uuid4()), ["tickets:read", "tickets:write", "docs:read"]
    if parent is not None:
        return child_task(parent, sub, scopes, 3600, now, task_id)
    purpose = "triage the customer's open tickets"
    return TaskRecord(task_id, sub, purpose, scopes, issued_at=now, expires_at=now + 3600, root_id=task_id)


def new_approval(agent: str) -> ApprovalRecord:
    now = int(time.time())
    return ApprovalRecord(
        id=str(uuid.uuid4()),
        agent=agent,
        task_id=str(uuid.uuid4()),
        fingerprint=f"sha256:{uuid.uuid4().hex}{uuid.uuid4().hex}",
        created_at=now,
        expires_at=now + 900,
        decision_id=str(uuid.uuid4()),
        reasons=["deleting records needs a human approver"],
        summary={"method": "DELETE", "path": "/api/records/31", "arguments": {"ids": [31]}},
        delegation_chain=[],
        approvers={"groups": ["security-approvers"]},
    )


def entry(i: int) -> dict[str, Any]:
    """A recent-window entry as the pipeline records it."""
    return {"at": int(time.time()), "method": "POST", "path": f"/api/tickets/{1000 + i}", "tool": None, "write": True}


async def decision(store: RedisStore, agent: str, task: TaskRecord, i: int) -> None:
    """The store's hot path of one allowed call under a task, as the sidecar runs it."""
    got = await store.get_task(task.id)
    if got is None or got.status != "active":
        raise RuntimeError(f"task {task.id} is not active")
    key, reservation, now = f"task:{task.id}", str(uuid.uuid4()), time.time()
    await asyncio.gather(
        store.reserve_call(key, reservation, True, now, 3600, LIMITS),
        store.reserve_agent_call(agent, reservation, now, AGENT_LIMITS),
    )
    labels = LABELS[: 1 + i % len(LABELS)]
    await asyncio.gather(
        store.commit_call(key, reservation, True, labels, entry(i), now, 3600, LIMITS),
        store.commit_agent_call(agent, reservation, labels, now, AGENT_LIMITS),
    )


async def gather_bounded(calls: Sequence[Callable[[], Awaitable[Any]]], concurrency: int = 64) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def one(call: Callable[[], Awaitable[Any]]) -> None:
        async with gate:
            await call()

    await asyncio.gather(*(one(c) for c in calls))


# -- the servers ---------------------------------------------------------------------------------


class Servers:
    """Sync admin access to the primaries (memory, commandstats), whatever the topology."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports

    def each(self) -> Iterator[redis.Redis]:
        for port in self.ports:
            with redis.Redis(host="127.0.0.1", port=port, decode_responses=True) as client:
                yield client

    def state_bytes(self, prefix: str) -> tuple[float, int]:
        """(bytes, keys) of the keys under ``prefix``: MEMORY USAGE of each (its value, name and
        entry in the keyspace) plus its share of the keyspace's hash tables and of the expiry
        table (MEMORY STATS, averaged over all keys so that a table doubling, which happens at
        powers of two, is not charged to whatever was created just then)."""
        usage, keys, table, all_keys = 0, 0, 0.0, 0
        for c in self.each():
            names = list(c.scan_iter(match=f"{prefix}*", count=1000))
            pipe = c.pipeline(transaction=False)
            for name in names:
                pipe.memory_usage(name, samples=0)
            usage += sum(int(u or 0) for u in (pipe.execute() if names else []))
            keys += len(names)
            stats = c.memory_stats()
            for db, value in stats.items():
                if db.startswith("db.") and isinstance(value, dict):
                    count = int(c.dbsize())
                    # MEMORY USAGE already counts each key's entry (24 B) and object header (16 B).
                    table += sum(float(v) for v in value.values()) - 40 * count
                    all_keys += count
        return usage + (table / all_keys if all_keys else 0.0) * keys, keys

    def cpu_seconds(self) -> float:
        """CPU time the servers used (user + system), commands, networking and replication alike."""
        return sum(float(c.info("cpu")["used_cpu_user"]) + float(c.info("cpu")["used_cpu_sys"]) for c in self.each())

    def reset_stats(self) -> None:
        for c in self.each():
            c.config_resetstat()

    def commandstats(self) -> dict[str, tuple[int, int]]:
        """command → (calls, usec), summed over the primaries."""
        total: dict[str, tuple[int, int]] = {}
        for c in self.each():
            for name, stat in c.info("commandstats").items():
                calls, usec = total.get(name.removeprefix("cmdstat_"), (0, 0))
                total[name.removeprefix("cmdstat_")] = (calls + int(stat["calls"]), usec + int(stat["usec"]))
        return total

    def memory_usage(self, prefix: str) -> dict[str, int]:
        """MEMORY USAGE summed per kind of key (the key name with its ids taken out)."""
        kinds: dict[str, int] = {}
        for c in self.each():
            for key in c.scan_iter(match=f"{prefix}*", count=1000):
                kind = _kind(key.removeprefix(prefix))
                kinds[kind] = kinds.get(kind, 0) + int(c.memory_usage(key, samples=0) or 0)
        return kinds


def _kind(key: str) -> str:
    """``{t:ID}:task:ID`` → ``{t}:task``, ``{a:AGENT}:same:HASH`` → ``{a}:same``."""
    tag, _, rest = key.partition("}")
    name = rest.lstrip(":").split(":")[0] if rest else ""
    return f"{tag.split(':')[0]}}}:{name}" if tag.startswith("{") else key.split(":")[0]


@contextmanager
def round_trips(store: RedisStore) -> Iterator[list[int]]:
    """Counts the client's round trips to Redis (a command, or a pipeline sent at once)."""
    client: Any = store.client
    counter = [0]
    execute, pipeline = client.execute_command, client.pipeline

    async def counted(*args: Any, **kwargs: Any) -> Any:
        counter[0] += 1
        return await execute(*args, **kwargs)

    def counting_pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = pipeline(*args, **kwargs)
        send = pipe.execute

        async def execute_counted(*a: Any, **k: Any) -> Any:
            counter[0] += 1
            return await send(*a, **k)

        pipe.execute = execute_counted
        return pipe

    client.execute_command, client.pipeline = counted, counting_pipeline
    try:
        yield counter
    finally:
        del client.execute_command, client.pipeline


# -- measurements --------------------------------------------------------------------------------


@dataclass
class Cost:
    operation: str
    round_trips: float
    commands: float
    server_usec: float


@dataclass
class Report:
    bytes_per: dict[str, float] = field(default_factory=dict)
    memory_usage_per: dict[str, dict[str, float]] = field(default_factory=dict)
    costs: list[Cost] = field(default_factory=list)
    sample: list[dict[str, float]] = field(default_factory=list)
    target: dict[str, float] = field(default_factory=dict)
    throughput: dict[str, dict[str, float]] = field(default_factory=dict)
    cluster_sample: dict[str, float] = field(default_factory=dict)


async def measure_memory(
    store: RedisStore, servers: Servers, prefix: str, n: int, report: Report, busy_agents: int = 20
) -> None:
    """Bytes per object: the allocator's delta over ``n`` of them (and MEMORY USAGE per key kind);
    ``busy_agents`` agents with hundreds of calls in their last minute give the cost of a call past
    128 (0: not measured)."""

    async def per(name: str, make: Callable[[], Sequence[Callable[[], Awaitable[Any]]]]) -> None:
        calls = make()
        warm, measured = calls[: len(calls) // 5], calls[len(calls) // 5 :]
        await gather_bounded(warm)  # scripts loaded, first-time allocations made: not counted
        before_usage = servers.memory_usage(prefix)
        before, before_keys = servers.state_bytes(prefix)
        await gather_bounded(measured)
        after, after_keys = servers.state_bytes(prefix)
        report.bytes_per[name] = round((after - before) / len(measured), 1)
        after_usage = servers.memory_usage(prefix)
        report.memory_usage_per[name] = {
            kind: round((after_usage.get(kind, 0) - before_usage.get(kind, 0)) / len(measured), 1)
            for kind in sorted(after_usage)
            if after_usage.get(kind, 0) != before_usage.get(kind, 0)
        }
        report.memory_usage_per[name]["keys"] = round((after_keys - before_keys) / len(measured), 2)

    roots = [new_task(agent_id()) for _ in range(n)]
    await per("task, opened (with its tree)", lambda: [partial(store.create_task, t) for t in roots])
    children = [new_task(agent_id(), parent=t) for t in roots]
    await per("task, delegated", lambda: [partial(store.create_task, t) for t in children])

    async def session(t: TaskRecord, calls: int) -> None:
        key, now = f"task:{t.id}", time.time()
        for i in range(calls):
            await store.reserve_call(key, f"r{i}", True, now, 3600, LIMITS)
            labels = LABELS[: 1 + i % len(LABELS)]
            await store.commit_call(key, f"r{i}", True, labels, entry(i), now, 3600, LIMITS)

    full = f"session, window full ({WINDOW} calls in its last minute)"
    await per(full, lambda: [partial(session, t, WINDOW) for t in roots])
    await per("longer session", lambda: [partial(session, t, 3 * WINDOW) for t in children])
    longer = report.bytes_per.pop("longer session")
    report.memory_usage_per.pop("longer session")
    report.bytes_per["each further call in a session's last minute"] = round(
        (longer - report.bytes_per[full]) / (2 * WINDOW), 1
    )

    async def history(agent: str, calls: int) -> None:
        now = time.time()
        for i in range(calls):
            await store.reserve_agent_call(agent, f"r{i}", now, AGENT_LIMITS)
            await store.commit_agent_call(agent, f"r{i}", LABELS, now, AGENT_LIMITS)

    one = f"agent history (1 call, {len(LABELS)} labels)"
    await per(one, lambda: [partial(history, a, 1) for a in (agent_id() for _ in range(n))])
    await per("busy agent", lambda: [partial(history, a, 41) for a in (agent_id() for _ in range(n))])
    busy = report.bytes_per.pop("busy agent")
    report.memory_usage_per.pop("busy agent")
    report.bytes_per["each further call in an agent's last minute"] = round((busy - report.bytes_per[one]) / 40, 1)
    # Past 128 entries (zset-max-listpack-entries) a sorted set changes encoding: each entry costs more.
    if busy_agents:
        for calls in (150, 350):
            await per(
                f"{calls}",
                partial(
                    lambda calls: [partial(history, a, calls) for a in (agent_id() for _ in range(busy_agents))], calls
                ),
            )
        report.memory_usage_per.pop("150")
        report.memory_usage_per.pop("350")
        per_call = (report.bytes_per.pop("350") - report.bytes_per.pop("150")) / 200
        report.bytes_per["each call past 128 in one agent's (or session's) last minute"] = round(per_call, 1)
    approvals = [new_approval(agent_id()) for _ in range(n)]
    await per(
        "approval, pending",
        lambda: [partial(lambda a: store.create_approval(a, 20, int(time.time())), a) for a in approvals],
    )


async def measure_costs(store: RedisStore, servers: Servers, report: Report, n: int = 200) -> None:
    """Round trips, Redis commands and server CPU per operation (averaged over ``n``)."""

    async def cost(operation: str, calls: list[Callable[[], Awaitable[Any]]]) -> None:
        await calls[0]()  # its scripts loaded: not counted
        calls = calls[1:]
        servers.reset_stats()
        with round_trips(store) as counter:
            for call in calls:  # one at a time: exact counts
                await call()
        stats = servers.commandstats()
        commands = sum(c for name, (c, _) in stats.items() if name not in ("config|resetstat", "info"))
        usec = sum(u for name, (_, u) in stats.items() if name not in ("config|resetstat", "info"))
        report.costs.append(
            Cost(
                operation,
                round(counter[0] / len(calls), 2),
                round(commands / len(calls), 1),
                round(usec / len(calls), 1),
            )
        )

    agent = agent_id()
    roots = [new_task(agent) for _ in range(n)]
    await cost("open a task", [partial(store.create_task, t) for t in roots])
    children = [new_task(agent_id(), parent=t) for t in roots]
    await cost("delegate it", [partial(store.create_task, t) for t in children])
    await cost("decision (hot path)", [partial(decision, store, agent, t, i) for i, t in enumerate(roots)])
    await cost(
        "revoke a 2-task tree",
        [partial(lambda t: store.end_task(t.id, "revoked", "bench", int(time.time())), t) for t in roots],
    )
    approvals = [new_approval(agent_id()) for _ in range(n)]
    await cost(
        "ask for an approval", [partial(lambda a: store.create_approval(a, 20, int(time.time())), a) for a in approvals]
    )
    await cost(
        "approve it",
        [
            partial(lambda a: store.decide_approval(a.id, "approved", {"kind": "oidc"}, None, int(time.time())), a)
            for a in approvals
        ],
    )
    await cost("use it", [partial(lambda a: store.consume_approval(a.id, int(time.time())), a) for a in approvals])


async def measure_sample(store: RedisStore, servers: Servers, prefix: str, agents: int) -> dict[str, float]:
    """``agents`` agents with 10 open tasks each, every task's session with its window full, every
    call within the last minute: bytes per agent."""
    before, _ = servers.state_bytes(prefix)
    population: list[tuple[str, list[TaskRecord]]] = [(agent_id(), []) for _ in range(agents)]
    opened: list[Callable[[], Awaitable[Any]]] = []
    for agent, tasks in population:
        for _ in range(TASKS_PER_AGENT):
            tasks.append(new_task(agent))
            opened.append(partial(store.create_task, tasks[-1]))
    await gather_bounded(opened)
    calls = [partial(decision, store, agent, t, i) for agent, tasks in population for t in tasks for i in range(WINDOW)]
    started = time.monotonic()
    await gather_bounded(calls)
    elapsed = time.monotonic() - started
    used = servers.state_bytes(prefix)[0] - before
    return {
        "agents": agents,
        "tasks": agents * TASKS_PER_AGENT,
        "decisions": len(calls),
        "bytes": used,
        "bytes_per_agent": round(used / agents, 1),
        "decisions_per_s": round(len(calls) / elapsed, 1),
    }


async def measure_throughput(store: RedisStore, servers: Servers, seconds: float, concurrency: int) -> dict[str, float]:
    """Decisions per second of the hot path with ``concurrency`` callers over 200 agents x 2 tasks."""
    population = [(agent, new_task(agent)) for agent in (agent_id() for _ in range(200)) for _ in range(2)]
    await gather_bounded([partial(store.create_task, t) for _, t in population])
    for agent, t in population[:concurrency]:  # warm: connections open, scripts loaded
        await decision(store, agent, t, 0)
    servers.reset_stats()
    cpu = servers.cpu_seconds()
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    done = 0

    async def caller(offset: int) -> None:
        nonlocal done
        i = offset
        while time.monotonic() < deadline:
            agent, t = population[i % len(population)]
            start = time.monotonic()
            await decision(store, agent, t, i)
            latencies.append(time.monotonic() - start)
            done += 1
            i += concurrency

    started = time.monotonic()
    await asyncio.gather(*(caller(k) for k in range(concurrency)))
    elapsed = time.monotonic() - started
    cpu = servers.cpu_seconds() - cpu
    stats = servers.commandstats()
    usec = sum(u for name, (_, u) in stats.items() if name not in ("config|resetstat", "info"))
    latencies.sort()
    return {
        "concurrency": concurrency,
        "decisions_per_s": round(done / elapsed, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 2),
        "command_usec_per_decision": round(usec / done, 1),
        "primary_cpu_usec_per_decision": round(cpu * 1e6 / done, 1),
    }


# -- the run -------------------------------------------------------------------------------------


@asynccontextmanager
async def connected(config: StateConfig) -> AsyncIterator[RedisStore]:
    store = RedisStore.from_config(config)
    try:
        yield store
    finally:
        await store.close()


async def run(workdir: Path, n: int, samples: tuple[int, int], seconds: float, concurrency: int) -> Report:
    report = Report()
    single = RedisServer(workdir / "single", extra_args=["--appendonly", "no"])
    single.start()
    try:
        servers = Servers([single.port])
        base = {"backend": "redis", "redis_url": single.url, "timeout_ms": 5000}
        async with connected(StateConfig(key_prefix="mem:", **base)) as store:
            await measure_memory(store, servers, "mem:", n, report)
        async with connected(StateConfig(key_prefix="cost:", **base)) as store:
            await measure_costs(store, servers, report)
        for size in samples:
            async with connected(StateConfig(key_prefix=f"sample{size}:", **base)) as store:
                report.sample.append(await measure_sample(store, servers, f"sample{size}:", size))
        async with connected(StateConfig(key_prefix="load:", **base)) as store:
            report.throughput["single instance"] = await measure_throughput(store, servers, seconds, concurrency)
    finally:
        single.stop()
    with LocalRedisCluster(workdir / "cluster") as cluster:
        primaries = Servers(cluster.primary_ports())
        config = StateConfig(
            backend="redis",
            redis_mode="cluster",
            redis_cluster_nodes=cluster.seeds,
            key_prefix="load:",
            timeout_ms=5000,
        )
        async with connected(config) as store:
            report.throughput["cluster, 3 primaries"] = await measure_throughput(store, primaries, seconds, concurrency)
        async with connected(config.model_copy(update={"key_prefix": "sample:"})) as store:
            report.cluster_sample = await measure_sample(store, primaries, "sample:", samples[0])
    # The slope between the two samples: what one more agent costs (fixed costs cancel out).
    small, large = report.sample[0], report.sample[-1]
    per_agent = (large["bytes"] - small["bytes"]) / (large["agents"] - small["agents"])
    report.target = {
        "agents": TARGET_AGENTS,
        "tasks": TARGET_AGENTS * TASKS_PER_AGENT,
        "bytes_per_agent": round(per_agent),
        "mib": round(per_agent * TARGET_AGENTS / 2**20, 1),
        "mib_with_one_replica": round(2 * per_agent * TARGET_AGENTS / 2**20, 1),
    }
    return report


def render(report: Report) -> str:
    lines = [
        "Memory per object, one instance: MEMORY USAGE of its keys plus their share of the keyspace's tables",
        f"  {'object':<60} {'bytes':>8} {'MEMORY USAGE':>13} {'new keys':>9}",
    ]
    for name, value in report.bytes_per.items():
        usage = report.memory_usage_per.get(name)
        total = f"{sum(v for k, v in usage.items() if k != 'keys'):>13,.0f}" if usage else f"{'':>13}"
        keys = f"{usage['keys']:>9}" if usage else f"{'':>9}"
        lines.append(f"  {name:<60} {value:>8,.0f} {total} {keys}")
    lines += [
        "",
        "Redis work per operation (one at a time)",
        f"  {'operation':<24} {'round trips':>12} {'commands':>9} {'server us':>10}",
    ]
    lines += [f"  {c.operation:<24} {c.round_trips:>12} {c.commands:>9} {c.server_usec:>10}" for c in report.costs]
    lines += [
        "",
        f"Sample: agents x {TASKS_PER_AGENT} open tasks, each session {WINDOW} calls (window full,"
        " all in the last minute)",
    ]
    lines += [
        f"  {int(s['agents']):>5} agents {int(s['tasks']):>6} tasks {int(s['decisions']):>7} decisions "
        f"{s['bytes'] / 2**20:>7.1f} MiB {s['bytes_per_agent']:>9,.0f} B/agent "
        f"({s['decisions_per_s']:,.0f} decisions/s)"
        for s in report.sample
    ]
    t = report.target
    lines += [
        f"  -> {t['bytes_per_agent']:,.0f} B per further agent (slope between the samples); "
        f"{TARGET_AGENTS:,} agents x {TASKS_PER_AGENT}: {t['mib']:,.1f} MiB "
        f"({t['mib_with_one_replica']:,.1f} MiB with a replica each)",
        f"  the smaller sample on the Cluster (its primaries summed): "
        f"{report.cluster_sample['bytes_per_agent']:,.0f} B/agent",
        "",
        "Hot path throughput (this machine: client, servers and replicas share its cores)",
        f"  {'setup':<22} {'callers':>8} {'decisions/s':>12} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'command us':>11} {'primary CPU us':>15}  (per decision)",
    ]
    lines += [
        f"  {name:<22} {r['concurrency']:>8} {r['decisions_per_s']:>12,.0f} {r['p50_ms']:>8} {r['p99_ms']:>8} "
        f"{r['command_usec_per_decision']:>11} {r['primary_cpu_usec_per_decision']:>15}"
        for name, r in report.throughput.items()
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--objects", type=int, default=1000, help="objects per memory figure (default 1000)")
    parser.add_argument("--samples", type=int, nargs=2, default=(50, 100), help="sample sizes in agents")
    parser.add_argument("--seconds", type=float, default=5.0, help="throughput run per setup")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--out", type=Path, default=RESULTS / "capacity.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="authz-capacity-") as tmp:
        runner: Any = asyncio.run
        try:
            import uvloop  # the sidecar's event loop

            runner = uvloop.run
        except ImportError:
            pass
        report = runner(run(Path(tmp), args.objects, tuple(args.samples), args.seconds, args.concurrency))
    print(render(report))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"generated_at": time.time(), **asdict(report)}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
