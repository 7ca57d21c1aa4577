"""Redis state: shared by replicas, survives sidecar restarts. Multi-key updates are Lua scripts
so they are atomic; keys expire with the task (plus a grace period)."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from sidecar.state import (
    GRACE_SECONDS,
    TASK_SLOT_TIMEOUT_SECONDS,
    AgentHistory,
    AgentLimits,
    ApprovalConflict,
    ApprovalRecord,
    ApprovalStatus,
    ParentEnded,
    SessionLimits,
    SessionView,
    StoreError,
    TaskRecord,
    TaskStatus,
    TooManyApprovals,
    task_creator,
)

_APPROVAL_STATE = ("status", "approver", "decision_reason", "decided_at")


@contextmanager
def _available() -> Iterator[None]:
    """Any Redis or socket failure becomes a StoreError: the caller fails closed."""
    try:
        yield
    except (RedisError, OSError) as exc:
        raise StoreError(f"state store unavailable ({type(exc).__name__})") from exc


# KEYS: task, task state, parent task state or "", parent children set or "", parent task or "",
# the creator's tasks zset, the creator's open-task reservations zset
# ARGV: task json, ttl seconds, task id, creator's reservation or "", expires at
CREATE_TASK = """
if KEYS[3] ~= '' then
  if redis.call('HGET', KEYS[3], 'status') ~= 'active' then return 0 end
  local parent_ttl = redis.call('PTTL', KEYS[5])
  redis.call('SADD', KEYS[4], ARGV[3])
  if parent_ttl > 0 then redis.call('PEXPIRE', KEYS[4], parent_ttl) end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('HSET', KEYS[2], 'status', 'active')
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[6], ARGV[5], ARGV[3])
if redis.call('TTL', KEYS[6]) < tonumber(ARGV[2]) then redis.call('EXPIRE', KEYS[6], ARGV[2]) end
if ARGV[4] ~= '' then redis.call('ZREM', KEYS[7], ARGV[4]) end
return 1
"""

# KEYS: the agent's tasks zset (id → expires at), its open-task reservations zset (id → at)
# ARGV: reservation, now, stale before, key prefix, reservation ttl
# Counts the tasks it created that are active and unexpired (dropping the others) plus the
# reservations in flight; bounded by the policy's cap, which keeps the agent from creating more.
RESERVE_TASK_SLOT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[3])
local active = 0
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if redis.call('HGET', ARGV[4] .. 'task:' .. id .. ':state', 'status') == 'active' then
    active = active + 1
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
local inflight = redis.call('ZCARD', KEYS[2])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[5])
return active + inflight
"""

# ARGV: key prefix, root id, status, reason, now, reason for descendants
END_TASK = """
local queue = {ARGV[2]}
local ended = {}
local first = true
while #queue > 0 do
  local id = table.remove(queue, 1)
  local state_key = ARGV[1] .. 'task:' .. id .. ':state'
  if redis.call('HGET', state_key, 'status') == 'active' then
    local status, reason = 'revoked', ARGV[6]
    if first then status, reason = ARGV[3], ARGV[4] end
    redis.call('HSET', state_key, 'status', status, 'ended_at', ARGV[5], 'end_reason', reason)
    table.insert(ended, id)
  end
  first = false
  local children = redis.call('SMEMBERS', ARGV[1] .. 'task:' .. id .. ':children')
  table.sort(children)
  for _, child in ipairs(children) do table.insert(queue, child) end
end
return ended
"""


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

# KEYS: the agent's inflight zset, minute zset, labels hash (label → last recorded, unix seconds)
# ARGV: reservation, now, stale before, minute start, labels recorded before this are forgotten,
# inflight ttl
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

