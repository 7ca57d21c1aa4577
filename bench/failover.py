"""``python -m bench.failover``: the Redis state store while its primary dies, under load.

For a real Redis Cluster (three primaries, a replica each) and a real Sentinel set-up (a primary,
a replica, three sentinels), all on loopback: workers call the store in a loop — read a revoked
task, count calls in a session, try to use approved approvals, create and revoke delegated
tasks, and (Cluster) read a task on another primary. The primary serving those keys is killed
(SIGKILL); once its replica has taken over, the killed node is started again (it comes back as a
replica, as an orchestrator would restart it). Measured:

  hot path back    kill → reads and session calls on the killed primary's keys succeed again
                   (the replica was promoted and the client found it on its own)
  acked back       kill → a revocation is acknowledged again (a replica confirms it: WAIT 1)
  other primaries  Cluster: calls on keys of the primaries that stayed up that succeeded meanwhile

Checked (any failure is a violation): every call either answers or raises StoreError (the
sidecar's 503), a revoked task is never seen active, no approval is used twice, every
acknowledged revocation is still in force after the failover.

A table on stdout, JSON in bench/results/failover.json; exit 1 on a violation or no recovery.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from devstack.redis_cluster import LocalRedisCluster, LocalSentinel
from devstack.redis_server import RedisServer
from sidecar.config import StateConfig
from sidecar.state import (
    AgentLimits,
    ApprovalConflict,
    ApprovalRecord,
    ParentEnded,
    SessionLimits,
    StoreError,
    TaskRecord,
)
from sidecar.state.redis import RedisStore, hash_tag
from sidecar.tasks import child_task

RESULTS = Path(__file__).parent / "results"
LIMITS = SessionLimits()
AGENT_LIMITS = AgentLimits()
TOPOLOGIES = ("cluster", "sentinel")
APPROVALS = 60
T = TypeVar("T")


@dataclass
class Sample:
    at: float
    op: str
    affected: bool  # on the primary that is killed
    ok: bool


@dataclass
class FailoverRun:
    topology: str
    killed: str = ""
    calls: int = 0
    answered: int = 0
    store_errors: int = 0
    hot_path_back_s: float | None = None
    acked_back_s: float | None = None
    other_primaries_ok: int = 0
    revocations_acknowledged: int = 0
    approvals: int = 0
    approvals_used: int = 0
    violations: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations and self.hot_path_back_s is not None and self.acked_back_s is not None


def _task(parent: TaskRecord | None = None, sub: str | None = None, task_id: str | None = None) -> TaskRecord:
    now = int(time.time())
    task_id = task_id or str(uuid.uuid4())
    sub = sub or f"spiffe://demo.local/agent/{uuid.uuid4().hex[:12]}"
    if parent is not None:
        return child_task(parent, sub, ["tickets:write"], 600, now, task_id)
    return TaskRecord(task_id, sub, "failover", ["tickets:write"], issued_at=now, expires_at=now + 600, root_id=task_id)


def _approval(approval_id: str) -> ApprovalRecord:
    now = int(time.time())
    return ApprovalRecord(
        id=approval_id,
        agent=f"spiffe://demo.local/agent/{uuid.uuid4().hex[:12]}",
        task_id=None,
        fingerprint=f"sha256:{uuid.uuid4().hex}",
        created_at=now,
        expires_at=now + 600,
        decision_id="failover",
        reasons=["failover"],
        summary={},
    )


class _Topology:
    """Where the keys live, and which server to kill."""

    def __init__(self, kind: str, workdir: Path) -> None:
        self.kind = kind
        self.cluster = LocalRedisCluster(workdir / "cluster") if kind == "cluster" else None
        self.sentinel = LocalSentinel(workdir / "sentinel") if kind == "sentinel" else None

    def start(self) -> None:
        if self.cluster is not None:
            self.cluster.start()
        elif self.sentinel is not None:
            self.sentinel.start()

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
        elif self.sentinel is not None:
            self.sentinel.stop()

    def config(self, prefix: str, replica_acks: int | None = None) -> StateConfig:
        common: dict[str, Any] = {
            "backend": "redis",
            "key_prefix": prefix,
            "timeout_ms": 300,
            "replica_ack_timeout_ms": 100,
            "replica_acks": replica_acks,
        }
        if self.cluster is not None:
            return StateConfig(redis_mode="cluster", redis_cluster_nodes=self.cluster.seeds, **common)
        assert self.sentinel is not None
        return StateConfig(
            redis_mode="sentinel", sentinel_nodes=self.sentinel.nodes, sentinel_service=self.sentinel.service, **common
        )

    def restart(self, server: RedisServer) -> None:
        """The killed server back (an orchestrator restarts it): a Cluster node rejoins as a replica
        of the node that took its slots; a Sentinel-managed one starts as the new primary's replica."""
        if self.sentinel is not None:
            self.sentinel.restart_as_replica(server)
        else:
            server.start()

    def server_for(self, tag: str) -> RedisServer:
        """The server that serves keys with this hash tag now."""
        if self.cluster is not None:
            return self.cluster.primary_for(tag)
        assert self.sentinel is not None
        return self.sentinel.current_primary()

    def on(self, server: RedisServer, kind: str, make: Callable[[], str]) -> str:
        """A fresh name whose hash tag (``kind``) lives on ``server`` (bounded search)."""
        for _ in range(200):
            name = make()
            if self.server_for(hash_tag(kind, name)) is server:
                return name
        raise RuntimeError(f"no {kind} name on port {server.port} in 200 tries")

    def off(self, server: RedisServer, kind: str, make: Callable[[], str]) -> str | None:
        if self.cluster is None:
            return None
        for _ in range(200):
            name = make()
            if self.server_for(hash_tag(kind, name)) is not server:
                return name
        raise RuntimeError(f"no {kind} name off port {server.port} in 200 tries")


