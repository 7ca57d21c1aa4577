"""Refusals made before OPA was asked, reported to OPA so that its decision log lists them too.

The sidecar refuses some calls itself: an unreadable request line or body, no valid identity, a
refused task grant or approval, a store it cannot reach. Those calls never reach the policy, so
OPA's decision log, the stream reviewers read, would not show them. After answering, the sidecar
asks OPA about each one at ``opa.refusals_path`` (the shipped bundle's ``agent.refusals``) with
``input.refusal`` describing it (the sidecar's decision id, stage, status, reasons, method, host,
path, agent and task), and OPA logs that query like any other decision. The answer is never
enforced: the call has already been refused. A bundle without the rule still gets the query
logged (with an undefined result).

Reported in the background, off the response's path, on a small connection pool of its own: an
agent sending a flood of refused calls can neither slow the live decisions nor queue reports
without bound (past ``opa.refusals_max_in_flight`` a refusal is counted as not reported; the
sidecar's own decision log still has it).
"""

from __future__ import annotations

from typing import Any

from sidecar import metrics
from sidecar.background import BoundedTasks
from sidecar.input import refusal_policy_input
from sidecar.logs import DecisionRecord
from sidecar.opa import OpaClient, OpaError

# Stages that can end a call before the policy is asked (approval and session also come after it,
# so a record counts only when OPA never answered).
REFUSED_BEFORE_POLICY = frozenset({"body", "identity", "task", "intent", "approval", "session"})


class RefusalReporter:
    """Reports refusals to OPA in the background; see the module docstring."""

    def __init__(self, client: OpaClient, path: str, max_in_flight: int) -> None:
        self._client = client
        self._path = path
        self._tasks = BoundedTasks(max_in_flight)

    async def start(self) -> None:
        await self._client.start()

    def observe(self, record: DecisionRecord) -> None:
        """Report the call if the sidecar refused it before the policy was asked."""
        if record.verdict != "allow" and record.opa_ms is None and record.stage in REFUSED_BEFORE_POLICY:
            self.report(record)

    def report(self, record: DecisionRecord) -> None:
        """Start reporting one refusal (returns at once)."""
        if not self._tasks.start(self._send(refusal_policy_input(record))):
            metrics.REFUSAL_REPORTS.labels("busy").inc()

    async def _send(self, input_doc: dict[str, Any]) -> None:
        try:
            await self._client.decide(input_doc, self._path)
        except OpaError as exc:
            # undefined: the bundle has no refusals rule, but OPA has logged the query all the same.
            metrics.REFUSAL_REPORTS.labels("reported" if exc.code == "undefined" else exc.code).inc()
            return
        metrics.REFUSAL_REPORTS.labels("reported").inc()

    async def close(self) -> None:
        """Let the reports in flight finish (each bounded by the OPA timeout), then close the pool."""
        await self._tasks.drain()
        await self._client.close()
