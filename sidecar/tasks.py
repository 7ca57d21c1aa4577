"""Task grants: narrow, short-lived authority for the task at hand, bound to the agent's SPIFFE ID.

Opening and delegating are OPA decisions (``tasks.decision_path``); on top of the policy the
code enforces what must never depend on it: a delegated grant only narrows (scopes ⊆ the
parent's, expiry ≤ the parent's), depth is capped, and a token is only honoured for the
agent it names while its task is active in the store.

The policy also sees how many tasks the agent already has open (``input.open_tasks``: tasks it
opened or delegated that are active and unexpired, plus its other requests in flight). The
request holds a reservation while OPA is asked, so parallel requests cannot all slip under a cap.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sidecar import metrics
from sidecar.config import TasksConfig
from sidecar.errors import Kind, SidecarError
from sidecar.identity import Identity
from sidecar.input import task_input, task_policy_input
from sidecar.keys import KeySet
from sidecar.opa import OpaClient, OpaError
from sidecar.spiffe_types import SpiffeId
from sidecar.state import ParentEnded, Store, StoreError, TaskRecord
from sidecar.tokens import TASK_TYP, TokenError, VerifiedTokens, act_claim, sign

log = logging.getLogger(__name__)

SCOPE = re.compile(r"^[A-Za-z0-9:._/-]{1,128}$")


class TaskError(SidecarError):
    """A task operation or a presented task token failed, for a reason of ``kind``."""

    CODE = "task"

    def __init__(self, kind: Kind, reason: str, *, task_id: str | None = None) -> None:
        super().__init__(reason, kind=kind)
        self.task_id = task_id  # a verified token's task, so the refusal is logged (and audited) under it


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scopes: list[str] = Field(min_length=1, max_length=64)
    ttl_seconds: int = Field(gt=0)

    @field_validator("scopes")
    @classmethod
    def _scope_shape(cls, value: list[str]) -> list[str]:
        bad = [s for s in value if not SCOPE.match(s)]
        if bad:
            raise ValueError(f"invalid scope names {bad[:3]}")
        return sorted(set(value))


class OpenRequest(_Request):
    purpose: str = Field(min_length=1, max_length=200)
    intent: dict[str, Any] | None = None


class DelegateRequest(_Request):
    to: str


@dataclass(frozen=True)
class Grant:
    task: TaskRecord
    token: str

    def as_json(self) -> dict[str, Any]:
        return {**task_view(self.task), "token": self.token}


def task_view(task: TaskRecord) -> dict[str, Any]:
    """The task as the API shows it (never the token)."""
    expired = task.status == "active" and task.expires_at <= time.time()
    return {
        **task_input(task),
        "agent": task.sub,
        "delegation_chain": task.chain,
        "status": "expired" if expired else task.status,
        "ended_at": task.ended_at,
        "end_reason": task.end_reason,
    }


def parse_request(model: type[_Request], body: Any) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise TaskError(Kind.INVALID, f"invalid request: {where}: {first['msg']}") from None


class TaskService:
    def __init__(
        self, config: TasksConfig, store: Store, keys: KeySet, opa: OpaClient, trust_domains: list[str]
    ) -> None:
        self._config = config
        self._store = store
        self._keys = keys
        self._presented = VerifiedTokens(keys, typ=TASK_TYP, issuer=config.issuer, audience=config.issuer)
        self._opa = opa
        self._trust_domains = frozenset(trust_domains)

    # -- the API ----------------------------------------------------------------------------
    async def open(self, caller: Identity, body: Any) -> Grant:
        request: OpenRequest = parse_request(OpenRequest, body)
        async with self._slot(str(caller.spiffe_id)) as (slot, open_tasks):
            input_doc = task_policy_input(
                "open",
                caller=caller,
                request=request.model_dump(),
                parent=None,
                delegate_to=None,
                chain=[],
                open_tasks=open_tasks,
            )
            decision = await self._ask(input_doc, request)
            now = int(time.time())
            task_id = str(uuid.uuid4())
            task = TaskRecord(
                id=task_id,
                sub=str(caller.spiffe_id),
                purpose=request.purpose,
                scopes=decision["scopes"],
                issued_at=now,
                expires_at=now + decision["ttl_seconds"],
                root_id=task_id,
                intent=request.intent,
            )
            await self._store.create_task(task, slot=slot)
        metrics.TASKS_OPENED.labels("open").inc()
        return Grant(task, self._token(task))

    async def delegate(self, caller: Identity, task_id: str, body: Any) -> Grant:
        request: DelegateRequest = parse_request(DelegateRequest, body)
        parent = await self._owned(caller, task_id, holder_only=True)
        if parent.status != "active" or parent.expires_at <= time.time():
            raise TaskError(Kind.FORBIDDEN, f"task {parent.id} is no longer active ({parent.end_reason or 'expired'})")
        delegate = self._spiffe_id(request.to)
        chain = [parent.sub, *parent.chain]
        if delegate == parent.sub or delegate in chain:
            raise TaskError(Kind.FORBIDDEN, f"delegating task {parent.id} to {delegate} would form a cycle")
        if len(chain) > self._config.max_delegation_depth:
            raise TaskError(
                Kind.FORBIDDEN, f"delegation depth {len(chain)} exceeds the limit {self._config.max_delegation_depth}"
            )
        widened = sorted(set(request.scopes) - set(parent.scopes))
        if widened:
            raise TaskError(
                Kind.FORBIDDEN, f"delegation may only narrow: task {parent.id} does not hold {', '.join(widened)}"
            )
        # A delegated task counts against the delegator (its creator), never the delegate: no
        # agent can fill another's cap by delegating to it.
        async with self._slot(parent.sub) as (slot, open_tasks):
            input_doc = task_policy_input(
                "delegate",
                caller=caller,
                request={"purpose": parent.purpose, **request.model_dump(exclude={"to"}), "intent": None},
                parent=parent,
                delegate_to=delegate,
                chain=chain,
                open_tasks=open_tasks,
            )
            decision = await self._ask(input_doc, request)
            task = child_task(parent, delegate, decision["scopes"], decision["ttl_seconds"], int(time.time()))
            try:
                await self._store.create_task(task, slot=slot)
            except ParentEnded:
                raise TaskError(Kind.FORBIDDEN, f"task {parent.id} ended while delegating") from None
        metrics.TASKS_OPENED.labels("delegate").inc()
        return Grant(task, self._token(task))

    async def get(self, caller: Identity, task_id: str) -> TaskRecord:
        return await self._owned(caller, task_id)

    async def end(self, caller: Identity, task_id: str) -> list[str]:
        task = await self._owned(caller, task_id)
        reason = f"completed by {caller.spiffe_id}"
        ended = await self._store.end_task(task.id, "completed", reason, int(time.time()))
        metrics.TASKS_ENDED.inc(len(ended))  # the task and every delegated task revoked with it
        return ended

    # -- the check path -----------------------------------------------------------------------
    async def verify_presented(self, token: str, caller: Identity | None) -> TaskRecord:
        """The active task a presented token grants to ``caller``, or :class:`TaskError`."""
        try:
            claims = self._presented.verify(token)
        except TokenError as exc:
            if exc.expired:
                raise TaskError(Kind.FORBIDDEN, "task grant has expired") from exc
            raise TaskError(Kind.UNAUTHENTICATED, f"task token rejected: {exc.reason}") from exc
        if caller is None or claims["sub"] != str(caller.spiffe_id):
            raise TaskError(Kind.FORBIDDEN, "task token is bound to another agent", task_id=str(claims["jti"]))
        task = await self._store.get_task(str(claims["jti"]))
        if task is None or task.sub != claims["sub"]:
            raise TaskError(Kind.FORBIDDEN, "task is unknown or has expired", task_id=str(claims["jti"]))
        if task.status != "active":
            raise TaskError(Kind.FORBIDDEN, f"task {task.id} was {task.status}: {task.end_reason}", task_id=task.id)
        if task.expires_at <= time.time():
            raise TaskError(Kind.FORBIDDEN, "task grant has expired", task_id=task.id)
        return task

    # -- internals ---------------------------------------------------------------------------
    @asynccontextmanager
    async def _slot(self, creator: str) -> AsyncIterator[tuple[str, int]]:
        """A reservation among ``creator``'s open tasks and its count, given back unless a task took it."""
        slot = str(uuid.uuid4())
        count = await self._store.reserve_task_slot(creator, slot, time.time())
        try:
            yield slot, count
        finally:
            try:
                await self._store.release_task_slot(creator, slot)  # a no-op once create_task took it
            except StoreError:
                log.warning("could not release an open-task reservation; it expires on its own")

    async def _ask(self, input_doc: dict[str, Any], request: _Request) -> dict[str, Any]:
        try:
            answer = await self._opa.decide(input_doc, self._config.decision_path)
        except OpaError as exc:
            raise TaskError(Kind.UNAVAILABLE, exc.reason) from exc
        result = answer.result
        if not isinstance(result, dict) or result.get("verdict") not in ("allow", "deny"):
            raise TaskError(
                Kind.UNAVAILABLE, "task policy answer is not a {verdict, reasons, scopes, ttl_seconds} object"
            )
        reasons = result.get("reasons")
        if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
            raise TaskError(Kind.UNAVAILABLE, "task policy answer has no reasons list")
        if result["verdict"] == "deny":
            raise TaskError(Kind.FORBIDDEN, "; ".join(reasons) or "denied by policy")
        scopes, ttl = result.get("scopes"), result.get("ttl_seconds")
        if not isinstance(scopes, list) or not scopes or not set(scopes) <= set(request.scopes):
            raise TaskError(Kind.UNAVAILABLE, "task policy granted scopes that were not requested")
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 < ttl <= request.ttl_seconds:
            raise TaskError(Kind.UNAVAILABLE, "task policy granted an invalid ttl_seconds")
        return {"scopes": sorted(scopes), "ttl_seconds": min(ttl, self._config.max_ttl_seconds)}

    async def _owned(self, caller: Identity, task_id: str, holder_only: bool = False) -> TaskRecord:
        task = await self._store.get_task(task_id)
        who = str(caller.spiffe_id)
        if task is None or not (task.sub == who or (not holder_only and who in task.chain)):
            raise TaskError(Kind.NOT_FOUND, f"no task {task_id} for {who}")
        return task

    def _spiffe_id(self, value: str) -> str:
        try:
            spiffe_id = SpiffeId(value)
        except Exception as exc:
            raise TaskError(Kind.INVALID, "invalid request: to: not a SPIFFE ID") from exc
        if spiffe_id.trust_domain.name not in self._trust_domains:
            raise TaskError(Kind.FORBIDDEN, f"trust domain {spiffe_id.trust_domain.name} is not trusted")
        return str(spiffe_id)

    def _token(self, task: TaskRecord) -> str:
        return sign(self._keys, task_token_claims(task, self._config.issuer), TASK_TYP)


def child_task(
    parent: TaskRecord, sub: str, scopes: list[str], ttl_seconds: int, now: int, task_id: str | None = None
) -> TaskRecord:
    """``parent`` delegated to ``sub``: its purpose and root, one level deeper, the delegator first in
    the chain, never outliving it. Narrowing the scopes is the caller's check (see ``delegate``)."""
    return TaskRecord(
        id=task_id or str(uuid.uuid4()),
        sub=sub,
        purpose=parent.purpose,
        scopes=scopes,
        issued_at=now,
        expires_at=min(parent.expires_at, now + ttl_seconds),
        parent_id=parent.id,
        root_id=parent.root_id,
        depth=parent.depth + 1,
        chain=[parent.sub, *parent.chain],
    )


def task_token_claims(task: TaskRecord, issuer: str) -> dict[str, Any]:
    """The claims of a task grant token: the task, bound to its agent, audience the sidecar itself."""
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": issuer,
        "sub": task.sub,
        "jti": task.id,
        "iat": task.issued_at,
        "exp": task.expires_at,
        "purpose": task.purpose,
        "scopes": task.scopes,
    }
    act = act_claim(task.chain)
    if act:
        claims["act"] = act
    return claims
