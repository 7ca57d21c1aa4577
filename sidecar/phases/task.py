"""The task grant the call is made under, if any: verified, active, bound to this agent."""

from __future__ import annotations

from typing import Protocol

from sidecar.call import Call
from sidecar.errors import Kind, SidecarError
from sidecar.identity import Identity
from sidecar.outcome import Decision
from sidecar.phases.identity import unauthenticated
from sidecar.state import StoreError, TaskRecord
from sidecar.tasks import TaskError


class GrantVerifier(Protocol):
    """What the phase needs of :class:`sidecar.tasks.TaskService`."""

    async def verify_presented(self, token: str, caller: Identity | None) -> TaskRecord: ...


class VerifyTaskGrant:
    stage = "task"

    def __init__(self, tasks: GrantVerifier, header: str) -> None:
        self._tasks = tasks
        self._header = header

    async def run(self, call: Call) -> Decision | None:
        token = call.request.headers.get(self._header)
        if token is None:
            return None
        try:
            call.task = await self._tasks.verify_presented(token, call.identity)
        except TaskError as exc:
            call.refused_task = exc.task_id
            if exc.kind is Kind.UNAUTHENTICATED:
                return unauthenticated(call, exc.reason, True)
            return call.refused(exc)
        except StoreError as exc:
            return call.refused(exc)
        return None


class RefuseTaskGrants:
    """Tasks are off on this sidecar: a presented grant cannot be honoured."""

    stage = "task"

    def __init__(self, header: str) -> None:
        self._header = header

    async def run(self, call: Call) -> Decision | None:
        if self._header not in call.request.headers:
            return None
        return call.refused(SidecarError("task grants are not enabled on this sidecar", kind=Kind.UNAUTHENTICATED))
