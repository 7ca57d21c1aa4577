"""Shadow mode: a candidate policy decides beside the live one on real traffic, never enforced.

After the live decision is read, the same input document is sent to the candidate: another
decision path in the same OPA (a candidate package loaded beside the live one), or another OPA
(``shadow.opa_url``). The candidate is asked in the background, off the response's path: the agent
gets the live answer at once, whatever the candidate does. At most ``shadow.max_in_flight``
candidate queries run at a time (past it the call is not shadowed, and counted), each bounded by
``shadow.timeout_ms`` on its own connection pool, so a slow or dead candidate can neither slow
the live path nor pile up.

Each shadowed call gets one ``authz.shadow`` log line under the live decision id (the decision's
own line is written as it always is, at the time it was decided):
``{"decision_id", "shadow": {"verdict", "reasons", "agree", "live", "path", "decision_id"}}``,
where ``shadow.decision_id`` is the candidate OPA's own decision id (its decision log holds the
candidate's event). Metrics: ``authz_shadow_agreements_total{verdict}``,
``authz_shadow_disagreements_total{live, shadow}``, ``authz_shadow_errors_total{kind}``.
"""

from __future__ import annotations

import logging
from typing import Any

from sidecar import metrics
from sidecar.background import BoundedTasks
from sidecar.config import Config
from sidecar.decision import DecisionError, Verdict, to_verdict
from sidecar.opa import HttpOpaClient, OpaClient, OpaError

SHADOW_LOGGER = logging.getLogger("authz.shadow")


class Shadow:
    """Asks the candidate policy about decisions the live one made; see the module docstring."""

    def __init__(self, client: OpaClient, path: str, max_in_flight: int) -> None:
        self._client = client
        self._path = path
        self._tasks = BoundedTasks(max_in_flight)

    async def start(self) -> None:
        await self._client.start()

    def observe(self, decision_id: str, input_doc: dict[str, Any], live: Verdict) -> None:
        """Start asking the candidate about ``input_doc`` (returns at once)."""
        if not self._tasks.start(self._evaluate(decision_id, input_doc, live)):
            metrics.SHADOW_ERRORS.labels("busy").inc()

    async def _evaluate(self, decision_id: str, input_doc: dict[str, Any], live: Verdict) -> None:
        shadow: dict[str, Any] = {"live": live.kind, "path": self._path}
        try:
            answer = await self._client.decide(input_doc)
            shadow["decision_id"] = answer.decision_id
            verdict = to_verdict(answer.result)
        except OpaError as exc:
            metrics.SHADOW_ERRORS.labels(exc.code).inc()
            shadow.update(verdict="error", reasons=[exc.reason], agree=None)
        except DecisionError as exc:
            metrics.SHADOW_ERRORS.labels("shape").inc()
            shadow.update(verdict="error", reasons=[f"candidate policy answer unusable: {exc}"], agree=None)
        else:
            agree = verdict.kind == live.kind
            if agree:
                metrics.SHADOW_AGREEMENTS.labels(live.kind).inc()
            else:
                metrics.SHADOW_DISAGREEMENTS.labels(live.kind, verdict.kind).inc()
            shadow.update(verdict=verdict.kind, reasons=list(verdict.reasons), agree=agree)
        SHADOW_LOGGER.info("shadow decision", extra={"decision_id": decision_id, "shadow": shadow})

    async def close(self) -> None:
        """Let the queries in flight finish (each is bounded by the timeout), then close the pool."""
        await self._tasks.drain()
        await self._client.close()


def make_shadow(config: Config) -> Shadow | None:
    """The configured shadow (not started), or None when shadow mode is off."""
    settings = config.shadow
    if settings.decision_path is None and settings.opa_url is None:
        return None
    path = settings.decision_path or config.opa.decision_path
    client = HttpOpaClient(
        settings.opa_url or config.opa.url,
        path,
        settings.timeout_ms,
        max_connections=settings.max_in_flight,
    )
    return Shadow(client, path, settings.max_in_flight)