class _Load:
    def __init__(self, store: RedisStore, run: FailoverRun) -> None:
        self.store = store
        self.run = run
        self.samples: list[Sample] = []
        self.stop = asyncio.Event()
        self.acknowledged: list[str] = []  # tasks whose revocation end_task acknowledged
        self.used: dict[str, int] = {}

    async def call(self, op: str, affected: bool, action: Callable[[], Awaitable[Any]]) -> tuple[bool, Any]:
        """(answered, what): an answer, or an outage (StoreError, the sidecar's 503)."""
        self.run.calls += 1
        try:
            result = await action()
        except StoreError:
            self.run.store_errors += 1
            self.samples.append(Sample(time.monotonic(), op, affected, False))
            return False, None
        except (ApprovalConflict, ParentEnded) as answer:  # an answer, not an outage
            result = answer
        except Exception as exc:  # neither an answer nor StoreError: the sidecar could not fail closed
            self.run.violations.append(f"{op}: {type(exc).__name__}: {exc}")
            self.samples.append(Sample(time.monotonic(), op, affected, False))
            return False, None
        self.run.answered += 1
        self.samples.append(Sample(time.monotonic(), op, affected, True))
        return True, result

    async def loop(self, step: Callable[[], Awaitable[None]]) -> None:
        while not self.stop.is_set():
            await step()
            await asyncio.sleep(0.005)

    def last(self, ops: tuple[str, ...], ok: bool, after: float) -> float | None:
        times = [s.at for s in self.samples if s.op in ops and s.ok is ok and s.at >= after]
        return max(times) if times else None

    def first(self, ops: tuple[str, ...], ok: bool, after: float) -> float | None:
        times = [s.at for s in self.samples if s.op in ops and s.ok is ok and s.at > after]
        return min(times) if times else None


