"""JSON logging (python-json-logger) and the one-line-per-decision record.

The decision record carries ids, verdicts and reasons, never a token, a secret or a raw
credential: the path is logged without its query string, headers are not logged at all.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

from pythonjsonlogger.json import JsonFormatter

DECISION_LOGGER = logging.getLogger("authz.decision")


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        JsonFormatter(
            "{asctime}{levelname}{name}{message}",
            style="{",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


@dataclass
class DecisionRecord:
    """What one check decided and why; logged as one JSON line."""

    decision_id: str = ""
    request_id: str = ""  # Envoy's x-request-id: correlates Envoy's own 503s with this record
    method: str = ""
    host: str = ""
    path: str = ""
    agent: str | None = None
    identity_source: str | None = None
    task: str | None = None
    approval: str | None = None
    mcp_method: str | None = None
    tool: str | None = None
    verdict: str = "error"
    status: int = 503
    stage: str = "start"
    reasons: list[str] = field(default_factory=list)
    latency_ms: float = 0.0
    opa_ms: float | None = None

    def emit(self) -> None:
        # A shallow copy: asdict() deep-copies every field and costs twice as much per decision.
        DECISION_LOGGER.info("decision", extra=dict(vars(self)))
