"""AuthZEN evaluations against OPA: the policy entrypoint, the batch semantics, action search.

The entrypoint (``authzen.decision_path``, default ``authzen/decision``) gets
``{subject, action, resource, context}`` and answers a boolean or ``{"decision": bool,
"context": {...}}``. Any other answer, and any OPA failure, is a ``false`` decision with an
error in its context (the specification's per-evaluation errors): nothing here permits because
something failed.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sidecar.authzen.model import Batch, Evaluation
from sidecar.errors import Kind, SidecarError
from sidecar.input import authzen_policy_input
from sidecar.opa import OpaClient, OpaError


@dataclass(frozen=True)
class Outcome:
    """One evaluation's decision, with the ids that find it in the sidecar's and OPA's logs."""

    evaluation: Evaluation
    decision: bool
    context: dict[str, Any] | None
    decision_id: str
    opa_ms: float | None = None
    error: str | None = None

    def response(self) -> dict[str, Any]:
        """The specification's Decision object (``context`` only when there is one)."""
        if self.context is None:
            return {"decision": self.decision}
        return {"decision": self.decision, "context": self.context}


class PolicyAnswerError(SidecarError):
    """The entrypoint answered something that is not an AuthZEN decision (no decision: fail closed)."""

    KIND = Kind.UNAVAILABLE
    CODE = "shape"


def decision_of(result: Any) -> tuple[bool, dict[str, Any] | None]:
    """A boolean, or an object with a boolean ``decision`` and an optional ``context`` object."""
    if isinstance(result, bool):
        return result, None
    if not isinstance(result, dict) or not isinstance(result.get("decision"), bool):
        raise PolicyAnswerError("policy answer is neither a boolean nor an object with a boolean decision")
    context = result.get("context")
    if context is not None and not isinstance(context, dict):
        raise PolicyAnswerError("policy answer's context is not an object")
    return result["decision"], context


class Evaluator:
    """Asks OPA one evaluation at a time; a batch runs them by its semantic."""

    def __init__(self, opa: OpaClient, decision_path: str, actions_path: str | None, concurrency: int) -> None:
        self._opa = opa
        self._decision_path = decision_path
        self._actions_path = actions_path
        self._concurrency = concurrency

    @property
    def searches_actions(self) -> bool:
        return self._actions_path is not None

    async def one(self, evaluation: Evaluation) -> Outcome:
        try:
            # Not traced as an authz.opa line: the authz.authzen line carries OPA's decision id.
            answer = await self._opa.decide(authzen_policy_input(evaluation), self._decision_path, trace=False)
        except OpaError as exc:
            return _failed(evaluation, None, 503, exc.reason)
        decision_id = answer.decision_id or str(uuid.uuid4())
        try:
            decision, context = decision_of(answer.result)
        except PolicyAnswerError as exc:
            return _failed(evaluation, decision_id, 500, str(exc))
        return Outcome(evaluation, decision, context, decision_id, opa_ms=round(answer.seconds * 1000, 3))

    async def batch(self, batch: Batch) -> list[Outcome]:
        """``execute_all`` runs every evaluation (``concurrency`` at a time, answers in request
        order); the short-circuit semantics run them in order and stop after the first deny
        (``deny_on_first_deny``) or the first permit (``permit_on_first_permit``), that one included."""
        if batch.semantic == "execute_all":
            return await self.all(batch.evaluations)
        stop_on = batch.semantic == "permit_on_first_permit"
        outcomes: list[Outcome] = []
        for evaluation in batch.evaluations:
            outcomes.append(await self.one(evaluation))
            if outcomes[-1].decision is stop_on:
                break
        return outcomes

    async def all(self, evaluations: Sequence[Evaluation]) -> list[Outcome]:
        gate = asyncio.Semaphore(self._concurrency)

        async def gated(evaluation: Evaluation) -> Outcome:
            async with gate:
                return await self.one(evaluation)

        return list(await asyncio.gather(*(gated(e) for e in evaluations)))

    async def candidate_actions(self, query: Evaluation) -> list[dict[str, Any]]:
        """The actions the policy names for this subject and resource (``authzen.actions_path``);
        each is then evaluated, so a search never returns what an evaluation would deny.
        Raises OpaError or PolicyAnswerError: a search that cannot be answered is an error."""
        if self._actions_path is None:
            raise PolicyAnswerError("action search is off (authzen.actions_path is null)")
        search_input = {"subject": query.subject, "resource": query.resource, "context": query.context}
        answer = await self._opa.decide(search_input, self._actions_path)
        actions = answer.result
        if not isinstance(actions, list) or not all(
            isinstance(a, dict) and isinstance(a.get("name"), str) and a["name"] for a in actions
        ):
            raise PolicyAnswerError("policy's candidate actions are not a list of actions with a name")
        return actions


def _failed(evaluation: Evaluation, decision_id: str | None, status: int, reason: str) -> Outcome:
    return Outcome(
        evaluation,
        decision=False,
        context={"error": {"status": status, "message": reason}},
        decision_id=decision_id or str(uuid.uuid4()),
        error=reason,
    )
