"""Redis state: shared by replicas, survives sidecar restarts. One instance, a Redis Cluster or
the primary Sentinel names (``state.redis_mode``), with the same keys and scripts.

Multi-key updates are Lua scripts, so they are atomic. Every key a script touches is passed in
KEYS (no script builds a key name) and shares one hash tag, so in a Cluster all of them live in
one slot:

* ``{t:ROOT}`` a task tree: ``:tree`` (hash: member id → its parent and creator) and
  ``:task:ID`` (hash: the grant, its status, its ancestors, and ``sealed`` once it is being
  ended) for every task in it. A delegated task's id points at its root with ``{t:ID}:root``.
* ``{a:AGENT}`` one agent: its call history (``:inflight``, ``:minute``, ``:labels``), the open
  tasks it created (``:tasks``) and its open-task reservations (``:task_slots``), its pending
  approvals (``:approvals``) and same-request pointers (``:same:HASH``).
* ``{s:KEY}`` one session's counters, recent window and labels.
* ``{ap:ID}:approval`` one approval (hash: the request and its state); ``approvals:pending`` the
  index approvers list.

What spans two tags is two steps, ordered so that a failure between them errs towards refusing:
a task counts against its creator before it exists, a revoked task stops counting only after it
is revoked, an approval exists before an agent's index names it.

Ending a task is three steps in its tree's slot: seal it (a delegation needs every ancestor
active and unsealed, so from then on nothing joins its subtree), read the tree, then end the
task and all its descendants in one script whose KEYS the client computed from that read. The
seal is the guard against a delegation racing the revocation; a version check would instead
make the revoker retry for as long as delegations keep arriving. Revocations and approval
consumption wait for replicas (``WAIT``, ``state.replica_acks``) before they are acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError

from sidecar.state import (
    GRACE_SECONDS,
    TASK_SLOT_TIMEOUT_SECONDS,
    AgentHistory,
    AgentLimits,
    ApprovalConflict,
    ApprovalRecord,
    ApprovalStatus,
    ParentEnded,
    PinState,
    SessionLimits,
    SessionView,
    StoreError,
    TaskRecord,
    TaskStatus,
    ToolPin,
    TooManyApprovals,
    task_creator,
)

if TYPE_CHECKING:
    from sidecar.config import StateConfig

log = logging.getLogger(__name__)

Args = list[str | int | float]
_APPROVAL_STATE = ("status", "approver", "decision_reason", "decided_at")
_LINEAGES_CACHED = 65_536  # task id → its ancestors: fixed for a task's life, so a cache is never wrong


@contextmanager
def _available() -> Iterator[None]:
    """Any Redis or socket failure becomes a StoreError: the caller fails closed. So does any other
    exception raised inside the Redis client itself (redis-py's cluster client can trip over its
    own connections while it re-learns the topology during a failover)."""
    try:
        yield
    except (RedisError, RedisClusterException, OSError) as exc:
        raise StoreError(f"state store unavailable ({type(exc).__name__})") from exc
    except Exception as exc:
        if not _raised_in_client(exc):
            raise
        raise StoreError(f"state store client failed ({type(exc).__name__})") from exc


def _raised_in_client(exc: BaseException) -> bool:
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and str(tb.tb_frame.f_globals.get("__name__", "")).startswith("redis.")


# -- task trees ({t:ROOT}) and the agent's open tasks ({a:AGENT}) --------------------------------

# KEYS: the creator's open tasks zset (id → expires at), its open-task reservations zset
# ARGV: task id, expires at, the reservation it replaces or "", ttl
# Runs before the task exists: from here on the task counts instead of the reservation.
CLAIM_TASK_SLOT = """
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
if redis.call('TTL', KEYS[1]) < tonumber(ARGV[4]) then redis.call('EXPIRE', KEYS[1], ARGV[4]) end
if ARGV[3] ~= '' then redis.call('ZREM', KEYS[2], ARGV[3]) end
return 1
"""

# KEYS: tree, task, then for a delegated task every ancestor, root first (all in the root's slot)
# ARGV: grant json, ttl seconds, task id, member json ([parent, creator]), ancestors json
# A delegation needs every ancestor active and unsealed: once end_task sealed a task, nothing
# joins its subtree, wherever in it.
CREATE_TASK = """
for i = 3, #KEYS do
  local a = redis.call('HMGET', KEYS[i], 'status', 'sealed')
  if a[1] ~= 'active' or a[2] then return 0 end
end
redis.call('HSET', KEYS[2], 'body', ARGV[1], 'status', 'active', 'up', ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[1], ARGV[3], ARGV[4])
if redis.call('TTL', KEYS[1]) < tonumber(ARGV[2]) then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return 1
"""

# KEYS: the task to end. Seals it, so its subtree stops growing (see CREATE_TASK); 0 if it is gone.
SEAL_TASK = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'sealed', 1)
return 1
"""

