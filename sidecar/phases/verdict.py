"""Act on the policy's verdict: deny, step up, or allow with what reaches the upstream."""

from __future__ import annotations

from sidecar import outcome
from sidecar.call import Call
from sidecar.credentials import CredentialMinter, RequestBinding
from sidecar.errors import Kind, SidecarError
from sidecar.outcome import Decision


class Deny:
    stage = "policy"

    async def run(self, call: Call) -> Decision | None:
        verdict = call.decided
        if verdict.kind != "deny":
            return None
        return outcome.deny(verdict, decision_id=call.decision_id, rpc=call.rpc)


class StepUp:
    """401: an RFC 9470 challenge, or the approval to wait for (when one was requested)."""

    stage = "policy"

    async def run(self, call: Call) -> Decision | None:
        verdict = call.decided
        if verdict.kind != "step_up":
            return None
        return outcome.step_up(verdict, decision_id=call.decision_id, rpc=call.rpc, approval=call.pending)


class MintCredential:
    """A just-in-time upstream credential, bound to this exact request, when the policy asks."""

    stage = "credential"

    def __init__(self, minter: CredentialMinter) -> None:
        self._minter = minter

    async def run(self, call: Call) -> Decision | None:
        verdict = call.decided
        if verdict.kind != "allow" or verdict.credential is None:
            return None
        if call.identity is None:
            return call.unavailable("policy asked for a credential that cannot be minted here")
        if call.request.body_truncated:  # the body hash would cover only the part Envoy buffered
            error = SidecarError("request body is larger than a credential can be bound to", kind=Kind.TOO_LARGE)
            return call.refused(error)
        call.credential = self._minter.mint(
            verdict.credential,
            request=RequestBinding(call.request.method, call.request.path, call.request.body),
            agent=str(call.identity.spiffe_id),
            chain=call.chain,
            decision_id=call.decision_id,
            task_id=call.task.id if call.task else None,
            not_after=call.task.expires_at if call.task else None,
        )
        return None


class RefuseCredentials:
    """No credential minter here: an allow that needs a credential cannot go through."""

    stage = "credential"

    async def run(self, call: Call) -> Decision | None:
        verdict = call.decided
        if verdict.kind != "allow" or verdict.credential is None:
            return None
        return call.unavailable("policy asked for a credential that cannot be minted here")


class Allow:
    """200 with what the upstream gets (:func:`sidecar.outcome.allow` decides it whole)."""

    stage = "policy"

    def __init__(self, *, sidecar_headers: tuple[str, ...], forward_jwt_svid: bool) -> None:
        self._sidecar_headers = sidecar_headers  # the task grant and approval id: for the sidecar only
        self._forward_jwt_svid = forward_jwt_svid

    async def run(self, call: Call) -> Decision | None:
        verdict = call.decided
        if verdict.kind != "allow":  # every other verdict was answered by an earlier phase
            return call.unavailable(f"no phase answered a {verdict.kind} verdict")
        return outcome.allow(
            verdict,
            decision_id=call.decision_id,
            request_headers=call.request.headers,
            identity=call.identity,
            sidecar_headers=self._sidecar_headers,
            forward_jwt_svid=self._forward_jwt_svid,
            credential=call.credential,
        )
