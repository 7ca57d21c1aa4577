"""Ask the policy: build the input document, query OPA, read its answer into a verdict.

The input OPA gets leaves out what the policy's last answer named in ``unread_input``
(:func:`sidecar.decision.unread_input`). An answer that does not name everything its input left
out came from a policy that may read it (a new bundle, say): the call is asked again with the full
input, and that answer decides.
"""

from __future__ import annotations

import logging
from typing import Any

from sidecar import metrics
from sidecar.approvals import approval_view
from sidecar.call import Call
from sidecar.decision import DecisionError, to_verdict, unread_input
from sidecar.input import build_input
from sidecar.opa import OpaClient, OpaError
from sidecar.outcome import Decision
from sidecar.shadow import Shadow
from sidecar.unread import without_unread

LOGGER = logging.getLogger("sidecar.policy")


class AskPolicy:
    stage = "opa"

    def __init__(
        self,
        opa: OpaClient,
        *,
        hidden_headers: frozenset[str],
        credential_headers: frozenset[str],
        approval_view: bool,
        body_once: bool = True,
    ) -> None:
        self._opa = opa
        self._hidden_headers = hidden_headers
        self._credential_headers = credential_headers
        self._approval_view = approval_view  # approvals are on: tell the policy what approvers would not see
        self._body_once = body_once
        self._unread: frozenset[str] = frozenset()  # what the last answer said the policy never reads

    async def run(self, call: Call) -> Decision | None:
        reservation = call.reservation
        call.input_doc = build_input(
            call.request,
            identity=call.identity,
            body=call.body,
            intent=call.intent,
            task=call.task,
            delegation_chain=call.chain,
            session=reservation.view if reservation else None,
            agent_history=reservation.history if reservation else None,
            approval=call.approval,
            approval_view=approval_view(call.summary) if self._approval_view and call.identity else None,
            hidden_headers=self._hidden_headers,
            credential_headers=self._credential_headers,
            body_once=self._body_once,
        )
        left_out = self._unread
        lean = without_unread(call.input_doc, left_out)
        refused = await ask_opa(self._opa, call, lean)
        if refused is not None:
            return refused
        named = unread_input(call.policy_answer)
        self._unread = named
        if lean is not call.input_doc and not left_out <= named:
            LOGGER.info(
                "the policy no longer names %s as unread: asked again with the full input",
                ", ".join(sorted(left_out - named)),
                extra={"decision_id": call.decision_id},
            )
            return await ask_opa(self._opa, call, call.input_doc)
        return None


async def ask_opa(opa: OpaClient, call: Call, input_doc: dict[str, Any]) -> Decision | None:
    """Ask OPA about ``input_doc``: its answer, time and decision id go on the call; a failure is a 503."""
    try:
        answer = await opa.decide(input_doc)
    except OpaError as exc:
        metrics.OPA_ERRORS.labels(exc.code).inc()
        return call.refused(exc)
    metrics.OPA_SECONDS.observe(answer.seconds)
    # The call's time in OPA: both queries when it was asked again with the full input.
    call.opa_seconds = (call.opa_seconds or 0.0) + answer.seconds
    if answer.decision_id:
        call.decision_id = answer.decision_id  # OPA's id: the same in its decision log and ours
    call.policy_answer = answer.result
    return None


class ReadVerdict:
    """A decision we cannot read is never an allow: a 503."""

    stage = "decision"

    async def run(self, call: Call) -> Decision | None:
        try:
            call.verdict = to_verdict(call.policy_answer)
        except DecisionError as exc:
            metrics.OPA_ERRORS.labels(exc.code).inc()
            return call.refused(exc, f"policy answer unusable: {exc}")
        return None


class ShadowPolicy:
    """The candidate policy on the same input, in the background, never enforced."""

    stage = "decision"

    def __init__(self, shadow: Shadow) -> None:
        self._shadow = shadow

    async def run(self, call: Call) -> Decision | None:
        if call.input_doc is not None:
            self._shadow.observe(call.decision_id, call.input_doc, call.decided)
        return None