# KEYS: the task to end, then its descendants breadth first (the client read the sealed subtree)
# ARGV: status, reason, now, reason for descendants, then the ids of KEYS
# Ends all of them at once; returns the ids that changed state. Always writes (the seal again),
# so a WAIT after it covers an earlier end of this task that a client retries.
END_TASK = """
local ended = {}
redis.call('HSET', KEYS[1], 'sealed', 1)
for i = 1, #KEYS do
  if redis.call('HGET', KEYS[i], 'status') == 'active' then
    local status, reason = 'revoked', ARGV[4]
    if i == 1 then status, reason = ARGV[1], ARGV[2] end
    redis.call('HSET', KEYS[i], 'status', status, 'ended_at', ARGV[3], 'end_reason', reason)
    table.insert(ended, ARGV[4 + i])
  end
end
return ended
"""

# KEYS: the agent's open tasks zset (id → expires at), its open-task reservations zset (id → at)
# ARGV: reservation, now, stale before, reservation ttl
# Counts the tasks it created that are unexpired and not ended (end_task removes those) plus its
# reservations in flight; bounded by the policy's cap, which keeps the agent from creating more.
RESERVE_TASK_SLOT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[3])
local count = redis.call('ZCARD', KEYS[1]) + redis.call('ZCARD', KEYS[2])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[4])
return count
"""

# -- sessions ({s:KEY}) -------------------------------------------------------------------------

# KEYS: hash, inflight zset, inflight-write zset, minute zset, recent list, labels set
# ARGV: reservation, maybe write (0/1), now, stale before, minute start, ttl
RESERVE_CALL = """
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', '(' .. ARGV[5])
local inflight = redis.call('ZCARD', KEYS[2])
local inflight_writes = redis.call('ZCARD', KEYS[3])
local minute = redis.call('ZCARD', KEYS[4])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
if ARGV[2] == '1' then redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1]) end
redis.call('HSETNX', KEYS[1], 'started_at', math.floor(tonumber(ARGV[3])))
local h = redis.call('HMGET', KEYS[1], 'calls', 'writes', 'started_at')
for i = 1, #KEYS do redis.call('EXPIRE', KEYS[i], ARGV[6]) end
return {tonumber(h[1] or 0) + inflight, tonumber(h[2] or 0) + inflight_writes, minute + inflight, tonumber(h[3]),
        redis.call('LRANGE', KEYS[5], 0, -1), redis.call('SMEMBERS', KEYS[6])}
"""

# KEYS: as RESERVE_CALL. ARGV: reservation, write (0/1), now, ttl, recent window, entry json, max labels,
# max minute entries, labels...
COMMIT_CALL = """
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HSETNX', KEYS[1], 'started_at', math.floor(tonumber(ARGV[3])))
redis.call('HINCRBY', KEYS[1], 'calls', 1)
if ARGV[2] == '1' then redis.call('HINCRBY', KEYS[1], 'writes', 1) end
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
redis.call('ZREMRANGEBYRANK', KEYS[4], 0, -(tonumber(ARGV[8]) + 1))
if tonumber(ARGV[5]) > 0 then
  redis.call('LPUSH', KEYS[5], ARGV[6])
  redis.call('LTRIM', KEYS[5], 0, tonumber(ARGV[5]) - 1)
end
for i = 9, #ARGV do
  if redis.call('SCARD', KEYS[6]) < tonumber(ARGV[7]) then redis.call('SADD', KEYS[6], ARGV[i]) end
end
for i = 1, #KEYS do redis.call('EXPIRE', KEYS[i], ARGV[4]) end
return 1
"""

# -- the agent's own history ({a:AGENT}) -------------------------------------------------------

# KEYS: the agent's inflight zset, minute zset, labels hash (label → last recorded, unix seconds)
# ARGV: reservation, now, stale before, minute start, label cutoff, inflight ttl
RESERVE_AGENT_CALL = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[4])
local count = redis.call('ZCARD', KEYS[1]) + redis.call('ZCARD', KEYS[2])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[6])
local flat = redis.call('HGETALL', KEYS[3])
local labels = {}
for i = 1, #flat, 2 do
  if tonumber(flat[i + 1]) < tonumber(ARGV[5]) then
    redis.call('HDEL', KEYS[3], flat[i])
  else
    table.insert(labels, flat[i])
    table.insert(labels, flat[i + 1])
  end
end
return {count, labels}
"""

# The agent's labels hash (KEYS[k]) gets ARGV[first..] at ``now`` (a new label only while it has fewer than
# ``max_labels``), kept ``retention`` seconds from this write: one rule for a call's own labels
# and for those a delegate's call records for its delegators.
REMEMBER_LABELS = """
local function remember(k, now, max_labels, retention, first)
  local at = math.floor(tonumber(now))
  for i = first, #ARGV do
    if redis.call('HEXISTS', KEYS[k], ARGV[i]) == 1 or redis.call('HLEN', KEYS[k]) < tonumber(max_labels) then
      redis.call('HSET', KEYS[k], ARGV[i], at)
    end
  end
  if #ARGV >= first then redis.call('EXPIRE', KEYS[k], retention) end
end
"""

