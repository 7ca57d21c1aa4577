"""Who is calling: a presented but invalid credential is a 401, never a fall-through."""

from __future__ import annotations

from typing import Protocol

from sidecar import outcome
from sidecar.call import Call
from sidecar.identity import Identity, IdentityError
from sidecar.outcome import Decision


class Resolver(Protocol):
    """What the phase needs of :class:`sidecar.identity.IdentityResolver`."""

    def resolve(self, headers: dict[str, str], peer_principal: str | None = None) -> Identity | None: ...


class Identify:
    stage = "identity"

    def __init__(self, resolver: Resolver) -> None:
        self._resolver = resolver

    async def run(self, call: Call) -> Decision | None:
        try:
            call.identity = self._resolver.resolve(call.request.headers, call.request.peer_principal)
        except IdentityError as exc:
            return unauthenticated(call, exc.reason, exc.invalid_token)
        return None


def unauthenticated(call: Call, reason: str, invalid_token: bool) -> Decision:
    """401 with an RFC 6750 challenge (the refusal of a missing or invalid credential)."""
    return outcome.unauthenticated(reason, decision_id=call.decision_id, invalid_token=invalid_token, rpc=call.rpc)