# KEYS: as RESERVE_AGENT_CALL. ARGV: reservation, now, max minute entries, max labels, label retention,
# labels...
COMMIT_AGENT_CALL = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(tonumber(ARGV[3]) + 1))
redis.call('EXPIRE', KEYS[2], 61)
local at = math.floor(tonumber(ARGV[2]))
for i = 6, #ARGV do
  if redis.call('HEXISTS', KEYS[3], ARGV[i]) == 1 or redis.call('HLEN', KEYS[3]) < tonumber(ARGV[4]) then
    redis.call('HSET', KEYS[3], ARGV[i], at)
  end
end
if #ARGV >= 6 then redis.call('EXPIRE', KEYS[3], ARGV[5]) end
return 1
"""

# KEYS: approval json, approval state, pending index, the agent's pending index, same-request key
# ARGV: id, approval json, ttl, expires at, now, max pending
# The agent's pending index holds exactly its unexpired pending approvals (a decision removes one).
# Returns {0, id} when stored, {1, id} for the agent's pending approval of the same request,
# {2, count} when the agent already has max pending.
CREATE_APPROVAL = """
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', ARGV[5])
local existing = redis.call('GET', KEYS[5])
if existing and redis.call('ZSCORE', KEYS[4], existing) then return {1, existing} end
local pending = redis.call('ZCARD', KEYS[4])
if pending >= tonumber(ARGV[6]) then return {2, tostring(pending)} end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
redis.call('HSET', KEYS[2], 'status', 'pending')
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[1])
if redis.call('TTL', KEYS[4]) < tonumber(ARGV[3]) then redis.call('EXPIRE', KEYS[4], ARGV[3]) end
redis.call('SET', KEYS[5], ARGV[1], 'EX', ARGV[3])
return {0, ARGV[1]}
"""

# KEYS: approval json, approval state, pending index. ARGV: id, from status, to status, now, approver json,
# reason, require unexpired (1/0), key prefix
TRANSITION_APPROVAL = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
if redis.call('HGET', KEYS[2], 'status') ~= ARGV[2] then return 0 end
local approval = cjson.decode(raw)
if ARGV[7] == '1' and approval['expires_at'] <= tonumber(ARGV[4]) then return 0 end
redis.call('HSET', KEYS[2], 'status', ARGV[3])
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[2], 'approver', ARGV[5], 'decision_reason', ARGV[6], 'decided_at', ARGV[4])
end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', ARGV[8] .. 'approvals:pending:agent:' .. approval['agent'], ARGV[1])
return 1
"""


