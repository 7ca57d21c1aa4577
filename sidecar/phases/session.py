"""Session (chain) state: the call is reserved before the policy is asked, committed on allow.

The reservation is released by the pipeline (the undo this phase registers) whenever the call
does not go through; a committed reservation ignores the release.
"""

from __future__ import annotations

import time

from sidecar.call import Call
from sidecar.input import split_target
from sidecar.outcome import Decision
from sidecar.sessions import SessionTracker
from sidecar.state import StoreError


class ReserveSession:
    stage = "session"

    def __init__(self, sessions: SessionTracker) -> None:
        self._sessions = sessions

    async def run(self, call: Call) -> Decision | None:
        try:
            reservation = await self._sessions.reserve(
                call.identity, call.task, call.request.headers, maybe_write=not call.read_only
            )
        except StoreError as exc:
            return call.refused(exc)
        if reservation is not None:  # anonymous calls have no session
            call.reservation = reservation
            call.on_failure(reservation.release, "could not release a session reservation; it expires on its own")
        return None


class CommitSession:
    """On allow: count the call, remember the policy's labels, add it to the recent window."""

    stage = "session"

    async def run(self, call: Call) -> Decision | None:
        verdict, reservation = call.decided, call.reservation
        if verdict.kind != "allow" or reservation is None:
            return None
        write = verdict.write if verdict.write is not None else not call.read_only
        entry = {
            "at": int(time.time()),
            "method": call.request.method,
            "path": split_target(call.request.path)[0],
            "tool": call.body.mcp.name if call.body.mcp else None,
            "write": write,
        }
        try:
            await reservation.commit(write, list(verdict.remember), entry)
        except StoreError as exc:
            return call.refused(exc)
        return None
