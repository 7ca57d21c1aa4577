"""One ``authz.authzen`` log line per AuthZEN evaluation (an :class:`~sidecar.events.EvaluationEvent`,
the decision log's record of it), and its count in ``authz_authzen_evaluations_total``.

Beside the evaluation (subject and resource by type and id, the action's name) it names the
caller, the PEP whose JWT-SVID was verified. Properties and context are not logged: they are
whatever the PEP sent (personal data, tokens) and OPA's decision log holds them, masked.
"""

from __future__ import annotations

from typing import Any

from sidecar.authzen.evaluate import Outcome
from sidecar.events import EvaluationEvent, log_event, now
from sidecar.identity import Identity
from sidecar.metrics import AUTHZEN_EVALUATIONS


def log_outcome(
    outcome: Outcome, caller: Identity, endpoint: str, request_id: str | None, batch: str | None, index: int | None
) -> None:
    evaluation = outcome.evaluation
    verdict = "error" if outcome.error else "allow" if outcome.decision else "deny"
    AUTHZEN_EVALUATIONS.labels(verdict, endpoint).inc()
    event = EvaluationEvent(
        time=now(),
        decision_id=outcome.decision_id,
        caller=str(caller.spiffe_id),
        endpoint=endpoint,
        request_id=request_id,
        batch=batch,
        index=index,
        subject={"type": evaluation.subject["type"], "id": evaluation.subject["id"]},
        action=evaluation.action.get("name"),
        resource={"type": evaluation.resource["type"], "id": evaluation.resource["id"]},
        decision=outcome.decision,
        verdict=verdict,
        reasons=tuple(reasons_of(outcome.context)),
        error=outcome.error,
        opa_ms=outcome.opa_ms,
    )
    log_event(event)


def reasons_of(context: dict[str, Any] | None) -> list[str]:
    """The policy's ``reasons`` (a list of strings) or ``reason`` (a string), if it gave any."""
    if context is None:
        return []
    reasons = context.get("reasons")
    if isinstance(reasons, list):
        return [r for r in reasons if isinstance(r, str)]
    reason = context.get("reason")
    return [reason] if isinstance(reason, str) else []