class RedisStore:
    def __init__(self, url: str, prefix: str, timeout_ms: int) -> None:
        timeout = timeout_ms / 1000
        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, decode_responses=True
        )
        self._prefix = prefix
        self._create = self._redis.register_script(CREATE_TASK)
        self._end = self._redis.register_script(END_TASK)
        self._reserve = self._redis.register_script(RESERVE_CALL)
        self._commit = self._redis.register_script(COMMIT_CALL)
        self._transition = self._redis.register_script(TRANSITION_APPROVAL)
        self._create_approval = self._redis.register_script(CREATE_APPROVAL)
        self._reserve_slot = self._redis.register_script(RESERVE_TASK_SLOT)
        self._reserve_agent = self._redis.register_script(RESERVE_AGENT_CALL)
        self._commit_agent = self._redis.register_script(COMMIT_AGENT_CALL)

    def _key(self, task_id: str, suffix: str = "") -> str:
        return f"{self._prefix}task:{task_id}{suffix}"

    async def create_task(self, task: TaskRecord, slot: str | None = None) -> None:
        ttl = max(1, task.expires_at - int(time.time()) + GRACE_SECONDS)
        parent = task.parent_id
        keys = [
            self._key(task.id),
            self._key(task.id, ":state"),
            self._key(parent, ":state") if parent else "",
            self._key(parent, ":children") if parent else "",
            self._key(parent) if parent else "",
            *self._slot_keys(task_creator(task)),
        ]
        body = {k: v for k, v in task.to_json().items() if k not in ("status", "ended_at", "end_reason")}
        args: list[str | int | float] = [json.dumps(body), ttl, task.id, slot or "", task.expires_at]
        with _available():
            created = await self._create(keys=keys, args=args)
        if not created:
            raise ParentEnded(parent or "")

    def _slot_keys(self, agent: str) -> list[str]:
        base = f"{self._prefix}agent:{agent}"
        return [f"{base}:tasks", f"{base}:task_slots"]

    async def reserve_task_slot(self, agent: str, slot: str, now: float) -> int:
        stale = now - TASK_SLOT_TIMEOUT_SECONDS
        args: list[str | int | float] = [slot, now, stale, self._prefix, TASK_SLOT_TIMEOUT_SECONDS]
        with _available():
            count = await self._reserve_slot(keys=self._slot_keys(agent), args=args)
        return int(count)

    async def release_task_slot(self, agent: str, slot: str) -> None:
        with _available():
            await self._redis.zrem(self._slot_keys(agent)[1], slot)

    async def get_task(self, task_id: str) -> TaskRecord | None:
        with _available():
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.get(self._key(task_id))
                pipe.hgetall(self._key(task_id, ":state"))
                raw, state = await pipe.execute()
        if raw is None or not state:
            return None
        data = json.loads(raw)
        data["status"] = state.get("status", "revoked")
        data["ended_at"] = int(state["ended_at"]) if state.get("ended_at") else None
        data["end_reason"] = state.get("end_reason")
        return TaskRecord.from_json(data)

    async def end_task(self, task_id: str, status: TaskStatus, reason: str, now: int) -> list[str]:
        descendants = f"ancestor task {task_id} ended: {reason}"
        with _available():
            ended = await self._end(keys=[], args=[self._prefix, task_id, status, reason, now, descendants])
        return [str(i) for i in ended]

    # -- sessions --------------------------------------------------------------------------
    def _session_keys(self, key: str) -> list[str]:
        base = f"{self._prefix}session:{key}"
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
        args: list[str | int | float] = [
            reservation,
            int(maybe_write),
            now,
            now - limits.inflight_timeout_seconds,
            now - 60,
            ttl,
        ]
        with _available():
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
        args: list[str | int | float] = [
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
        with _available():
            await self._commit(keys=self._session_keys(key), args=args)

    async def release_call(self, key: str, reservation: str) -> None:
        keys = self._session_keys(key)
        with _available():
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.zrem(keys[1], reservation)
                pipe.zrem(keys[2], reservation)
                await pipe.execute()

    # -- the agent's own history -----------------------------------------------------------
    def _agent_keys(self, agent: str) -> list[str]:
        # A SPIFFE ID has no ":" in its path, so these never collide with another agent's keys.
        base = f"{self._prefix}agent:{agent}"
        return [f"{base}:inflight", f"{base}:minute", f"{base}:labels"]

    async def reserve_agent_call(self, agent: str, reservation: str, now: float, limits: AgentLimits) -> AgentHistory:
        args: list[str | int | float] = [
            reservation,
            now,
            now - limits.inflight_timeout_seconds,
            now - 60,
            now - limits.label_retention_seconds,
            limits.inflight_timeout_seconds + 1,
        ]
        with _available():
            count, flat = await self._reserve_agent(keys=self._agent_keys(agent), args=args)
        labels = {str(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}
        return AgentHistory(calls_last_minute=int(count), labels=labels)

    async def commit_agent_call(
        self, agent: str, reservation: str, labels: list[str], now: float, limits: AgentLimits
    ) -> None:
        args: list[str | int | float] = [
            reservation,
            now,
            limits.max_minute_entries,
            limits.max_labels,
            limits.label_retention_seconds,
            *labels,
        ]
        with _available():
            await self._commit_agent(keys=self._agent_keys(agent), args=args)

    async def release_agent_call(self, agent: str, reservation: str) -> None:
        with _available():
            await self._redis.zrem(self._agent_keys(agent)[0], reservation)

    # -- approvals -------------------------------------------------------------------------
    def _approval_keys(self, approval_id: str) -> list[str]:
        base = f"{self._prefix}approval:{approval_id}"
        return [base, f"{base}:state", f"{self._prefix}approvals:pending"]

    async def create_approval(self, approval: ApprovalRecord, max_pending: int, now: int) -> ApprovalRecord:
        keys = [
            *self._approval_keys(approval.id),
            f"{self._prefix}approvals:pending:agent:{approval.agent}",
            f"{self._prefix}approvals:same:{approval.same_request_key}",
        ]
        ttl = max(1, approval.expires_at - now + GRACE_SECONDS)
        body = {k: v for k, v in approval.to_json().items() if k not in _APPROVAL_STATE}
        args: list[str | int | float] = [
            approval.id,
            json.dumps(body),
            ttl,
            approval.expires_at,
            now,
            max_pending,
        ]
        with _available():
            outcome, value = await self._create_approval(keys=keys, args=args)
        if int(outcome) == 2:
            raise TooManyApprovals(approval.agent, int(value))
        if int(outcome) == 0:
            return ApprovalRecord.from_json(approval.to_json())
        existing = await self.get_approval(str(value))
        if existing is None:  # expired between the script and this read: the agent asks again
            raise StoreError("the pending approval for this request expired while it was read")
        return existing

    async def get_approval(self, approval_id: str) -> ApprovalRecord | None:
        keys = self._approval_keys(approval_id)
        with _available():
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.get(keys[0])
                pipe.hgetall(keys[1])
                raw, state = await pipe.execute()
        if raw is None or not state:
            return None
        data = json.loads(raw)
        data["status"] = state.get("status", "rejected")
        data["approver"] = json.loads(state["approver"]) if state.get("approver") else None
        data["decision_reason"] = state.get("decision_reason") or None
        data["decided_at"] = int(state["decided_at"]) if state.get("decided_at") else None
        return ApprovalRecord.from_json(data)

    async def list_approvals(self, status: ApprovalStatus) -> list[ApprovalRecord]:
        if status != "pending":
            raise ValueError("only pending approvals are indexed")
        index = f"{self._prefix}approvals:pending"
        with _available():
            await self._redis.zremrangebyscore(index, "-inf", time.time())
            ids = await self._redis.zrange(index, 0, 499)
        found = [await self.get_approval(str(i)) for i in ids]
        return sorted((a for a in found if a and a.status == "pending"), key=lambda a: a.created_at)

    async def decide_approval(
        self, approval_id: str, status: ApprovalStatus, approver: dict[str, Any], reason: str | None, now: int
    ) -> ApprovalRecord:
        await self._move(approval_id, "pending", status, now, json.dumps(approver), reason or "", True)
        decided = await self.get_approval(approval_id)
        assert decided is not None
        return decided

    async def consume_approval(self, approval_id: str, now: int) -> ApprovalRecord:
        await self._move(approval_id, "approved", "consumed", now, "", "", True)
        consumed = await self.get_approval(approval_id)
        assert consumed is not None
        return consumed

    async def restore_approval(self, approval_id: str) -> None:
        with contextlib.suppress(ApprovalConflict):
            await self._move(approval_id, "consumed", "approved", int(time.time()), "", "", False)

    async def _move(
        self, approval_id: str, from_status: str, to_status: str, now: int, approver: str, reason: str, fresh: bool
    ) -> None:
        args: list[str | int | float] = [
            approval_id,
            from_status,
            to_status,
            now,
            approver,
            reason,
            int(fresh),
            self._prefix,
        ]
        with _available():
            moved = await self._transition(keys=self._approval_keys(approval_id), args=args)
        if not moved:
            raise ApprovalConflict(approval_id)

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except (RedisError, OSError):
            return False

    async def close(self) -> None:
        await self._redis.aclose()