async def _wait(predicate: Callable[[], bool], within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return predicate()


async def eventually(call: Callable[[], Awaitable[T]], within_s: float = 10.0) -> T:
    """The call's answer once the store answers again (bounded). Right after a failover the old
    primary is still syncing as the new replica, and a write no replica confirmed in time is refused
    (StoreError, the sidecar's 503): a refusal, not a relapse, so it is retried."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            return await call()
        except StoreError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def run_failover(kind: str, workdir: Path, warmup_s: float = 0.5, timeout_s: float = 30.0) -> FailoverRun:
    """One topology, started here and stopped at the end."""
    topology = _Topology(kind, workdir)
    await asyncio.to_thread(topology.start)
    try:
        return await _measure(topology, warmup_s, timeout_s)
    finally:
        await asyncio.to_thread(topology.stop)


async def _measure(topology: _Topology, warmup_s: float, timeout_s: float) -> FailoverRun:
    run = FailoverRun(topology.kind)
    store = RedisStore.from_config(topology.config(f"failover-{uuid.uuid4().hex[:8]}:"))
    try:
        root = _task()
        await store.create_task(root)
        victim = await asyncio.to_thread(topology.server_for, hash_tag("t", root.id))
        run.killed = f"127.0.0.1:{victim.port}"
        revoked = _task(root)
        await store.create_task(revoked)
        await store.end_task(revoked.id, "revoked", "before the failover", int(time.time()))
        # Approved approvals, used one after the other (five attempts at once each) all along the run.
        ids = [await asyncio.to_thread(topology.on, victim, "ap", lambda: str(uuid.uuid4())) for _ in range(APPROVALS)]
        approvals = [_approval(i) for i in ids]
        for a in approvals:
            await store.create_approval(a, 20, int(time.time()))
            await store.decide_approval(a.id, "approved", {"kind": "bench"}, None, int(time.time()))
        session = await asyncio.to_thread(topology.on, victim, "s", lambda: f"task:{uuid.uuid4()}")
        elsewhere = await asyncio.to_thread(topology.off, victim, "t", lambda: str(uuid.uuid4()))
        other = _task(task_id=elsewhere) if elsewhere else None
        if other is not None:
            await store.create_task(other)

        load = _Load(store, run)

        async def read_revoked() -> None:
            _, got = await load.call("read", True, lambda: store.get_task(revoked.id))
            if isinstance(got, TaskRecord) and got.status == "active":
                run.violations.append(f"revoked task {revoked.id} was read as active")

        async def count_call() -> None:
            reservation = str(uuid.uuid4())
            now = time.time()
            reserved, _ = await load.call(
                "session", True, lambda: store.reserve_call(session, reservation, True, now, 600, LIMITS)
            )
            if reserved:
                await load.call(
                    "session", True, lambda: store.commit_call(session, reservation, True, [], {}, now, 600, LIMITS)
                )

        pending_use = list(approvals)

        async def use_approval() -> None:
            if not pending_use:
                return
            a = pending_use.pop(0)
            attempts = [
                load.call("approval", True, lambda: store.consume_approval(a.id, int(time.time()))) for _ in range(5)
            ]
            uses = sum(isinstance(got, ApprovalRecord) for _, got in await asyncio.gather(*attempts))
            load.used[a.id] = uses
            if uses > 1:
                run.violations.append(f"approval {a.id} was used {uses} times")
            await asyncio.sleep(0.1)

        async def delegate_and_revoke() -> None:
            child = _task(root)
            created, refused = await load.call("delegate", True, lambda: store.create_task(child))
            if created and refused is None:
                _, ended = await load.call(
                    "revoke", True, lambda: store.end_task(child.id, "revoked", "bench", int(time.time()))
                )
                if isinstance(ended, list) and child.id in ended:
                    load.acknowledged.append(child.id)

        async def read_elsewhere() -> None:
            if other is not None:
                await load.call("elsewhere", False, lambda: store.get_task(other.id))

        workers = [
            asyncio.create_task(load.loop(step))
            for step in (read_revoked, count_call, use_approval, delegate_and_revoke, read_elsewhere)
        ]
        await asyncio.sleep(warmup_s)
        killed_at = time.monotonic()
        await asyncio.to_thread(victim.kill)

        hot = ("read", "session")

        def back(ops: tuple[str, ...], success: tuple[str, ...]) -> float | None:
            """When ``success`` answered again after the last failure of ``ops`` since the kill."""
            failed = load.last(ops, False, killed_at)
            return load.first(success, True, failed) if failed is not None else None

        def steady() -> bool:
            answered = back(hot, hot)
            return answered is not None and (load.last(hot, True, answered) or 0) > answered + 0.3

        restarted: float | None = None
        if await _wait(steady, timeout_s):
            await asyncio.to_thread(topology.restart, victim)
            restarted = time.monotonic()
            await _wait(lambda: load.first(("revoke",), True, restarted) is not None, timeout_s)
        load.stop.set()
        await asyncio.gather(*workers)

        failed = load.last(hot, False, killed_at)
        hot_back = back(hot, hot)
        # Acknowledged revocations need a replica again: the first one confirmed after the old
        # primary came back (a brief refusal right after, while the replica syncs, is not a relapse).
        acked_back = load.first(("revoke",), True, restarted) if restarted is not None else None
        if hot_back is not None:
            run.hot_path_back_s = round(hot_back - killed_at, 2)
        if acked_back is not None:
            run.acked_back_s = round(acked_back - killed_at, 2)
        if failed is None:
            run.violations.append("no call failed: the fault was not seen")
        else:
            run.other_primaries_ok = sum(
                1 for s in load.samples if s.op == "elsewhere" and s.ok and killed_at <= s.at <= failed
            )
        run.revocations_acknowledged = len(load.acknowledged)
        run.approvals = len(load.used)
        run.approvals_used = sum(load.used.values())
        # Now that the failover is over, try every approval again: none may be usable a second time.
        for a in approvals:
            try:
                await eventually(functools.partial(store.consume_approval, a.id, int(time.time())))
            except ApprovalConflict:
                continue
            except StoreError as exc:
                run.violations.append(f"the store did not recover: {exc}")
                break
            load.used[a.id] = load.used.get(a.id, 0) + 1
            if load.used[a.id] > 1:
                run.violations.append(f"approval {a.id} could be used again after the failover")
        # With the failover over: what was acknowledged is still in force.
        for task_id in [revoked.id, *load.acknowledged]:
            try:
                got = await eventually(functools.partial(store.get_task, task_id))
            except StoreError as exc:
                run.violations.append(f"the store did not recover: {exc}")
                break
            if got is None or got.status == "active":
                run.violations.append(f"acknowledged revocation of {task_id} lost in the failover")
        return run
    finally:
        await store.close()


def table(runs: list[FailoverRun]) -> str:
    header = (
        f"{'topology':<9} {'calls':>6} {'answered':>9} {'503':>6} {'hot path back s':>16} {'acked back s':>13} "
        f"{'other primaries ok':>19} {'revocations':>12} {'approvals used':>15}  violations"
    )
    lines = [header, "-" * len(header)]
    for r in runs:
        hot = f"{r.hot_path_back_s:.2f}" if r.hot_path_back_s is not None else "never"
        acked = f"{r.acked_back_s:.2f}" if r.acked_back_s is not None else "never"
        other = str(r.other_primaries_ok) if r.topology == "cluster" else "-"
        lines.append(
            f"{r.topology:<9} {r.calls:>6} {r.answered:>9} {r.store_errors:>6} {hot:>16} {acked:>13} {other:>19} "
            f"{r.revocations_acknowledged:>12} {f'{r.approvals_used}/{r.approvals}':>15}  {len(r.violations)}"
        )
        lines += [f"{'':<9} violation: {v}" for v in r.violations]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--topology", choices=TOPOLOGIES, action="append", help="default: both")
    parser.add_argument("--out", type=Path, default=RESULTS / "failover.json")
    args = parser.parse_args(argv)
    runs = []
    with tempfile.TemporaryDirectory(prefix="authz-failover-") as tmp:
        for kind in args.topology or TOPOLOGIES:
            print(f"failover: {kind} ...", file=sys.stderr, flush=True)
            runs.append(asyncio.run(run_failover(kind, Path(tmp) / kind)))
    print(table(runs))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"generated_at": time.time(), "runs": [asdict(r) | {"ok": r.ok} for r in runs]}, indent=2)
    )
    print(f"wrote {args.out}")
    return 0 if all(r.ok for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