# KEYS: as RESERVE_AGENT_CALL. ARGV: reservation, now, max minute entries, max labels, label retention,
# labels...
COMMIT_AGENT_CALL = (
    REMEMBER_LABELS
    + """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(tonumber(ARGV[3]) + 1))
redis.call('EXPIRE', KEYS[2], 61)
remember(3, ARGV[2], ARGV[4], ARGV[5], 6)
return 1
"""
)

# KEYS: the agent's labels hash. ARGV: now, max labels, label retention, labels...
# A delegate's call arms its delegators' ratchets: their labels, without a call of their own.
REMEMBER_AGENT_LABELS = (
    REMEMBER_LABELS
    + """
remember(1, ARGV[1], ARGV[2], ARGV[3], 4)
return 1
"""
)

# -- approvals ({ap:ID} and the agent's {a:AGENT}) -------------------------------------------

# KEYS: the approval. ARGV: request json, agent, expires at, ttl
STORE_APPROVAL = """
redis.call('HSET', KEYS[1], 'body', ARGV[1], 'agent', ARGV[2], 'expires_at', ARGV[3], 'status', 'pending')
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"""

# KEYS: the agent's pending approvals zset (id → expires at), its same-request pointer
# ARGV: id, expires at, now, max pending, ttl
# The agent's index holds its unexpired pending approvals (a decision removes one; an entry a
# failure left behind only counts until the client sees it is not pending). Returns {0, id}
# when admitted, {1, id} for the agent's pending approval of the same request, {2, count} when
# the agent already has max pending.
ADMIT_APPROVAL = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
local existing = redis.call('GET', KEYS[2])
if existing and redis.call('ZSCORE', KEYS[1], existing) then return {1, existing} end
local pending = redis.call('ZCARD', KEYS[1])
if pending >= tonumber(ARGV[4]) then return {2, tostring(pending)} end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
if redis.call('TTL', KEYS[1]) < tonumber(ARGV[5]) then redis.call('EXPIRE', KEYS[1], ARGV[5]) end
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[5])
return {0, ARGV[1]}
"""

# KEYS: the approval. ARGV: from status, to status, now, approver json, reason, require unexpired (1/0)
# Returns the approval's agent when it moved, else nil.
TRANSITION_APPROVAL = """
local h = redis.call('HMGET', KEYS[1], 'status', 'expires_at', 'agent')
if h[1] ~= ARGV[1] then return false end
if ARGV[6] == '1' and tonumber(h[2]) <= tonumber(ARGV[3]) then return false end
redis.call('HSET', KEYS[1], 'status', ARGV[2])
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[1], 'approver', ARGV[4], 'decision_reason', ARGV[5], 'decided_at', ARGV[3])
end
return h[3]
"""


# -- pinned tool definitions ({p:SCOPE}) ------------------------------------------------------

# KEYS: the scope's pins (hash: "p:"name → pin, "h:"name → held changed hash, "x:"name → the param
# headers of the tool's last listing). ARGV: ttl, then name, hash, param headers ('' for none) per tool
PIN_TOOLS = """
local out = {}
for i = 2, #ARGV, 3 do
  local name, digest, listed = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local pin = redis.call('HGET', KEYS[1], 'p:' .. name)
  if listed == '' then
    redis.call('HDEL', KEYS[1], 'x:' .. name)
  else
    redis.call('HSET', KEYS[1], 'x:' .. name, listed)
  end
  if not pin then
    redis.call('HSET', KEYS[1], 'p:' .. name, digest)
    out[#out + 1] = 'new'
  elseif pin == digest then
    redis.call('HDEL', KEYS[1], 'h:' .. name)
    out[#out + 1] = 'same'
  else
    redis.call('HSET', KEYS[1], 'h:' .. name, digest)
    out[#out + 1] = 'changed'
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return out
"""

# KEYS: the scope's pins. ARGV: name
REPIN_TOOL = """
local held = redis.call('HGET', KEYS[1], 'h:' .. ARGV[1])
if not held then return 0 end
redis.call('HSET', KEYS[1], 'p:' .. ARGV[1], held)
redis.call('HDEL', KEYS[1], 'h:' .. ARGV[1])
return 1
"""


def hash_tag(kind: str, name: str) -> str:
    """The hash tag of one tree (``t``, its root id), agent (``a``), session (``s``) or approval
    (``ap``): every key of it carries this, so a Cluster keeps them in one slot (the slot of
    this string itself)."""
    return "{" + kind + ":" + name + "}"


def _host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


def _secret(path: Path | None) -> str | None:
    return path.read_text().strip() if path is not None else None


def connect(state: StateConfig) -> aioredis.Redis | RedisCluster:
    """A client for ``state.redis_mode``. Retries are bounded so an unreachable store fails fast: one
    immediate retry on a broken connection (a pooled socket to a restarted server), none after a
    timeout (single, sentinel); one retry after re-reading the topology (cluster)."""
    timeout = state.timeout_ms / 1000
    common: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "decode_responses": True,
        "max_connections": 2 * state.max_connections,  # per node; RedisStore lets max_connections operations run
    }
    if state.redis_username is not None:
        common["username"] = state.redis_username
    password = _secret(state.redis_password_file)
    if password is not None:
        common["password"] = password
    tls: dict[str, Any] = {}
    if state.redis_ca_file is not None:
        tls["ssl_ca_certs"] = str(state.redis_ca_file)
    if state.redis_cert_file is not None and state.redis_key_file is not None:
        tls["ssl_certfile"], tls["ssl_keyfile"] = str(state.redis_cert_file), str(state.redis_key_file)
    if state.redis_mode == "cluster":
        nodes = [ClusterNode(*_host_port(node)) for node in state.redis_cluster_nodes]
        return RedisCluster(
            startup_nodes=nodes,
            retry=Retry(NoBackoff(), 1),
            require_full_coverage=False,  # the other primaries keep answering while one fails over
            ssl=state.redis_tls,
            **({"ssl_cert_reqs": "required"} | tls if state.redis_tls else {}),
            **common,
        )
    retry = Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))
    if state.redis_mode == "sentinel":
        sentinel_kwargs: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "retry": retry,  # (redis-py's default retries a refused login ten times, with back-off)
        }
        if state.sentinel_username is not None:
            sentinel_kwargs["username"] = state.sentinel_username
        sentinel_password = _secret(state.sentinel_password_file)
        if sentinel_password is not None:
            sentinel_kwargs["password"] = sentinel_password
        if state.redis_tls:
            tls |= {"ssl": True, "ssl_cert_reqs": "required"}
            sentinel_kwargs |= tls
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            [_host_port(node) for node in state.sentinel_nodes], sentinel_kwargs=sentinel_kwargs, **common, **tls
        )
        return cast(aioredis.Redis, sentinel.master_for(state.sentinel_service, retry=retry))
    if state.redis_url.startswith("rediss://"):
        common |= tls
    return aioredis.Redis.from_url(state.redis_url, retry=retry, **common)


class RedisStore:
    in_process = False  # every operation is a round trip: a call's two updates go concurrently

    def __init__(
        self,
        client: aioredis.Redis | RedisCluster,
        prefix: str,
        *,
        replica_acks: int = 0,
        replica_ack_timeout_ms: int = 100,
        max_operations: int = 64,
    ) -> None:
        self._redis = client
        # redis-py raises (MaxConnectionsError) rather than waits when its pool is used up: wait here.
        self._turns = asyncio.Semaphore(max_operations)
        self._cluster = isinstance(client, RedisCluster)
        self._prefix = prefix
        self._acks = replica_acks
        self._ack_timeout_ms = replica_ack_timeout_ms
        self._lineages: dict[str, tuple[str, ...]] = {}  # task id → root, ..., parent, the task
        self._claim = client.register_script(CLAIM_TASK_SLOT)
        self._create = client.register_script(CREATE_TASK)
        self._seal = client.register_script(SEAL_TASK)
        self._reserve_slot = client.register_script(RESERVE_TASK_SLOT)
        self._reserve = client.register_script(RESERVE_CALL)
        self._commit = client.register_script(COMMIT_CALL)
        self._reserve_agent = client.register_script(RESERVE_AGENT_CALL)
        self._commit_agent = client.register_script(COMMIT_AGENT_CALL)
        self._remember_agent_labels = client.register_script(REMEMBER_AGENT_LABELS)
        self._store_approval = client.register_script(STORE_APPROVAL)
        self._admit = client.register_script(ADMIT_APPROVAL)
        self._transition = client.register_script(TRANSITION_APPROVAL)
        self._pin_tools = client.register_script(PIN_TOOLS)
        self._repin_tool = client.register_script(REPIN_TOOL)

    @classmethod
    def from_url(cls, url: str, prefix: str, timeout_ms: int) -> RedisStore:
        from sidecar.config import StateConfig

        return cls.from_config(StateConfig(backend="redis", redis_url=url, key_prefix=prefix, timeout_ms=timeout_ms))

    @classmethod
    def from_config(cls, state: StateConfig) -> RedisStore:
        return cls(
            connect(state),
            state.key_prefix,
            replica_acks=state.effective_replica_acks,
            replica_ack_timeout_ms=state.replica_ack_timeout_ms,
            max_operations=state.max_connections,
        )

    @property
    def client(self) -> aioredis.Redis | RedisCluster:
        """The Redis client (bench/capacity.py counts its round trips)."""
        return self._redis

    # -- keys (every tag names one tree, agent, session or approval) --------------------------
    def _tree(self, root: str) -> str:
        return f"{self._prefix}{hash_tag('t', root)}:tree"

    def _task(self, root: str, task_id: str) -> str:
        return f"{self._prefix}{hash_tag('t', root)}:task:{task_id}"

    def _root_pointer(self, task_id: str) -> str:
        return f"{self._prefix}{hash_tag('t', task_id)}:root"

    def _agent(self, agent: str, name: str) -> str:
        return f"{self._prefix}{hash_tag('a', agent)}:{name}"

    def _slot_keys(self, agent: str) -> list[str]:
        return [self._agent(agent, "tasks"), self._agent(agent, "task_slots")]

    def _approval(self, approval_id: str) -> str:
        return f"{self._prefix}{hash_tag('ap', approval_id)}:approval"

    @property
    def _pending_index(self) -> str:
        return f"{self._prefix}approvals:pending"

    @asynccontextmanager
    async def _io(self) -> AsyncIterator[None]:
        """Around every use of Redis (never nested; each uses at most two connections at once): a
        turn among max_operations; a Cluster client learns (or re-learns, after a failure) the
        topology first, before any command runs (redis-py's cluster client, used concurrently
        before that, may hand one connection to two commands); any failure is a StoreError."""
        async with self._turns:
            with _available():
                if isinstance(self._redis, RedisCluster):
                    await self._redis.initialize()
                yield

    def _pipeline(self) -> Any:
        """Commands sent together without MULTI (a Cluster pipeline sends each node its share)."""
        return self._redis.pipeline() if self._cluster else self._redis.pipeline(transaction=False)

    async def _acked(self, script: str, keys: list[str], args: Args) -> tuple[Any, int]:
        """Run ``script``, then WAIT for ``replica_acks`` replicas on the same connection (WAIT counts
        the writes of its own connection). Returns the script's result and how many acknowledged."""
        if not self._acks:
            return await self._redis.eval(script, len(keys), *keys, *args), 0
        wait = ("WAIT", self._acks, self._ack_timeout_ms)
        if isinstance(self._redis, RedisCluster):
            node = self._redis.get_node_from_key(keys[0])
            batch = self._redis.pipeline()
            batch.execute_command("EVAL", script, len(keys), *keys, *args, target_nodes=node)
            batch.execute_command(*wait, target_nodes=node)
            try:
                result, acked = await batch.execute(allow_redirections=False)
            except (RedisError, RedisClusterException, OSError):
                # A moved slot or a dead node: let the client's own routing notice (it refreshes the
                # topology on MOVED and after a connection error), then fail this call.
                with contextlib.suppress(RedisError, RedisClusterException, OSError):
                    await self._redis.exists(keys[0])
                raise
            return result, int(acked)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.eval(script, len(keys), *keys, *args)
            pipe.execute_command(*wait)
            result, acked = await pipe.execute()
        return result, int(acked)

    def _check_acked(self, acked: int, what: str) -> None:
        if acked < self._acks:
            raise StoreError(
                f"{what} is on the primary but only {acked} of {self._acks} replica(s) confirmed it in"
                f" {self._ack_timeout_ms} ms: not acknowledged (a failover now could lose it)"
            )

    # -- tasks ---------------------------------------------------------------------------------
    def _remember(self, lineage: tuple[str, ...]) -> None:
        task_id = lineage[-1]
        if task_id not in self._lineages and len(self._lineages) >= _LINEAGES_CACHED:
            del self._lineages[next(iter(self._lineages))]
        self._lineages[task_id] = lineage

    async def _locate(self, task_id: str) -> tuple[tuple[str, ...], dict[str, str]] | None:
        """The task's lineage (root first, itself last) and its fields; one round trip when the
        lineage is known or the task is a root."""
        async with self._io():
            lineage = self._lineages.get(task_id)
            if lineage is not None:
                fields = cast(dict[str, str], await self._redis.hgetall(self._task(lineage[0], task_id)))
                return (lineage, fields) if "body" in fields else None
            async with self._pipeline() as pipe:  # both keys carry the tag {t:task_id}: one slot
                pipe.hgetall(self._task(task_id, task_id))
                pipe.get(self._root_pointer(task_id))
                fields, pointer = await pipe.execute()
            if not fields and pointer:
                fields = cast(dict[str, str], await self._redis.hgetall(self._task(str(pointer), task_id)))
            if not fields or "body" not in fields:
                return None
        lineage = (*json.loads(fields.get("up") or "[]"), task_id)
        self._remember(lineage)
        return lineage, fields

    async def _lineage(self, task_id: str) -> tuple[str, ...] | None:
        if task_id in self._lineages:
            return self._lineages[task_id]
        found = await self._locate(task_id)
        return found[0] if found else None

    async def create_task(self, task: TaskRecord, slot: str | None = None) -> None:
        ttl = max(1, task.expires_at - int(time.time()) + GRACE_SECONDS)
        parent = task.parent_id
        ancestors = () if parent is None else await self._lineage(parent)
        if ancestors is None:
            raise ParentEnded(parent or "")
        root = ancestors[0] if ancestors else task.id
        creator = task_creator(task)
        body = {k: v for k, v in task.to_json().items() if k not in ("status", "ended_at", "end_reason")}
        claim: Args = [task.id, task.expires_at, slot or "", ttl]
        async with self._io():
            # First it counts among its creator's open tasks (a failure after this over-counts until
            # it expires, never under-counts), and a delegated task's id points at its tree.
            steps: list[Awaitable[Any]] = [self._claim(keys=self._slot_keys(creator), args=claim)]
            if parent is not None:
                steps.append(self._redis.set(self._root_pointer(task.id), root, ex=ttl))
            await asyncio.gather(*steps)
            keys = [self._tree(root), self._task(root, task.id), *(self._task(root, a) for a in ancestors)]
            member = json.dumps([parent or "", creator])
            args: Args = [json.dumps(body), ttl, task.id, member, json.dumps(ancestors)]
            created = await self._create(keys=keys, args=args)
        if not created:
            with contextlib.suppress(StoreError):
                async with self._io():
                    await self._redis.zrem(self._slot_keys(creator)[0], task.id)
            raise ParentEnded(parent or "")
        self._remember((*ancestors, task.id))

    async def reserve_task_slot(self, agent: str, slot: str, now: float) -> int:
        stale = now - TASK_SLOT_TIMEOUT_SECONDS
        args: Args = [slot, now, stale, TASK_SLOT_TIMEOUT_SECONDS]
        async with self._io():
            count = await self._reserve_slot(keys=self._slot_keys(agent), args=args)
        return int(count)

    async def release_task_slot(self, agent: str, slot: str) -> None:
        async with self._io():
            await self._redis.zrem(self._slot_keys(agent)[1], slot)

    async def get_task(self, task_id: str) -> TaskRecord | None:
        found = await self._locate(task_id)
        if found is None:
            return None
        fields = found[1]
        data = json.loads(fields["body"])
        data["status"] = fields.get("status", "revoked")
        data["ended_at"] = int(fields["ended_at"]) if fields.get("ended_at") else None
        data["end_reason"] = fields.get("end_reason")
        return TaskRecord.from_json(data)

    async def end_task(self, task_id: str, status: TaskStatus, reason: str, now: int) -> list[str]:
        """Seal the task (no delegation joins its subtree from then on), read its subtree, then end
        the task and every descendant in one script whose KEYS are that subtree."""
        lineage = await self._lineage(task_id)
        if lineage is None:
            return []
        root = lineage[0]
        async with self._io():
            if not await self._seal(keys=[self._task(root, task_id)]):
                return []
            flat = cast(dict[str, str], await self._redis.hgetall(self._tree(root)))
        members = {member: json.loads(value) for member, value in flat.items()}
        subtree = _subtree(task_id, members) if task_id in members else [task_id]
        keys = [self._task(root, member) for member in subtree]
        args: Args = [status, reason, now, f"ancestor task {task_id} ended: {reason}", *subtree]
        async with self._io():
            ended, acked = await self._acked(END_TASK, keys, args)
        self._check_acked(acked, f"the end of task {task_id} and its {len(subtree) - 1} descendant(s)")
        await self._forget_open(subtree, members)
        return [str(i) for i in ended]

    async def _forget_open(self, subtree: list[str], members: dict[str, list[str]]) -> None:
        """Ended tasks stop counting among their creators' open tasks (every task of the subtree,
        whether this call ended it or an earlier one did: a retry finishes what a failure left)."""
        by_creator: dict[str, list[str]] = {}
        for member in subtree:
            if member in members:
                by_creator.setdefault(members[member][1], []).append(member)
        async with self._io(), self._pipeline() as pipe:
            for creator, ids in sorted(by_creator.items()):
                pipe.zrem(self._slot_keys(creator)[0], *ids)
            await pipe.execute()

    # -- sessions ------------------------------------------------------------------------------
    def _session_keys(self, key: str) -> list[str]:
        base = f"{self._prefix}{hash_tag('s', key)}"
        return [
            f"{base}:h",
            f"{base}:inflight",
            f"{base}:inflight_w",
            f"{base}:minute",
            f"{base}:recent",
            f"{base}:labels",
        ]

    async def reserve_call(
        self, key: str, reservation: str, maybe_write: bool, now: float, ttl: int, limits: SessionLimits
    ) -> SessionView:
        args: Args = [
            reservation,
            int(maybe_write),
            now,
            now - limits.inflight_timeout_seconds,
            now - 60,
            ttl,
        ]
        async with self._io():
            calls, writes, minute, started, recent, labels = await self._reserve(
                keys=self._session_keys(key), args=args
            )
        return SessionView(
            key=key,
            calls=int(calls),
            writes=int(writes),
            calls_last_minute=int(minute),
            labels=sorted(labels),
            recent=[json.loads(item) for item in recent],
            started_at=int(started),
        )

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
        args: Args = [
            reservation,
            int(write),
            now,
            ttl,
            limits.recent_window,
            json.dumps(entry),
            limits.max_labels,
            limits.max_minute_entries,
            *labels,
        ]
        async with self._io():
            await self._commit(keys=self._session_keys(key), args=args)

    async def release_call(self, key: str, reservation: str) -> None:
        keys = self._session_keys(key)
        async with self._io(), self._pipeline() as pipe:
            pipe.zrem(keys[1], reservation)
            pipe.zrem(keys[2], reservation)
            await pipe.execute()

    # -- the agent's own history ---------------------------------------------------------------
    def _agent_keys(self, agent: str) -> list[str]:
        return [self._agent(agent, "inflight"), self._agent(agent, "minute"), self._agent(agent, "labels")]

    async def reserve_agent_call(self, agent: str, reservation: str, now: float, limits: AgentLimits) -> AgentHistory:
        args: Args = [
            reservation,
            now,
            now - limits.inflight_timeout_seconds,
            now - 60,
            now - limits.label_retention_seconds,
            limits.inflight_timeout_seconds + 1,
        ]
        async with self._io():
            count, flat = await self._reserve_agent(keys=self._agent_keys(agent), args=args)
        labels = {str(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}
        return AgentHistory(calls_last_minute=int(count), labels=labels)

    async def commit_agent_call(
        self, agent: str, reservation: str, labels: list[str], now: float, limits: AgentLimits
    ) -> None:
        args: Args = [
            reservation,
            now,
            limits.max_minute_entries,
            limits.max_labels,
            limits.label_retention_seconds,
            *labels,
        ]
        async with self._io():
            await self._commit_agent(keys=self._agent_keys(agent), args=args)

    async def release_agent_call(self, agent: str, reservation: str) -> None:
        async with self._io():
            await self._redis.zrem(self._agent_keys(agent)[0], reservation)

    async def remember_agent_labels(self, agent: str, labels: list[str], now: float, limits: AgentLimits) -> None:
        args: Args = [now, limits.max_labels, limits.label_retention_seconds, *labels]
        async with self._io():
            await self._remember_agent_labels(keys=[self._agent_keys(agent)[2]], args=args)

    # -- approvals -----------------------------------------------------------------------------
    async def create_approval(self, approval: ApprovalRecord, max_pending: int, now: int) -> ApprovalRecord:
        ttl = max(1, approval.expires_at - now + GRACE_SECONDS)
        body = {k: v for k, v in approval.to_json().items() if k not in _APPROVAL_STATE}
        index = self._agent(approval.agent, "approvals")
        keys = [index, self._agent(approval.agent, f"same:{approval.same_request_key}")]
        admit: Args = [approval.id, approval.expires_at, now, max_pending, ttl]
        async with self._io():
            # The approval exists before the agent's index names it (a failure in between leaves an
            # approval nobody was told about, which expires).
            await self._store_approval(
                keys=[self._approval(approval.id)],
                args=[json.dumps(body), approval.agent, approval.expires_at, ttl],
            )
        for attempt in range(3):
            async with self._io():
                outcome, value = await self._admit(keys=keys, args=admit)
            outcome, value, last = int(outcome), str(value), attempt == 2
            if outcome == 0 or value == approval.id:  # admitted (also by a retried first attempt)
                await self._index_pending(approval.id, approval.expires_at)
                return ApprovalRecord.from_json(approval.to_json())
            if outcome == 1:
                existing = await self.get_approval(value)
                if existing is not None and existing.status == "pending":
                    await self._discard(approval.id)
                    await self._index_pending(existing.id, existing.expires_at)
                    return existing
                if last:
                    break
                async with self._io():  # decided or gone: the index entry a failure left behind
                    await self._redis.zrem(index, value)
                continue
            stale = await self._not_pending(index)
            if not stale or last:
                await self._discard(approval.id)
                raise TooManyApprovals(approval.agent, int(value))
            async with self._io():
                await self._redis.zrem(index, *stale)
        await self._discard(approval.id)
        raise StoreError("the agent's pending approvals kept changing; try again")

    async def _not_pending(self, index: str) -> list[str]:
        """Entries of an agent's pending index whose approval is no longer pending (a decision whose
        index update failed)."""
        async with self._io():
            ids = [str(i) for i in await self._redis.zrange(index, 0, -1)]
            async with self._pipeline() as pipe:
                for approval_id in ids:
                    pipe.hget(self._approval(approval_id), "status")
                statuses = await pipe.execute() if ids else []
        return [i for i, status in zip(ids, statuses, strict=True) if status != "pending"]

    async def _index_pending(self, approval_id: str, expires_at: int) -> None:
        async with self._io():
            await self._redis.zadd(self._pending_index, {approval_id: expires_at})

    async def _discard(self, approval_id: str) -> None:
        """Drop an approval nobody was told about (best effort: it expires anyway)."""
        with contextlib.suppress(StoreError):
            async with self._io():
                await self._redis.delete(self._approval(approval_id))

    async def get_approval(self, approval_id: str) -> ApprovalRecord | None:
        async with self._io():
            fields = cast(dict[str, str], await self._redis.hgetall(self._approval(approval_id)))
        return _approval_record(fields)

    async def list_approvals(self, status: ApprovalStatus) -> list[ApprovalRecord]:
        if status != "pending":
            raise ValueError("only pending approvals are indexed")
        async with self._io():
            await self._redis.zremrangebyscore(self._pending_index, "-inf", time.time())
            ids = [str(i) for i in await self._redis.zrange(self._pending_index, 0, 499)]
            async with self._pipeline() as pipe:
                for approval_id in ids:
                    pipe.hgetall(self._approval(approval_id))
                found = [_approval_record(fields) for fields in (await pipe.execute() if ids else [])]
        return sorted((a for a in found if a and a.status == "pending"), key=lambda a: a.created_at)

    async def decide_approval(
        self, approval_id: str, status: ApprovalStatus, approver: dict[str, Any], reason: str | None, now: int
    ) -> ApprovalRecord:
        agent = await self._move(approval_id, "pending", status, now, json.dumps(approver), reason or "", True)
        try:  # no longer pending: out of the indexes (a failure here only delays that, see create_approval)
            async with self._io(), self._pipeline() as pipe:
                pipe.zrem(self._agent(agent, "approvals"), approval_id)
                pipe.zrem(self._pending_index, approval_id)
                await pipe.execute()
        except StoreError:
            log.warning("approval %s was decided but is still in the pending indexes", approval_id)
        decided = await self.get_approval(approval_id)
        if decided is None:
            raise StoreError(f"approval {approval_id} expired as it was decided")
        return decided

    async def consume_approval(self, approval_id: str, now: int) -> ApprovalRecord:
        await self._move(approval_id, "approved", "consumed", now, "", "", True, acked=True)
        consumed = await self.get_approval(approval_id)
        if consumed is None:
            raise StoreError(f"approval {approval_id} expired as it was used")
        return consumed

    async def restore_approval(self, approval_id: str) -> None:
        with contextlib.suppress(ApprovalConflict):
            await self._move(approval_id, "consumed", "approved", int(time.time()), "", "", False)

    async def _move(
        self,
        approval_id: str,
        from_status: str,
        to_status: str,
        now: int,
        approver: str,
        reason: str,
        fresh: bool,
        acked: bool = False,
    ) -> str:
        """Move the approval between states; returns its agent. ``acked``: WAIT for replicas."""
        keys = [self._approval(approval_id)]
        args: Args = [from_status, to_status, now, approver, reason, int(fresh)]
        async with self._io():
            if acked:
                agent, replicas = await self._acked(TRANSITION_APPROVAL, keys, args)
            else:
                agent, replicas = await self._transition(keys=keys, args=args), self._acks
        if not agent:
            raise ApprovalConflict(approval_id)
        self._check_acked(replicas, f"the use of approval {approval_id}")
        return str(agent)

    # -- pinned tool definitions ---------------------------------------------------------------
    def _pins(self, scope: str) -> str:
        return f"{self._prefix}{hash_tag('p', scope)}:pins"

    async def pin_tools(
        self, scope: str, hashes: dict[str, str], ttl: int, param_headers: dict[str, str] | None = None
    ) -> dict[str, PinState]:
        if not hashes:
            return {}
        listed = param_headers or {}
        args: Args = [ttl, *(part for name, digest in hashes.items() for part in (name, digest, listed.get(name, "")))]
        async with self._io():
            states = await self._pin_tools(keys=[self._pins(scope)], args=args)
        return {name: _pin_state(state) for name, state in zip(hashes, states, strict=True)}

    async def tool_pin(self, scope: str, name: str) -> ToolPin | None:
        async with self._io():
            pin, held, listed = await self._redis.hmget(self._pins(scope), ["p:" + name, "h:" + name, "x:" + name])
        if pin is None:
            return None
        text = listed.decode() if isinstance(listed, bytes) else listed
        return ToolPin("changed" if held is not None else "same", text)

    async def repin_tool(self, scope: str, name: str) -> bool:
        async with self._io():
            return bool(await self._repin_tool(keys=[self._pins(scope)], args=[name]))

    async def ping(self) -> bool:
        try:
            if isinstance(self._redis, RedisCluster):
                return bool(await self._redis.ping(target_nodes=RedisCluster.PRIMARIES))
            return bool(await self._redis.ping())
        except (RedisError, RedisClusterException, OSError):
            return False

    async def close(self) -> None:
        await self._redis.aclose()


def _subtree(task_id: str, members: dict[str, list[str]]) -> list[str]:
    """``task_id`` and its descendants, breadth first, children in id order (as the memory store)."""
    children: dict[str, list[str]] = {}
    for member, (parent, _) in members.items():
        children.setdefault(parent, []).append(member)
    order, queue, seen = [], deque([task_id]), {task_id}
    while queue:
        current = queue.popleft()
        order.append(current)
        for child in sorted(children.get(current, ())):
            if child not in seen:
                seen.add(child)
                queue.append(child)
    return order


def _pin_state(raw: bytes | str) -> PinState:
    state = raw.decode() if isinstance(raw, bytes) else raw
    if state not in ("new", "same", "changed"):
        raise StoreError(f"unexpected pin state {state!r}")
    return state  # type: ignore[return-value]


def _approval_record(fields: dict[str, str]) -> ApprovalRecord | None:
    if "body" not in fields:
        return None
    data = json.loads(fields["body"])
    data["status"] = fields.get("status", "rejected")
    data["approver"] = json.loads(fields["approver"]) if fields.get("approver") else None
    data["decision_reason"] = fields.get("decision_reason") or None
    data["decided_at"] = int(fields["decided_at"]) if fields.get("decided_at") else None
    return ApprovalRecord.from_json(data)
