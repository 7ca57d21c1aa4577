"""The agent's declared intent: agent-asserted, so policies may only use it to restrict.

Read from the ``x-agent-purpose`` / ``x-agent-confidence`` headers or the MCP request's
``params._meta.intent`` (``{"purpose": str, "confidence": 0..1}``); never from tool
arguments. When both are given, the lower confidence counts.
"""

from __future__ import annotations

import math
from typing import Any

from sidecar.mcp import BodyError, McpRequest

PURPOSE_HEADER = "x-agent-purpose"
CONFIDENCE_HEADER = "x-agent-confidence"
MAX_PURPOSE_CHARS = 512


def declared_intent(headers: dict[str, str], mcp: McpRequest | None) -> dict[str, Any] | None:
    """The ``input.intent`` object, or None when nothing was declared."""
    declared: list[tuple[str, str | None, float | None]] = []
    if PURPOSE_HEADER in headers or CONFIDENCE_HEADER in headers:
        declared.append(
            (
                "header",
                _purpose(headers.get(PURPOSE_HEADER)),
                _confidence(headers.get(CONFIDENCE_HEADER)),
            )
        )
    if mcp is not None and "intent" in mcp.meta:
        meta = mcp.meta["intent"]
        if not isinstance(meta, dict):
            raise BodyError("params._meta.intent must be an object")
        declared.append(("mcp_meta", _purpose(meta.get("purpose")), _confidence(meta.get("confidence"))))
    if not declared:
        return None
    source, purpose, _ = declared[0]
    confidences = [c for _, _, c in declared if c is not None]
    return {
        "purpose": purpose if purpose is not None else next((p for _, p, _ in declared if p), None),
        "confidence": min(confidences) if confidences else None,
        "source": source,
        "asserted": True,
    }


def _purpose(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_PURPOSE_CHARS:
        raise BodyError(f"declared purpose must be a string of at most {MAX_PURPOSE_CHARS} characters")
    return value


def _confidence(value: Any) -> float | None:
    if value is None:
        return None
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or not 0.0 <= number <= 1.0:
        raise BodyError("declared confidence must be a number between 0 and 1")
    return number
