"""Real Redis topologies on loopback for the tests and the capacity bench: a Redis Cluster (three
primaries, each with a replica) and a Sentinel set-up (a primary, a replica, three sentinels).

Every process is a ``redis-server`` from the Debian package (``--sentinel`` runs it as a
sentinel). Start-up and health waits are bounded; ``stop`` ends only the processes started here.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from redis.crc import key_slot

from devstack.ports import free_ports
from devstack.redis_server import RedisServer

# Quick failure detection, so a failover in a test takes seconds (production keeps Redis's defaults:
# cluster-node-timeout 15 s, down-after-milliseconds 30 s).
NODE_TIMEOUT_MS = 1000
# A replica's first sync starts at once (diskless sync otherwise waits 5 s for more replicas).
_REPLICATION_ARGS = ["--appendonly", "no", "--repl-diskless-sync-delay", "0"]
_NODE_ARGS = [
    *_REPLICATION_ARGS,  # no append-only file: the tests measure failover and capacity, not the disk
    "--cluster-enabled",
    "yes",
    "--cluster-config-file",
    "nodes.conf",
    "--cluster-node-timeout",
    str(NODE_TIMEOUT_MS),
    # A replica always takes over, however long it was cut off from its primary (a test pauses it).
    "--cluster-replica-validity-factor",
    "0",
    # The other primaries keep serving their slots while one is down (only its keys fail).
    "--cluster-require-full-coverage",
    "no",
]


def _wait(what: str, ready: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if ready():
                return
        except (redis.RedisError, OSError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


def _client(port: int) -> redis.Redis:
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=1, decode_responses=True)


def _info(port: int, section: str) -> dict[str, Any]:
    with _client(port) as client:
        info: dict[str, Any] = client.info(section)
        return info


def _replica_acks(port: int, key: str) -> bool:
    """A write on this primary is confirmed by a replica (WAIT 1). A replica that has just synced
    counts only after its first acknowledgement (up to a second later), so a link that is "up" is
    not enough for a test that WAITs."""
    with _client(port) as client:
        pipe = client.pipeline(transaction=False)
        pipe.set(key, "1", px=1000)
        pipe.execute_command("WAIT", 1, 100)
        return int(pipe.execute()[1]) >= 1


def _key_in(start: int, end: int) -> str:
    """A key whose Cluster hash slot is in [start, end] (bounded search: a slot range is wide)."""
    for i in range(100_000):
        key = f"health:{i}"
        if start <= key_slot(key.encode()) <= end:
            return key
    raise LookupError(f"no key for slots {start}-{end}")


class LocalRedisCluster:
    """Six ``redis-server --cluster-enabled yes`` nodes on loopback, joined with ``redis-cli --cluster
    create ... --cluster-replicas 1``: three primaries, each with one replica."""

    def __init__(self, workdir: Path, primaries: int = 3) -> None:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise FileNotFoundError("redis-cli not found: install the Debian package redis-server (./taskw does)")
        self.cli = cli
        self.workdir = workdir
        # The cluster bus port defaults to port + 10000, out of range for many free ports: pick one too.
        ports = free_ports(primaries * 4)
        self.nodes = [
            RedisServer(workdir / f"node{i}", ports[2 * i], [*_NODE_ARGS, "--cluster-port", str(ports[2 * i + 1])])
            for i in range(primaries * 2)
        ]

    @property
    def seeds(self) -> list[str]:
        """``host:port`` of every node, for ``state.redis_cluster_nodes``."""
        return [f"127.0.0.1:{node.port}" for node in self.nodes]

    def start(self) -> LocalRedisCluster:
        try:
            for node in self.nodes:
                node.start()
            subprocess.run(
                [self.cli, "--cluster", "create", *self.seeds, "--cluster-replicas", "1", "--cluster-yes"],
                check=True,
                capture_output=True,
                timeout=60,
            )
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> LocalRedisCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def running(self) -> list[RedisServer]:
        return [node for node in self.nodes if node.process is not None and node.process.poll() is None]

    def _shards(self) -> list[tuple[int, list[int]]]:
        """(primary port, its replicas' ports) for every primary that serves slots, as the running
        nodes see the cluster."""
        node = self.running()[0]
        with _client(node.port) as client:
            lines = str(client.execute_command("CLUSTER", "NODES")).splitlines()
        ids: dict[str, int] = {}
        primaries: list[str] = []
        replicas: dict[str, list[int]] = {}
        for line in lines:
            fields = line.split()
            node_id, address, flags, master = fields[0], fields[1], fields[2].split(","), fields[3]
            port = int(address.split("@")[0].rsplit(":", 1)[1])
            ids[node_id] = port
            if "fail" in flags or "fail?" in flags:
                continue
            if "master" in flags and len(fields) > 8:  # a primary with slots
                primaries.append(node_id)
            elif "slave" in flags:
                replicas.setdefault(master, []).append(port)
        return [(ids[p], replicas.get(p, [])) for p in primaries]

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Every node up and sees the cluster ok; every primary has a replica in sync with it."""

        def healthy() -> bool:
            if len(self.running()) != len(self.nodes):
                return False
            for node in self.nodes:
                with _client(node.port) as client:
                    info = str(client.execute_command("CLUSTER", "INFO"))
                if "cluster_state:ok" not in info or f"cluster_known_nodes:{len(self.nodes)}" not in info:
                    return False
            shards = self._shards()
            if len(shards) != len(self.nodes) // 2:
                return False
            for _, replicas in shards:
                if len(replicas) != 1 or _info(replicas[0], "replication").get("master_link_status") != "up":
                    return False
            with _client(self.running()[0].port) as client:
                ranges = [(int(r[0]), int(r[1]), int(r[2][1])) for r in client.execute_command("CLUSTER", "SLOTS")]
            return all(_replica_acks(port, _key_in(start, end)) for start, end, port in ranges)

        _wait("the Redis Cluster to be healthy", healthy, timeout)

    def primary_ports(self) -> list[int]:
        return [port for port, _ in self._shards()]

    def node(self, port: int) -> RedisServer:
        return next(node for node in self.nodes if node.port == port)

    def primary_for(self, key: str) -> RedisServer:
        """The node that serves ``key``'s hash slot now."""
        with _client(self.running()[0].port) as client:
            slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
            for start, end, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if int(start) <= slot <= int(end):
                    return self.node(int(primary[1]))
        raise LookupError(f"no node serves slot {slot}")

    def replica_of(self, primary: RedisServer) -> RedisServer:
        for port, replicas in self._shards():
            if port == primary.port and replicas:
                return self.node(replicas[0])
        raise LookupError(f"node {primary.port} has no replica")

    def is_primary(self, node: RedisServer) -> bool:
        return bool(_info(node.port, "replication").get("role") == "master")


class _SentinelProcess:
    def __init__(self, workdir: Path, port: int, service: str, primary_port: int, down_after_ms: int) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server not found: install the Debian package redis-server (./taskw does)")
        self.binary = binary
        self.workdir = workdir
        self.port = port
        self.config = workdir / "sentinel.conf"
        self.settings = [
            f"port {self.port}",
            "bind 127.0.0.1",
            f"dir {workdir}",
            f"sentinel monitor {service} 127.0.0.1 {primary_port} 2",
            f"sentinel down-after-milliseconds {service} {down_after_ms}",
            f"sentinel failover-timeout {service} {down_after_ms * 4}",
            f"sentinel parallel-syncs {service} 1",
        ]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config.write_text("\n".join(self.settings) + "\n")  # a sentinel rewrites its own config file
        log = (self.workdir / "sentinel.log").open("ab")
        self.process = subprocess.Popen(
            [self.binary, str(self.config), "--sentinel"], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()

        def answers() -> bool:
            with _client(self.port) as client:
                return bool(client.ping())

        _wait(f"the sentinel on port {self.port}", answers, 10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None


class LocalSentinel:
    """A primary, its replica and three sentinels (quorum 2) watching them, all on loopback."""

    def __init__(self, workdir: Path, service: str = "authz", sentinels: int = 3, down_after_ms: int = 1000) -> None:
        self.service = service
        ports = free_ports(2 + sentinels)
        self.primary = RedisServer(workdir / "a", ports[0], _REPLICATION_ARGS)
        self.replica = RedisServer(
            workdir / "b", ports[1], [*_REPLICATION_ARGS, "--replicaof", "127.0.0.1", str(self.primary.port)]
        )
        self.sentinels = [
            _SentinelProcess(workdir / f"sentinel{i}", ports[2 + i], service, self.primary.port, down_after_ms)
            for i in range(sentinels)
        ]

    @property
    def nodes(self) -> list[str]:
        """``host:port`` of every sentinel, for ``state.sentinel_nodes``."""
        return [f"127.0.0.1:{s.port}" for s in self.sentinels]

    @property
    def servers(self) -> list[RedisServer]:
        return [self.primary, self.replica]

    def start(self) -> LocalSentinel:
        try:
            self.primary.start()
            self.replica.start()
            for sentinel in self.sentinels:
                sentinel.start()
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in self.servers:
            server.stop()

    def __enter__(self) -> LocalSentinel:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def restart_as_replica(self, server: RedisServer) -> None:
        """Start a stopped server again as a replica of the current primary (as an orchestrator
        would; a sentinel itself waits 8 s before it turns a returning old primary into one)."""
        primary = self.current_primary()
        server.extra_args = [*_REPLICATION_ARGS, "--replicaof", "127.0.0.1", str(primary.port)]
        server.start()

    def current_primary(self) -> RedisServer:
        """The server the sentinels name as primary now."""
        with _client(self.sentinels[0].port) as client:
            _, port = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)
        return next(s for s in self.servers if s.port == int(port))

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Every sentinel knows the others, the same primary and its replica in sync; the replica
        replicates it."""

        def healthy() -> bool:
            primaries = set()
            for sentinel in self.sentinels:
                with _client(sentinel.port) as client:
                    primary = client.execute_command("SENTINEL", "MASTER", self.service)
                    others = client.execute_command("SENTINEL", "SENTINELS", self.service)
                    replicas = client.execute_command("SENTINEL", "REPLICAS", self.service)
                state = _pairs(primary)
                if "s_down" in state.get("flags", "") or "o_down" in state.get("flags", ""):
                    return False
                up = [r for r in map(_pairs, replicas) if r.get("flags") == "slave"]
                if len(others) != len(self.sentinels) - 1 or len(up) != 1:
                    return False
                primaries.add(state["port"])
            if len(primaries) != 1:
                return False
            primary = next(s for s in self.servers if str(s.port) in primaries)
            replica = next(s for s in self.servers if s is not primary)
            return (
                _info(replica.port, "replication").get("master_link_status") == "up"
                and _info(primary.port, "replication").get("connected_slaves") == 1
                and _replica_acks(primary.port, "health")
            )

        _wait("the Sentinel set-up to be healthy", healthy, timeout)


def _pairs(flat: Any) -> dict[str, str]:
    """SENTINEL's reply as a dict (a flat list of names and values; redis-py may already give a dict)."""
    if isinstance(flat, dict):
        return {str(k): str(v) for k, v in flat.items()}
    return {str(flat[i]): str(flat[i + 1]) for i in range(0, len(flat), 2)}
