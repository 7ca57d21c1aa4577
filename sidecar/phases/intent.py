"""What the agent says it is doing (it can only restrict)."""

from __future__ import annotations

from sidecar.call import Call
from sidecar.intent import declared_intent
from sidecar.mcp import BodyError
from sidecar.outcome import Decision


class ReadIntent:
    stage = "intent"

    async def run(self, call: Call) -> Decision | None:
        try:
            call.intent = declared_intent(call.request.headers, call.body.mcp)
        except BodyError as exc:
            return call.refused(exc, f"declared intent rejected: {exc}")
        return None
