"""The response policy's contract: its input document and a strict reading of its answer.

Input (``sidecar/schema/response-input.schema.json``): the request's decision id, the request's
own check input (``request``: agent, task, session, mcp, …) and what the response holds
(``response``: the method and, for a list, its items with their pin state). Answer: ``visible``
(names of listed items to keep) and ``redact`` (rules for tool output, by data class). Any other
shape is an error: the response is then refused, never passed unjudged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sidecar.errors import Kind, SidecarError


class ResponsePolicyError(SidecarError):
    KIND = Kind.UNAVAILABLE
    CODE = "response_policy"


@dataclass(frozen=True)
class RedactRule:
    data_class: str
    fields: frozenset[str]  # object keys whose values are replaced whole
    patterns: tuple[re.Pattern[str], ...]  # matches replaced inside every string

    @property
    def mark(self) -> str:
        return f"[redacted:{self.data_class}]"


@dataclass(frozen=True)
class ResponseVerdict:
    visible: frozenset[str]
    redact: tuple[RedactRule, ...]
    reasons: dict[str, str]  # hidden item → why


def response_input(
    decision_id: str,
    request_input: dict[str, Any],
    method: str,
    *,
    items: list[dict[str, Any]] | None,
    tool: str | None,
) -> dict[str, Any]:
    response: dict[str, Any] = {"method": method}
    if items is not None:
        response["items"] = items
    if tool is not None:
        response["tool"] = tool
    return {"decision_id": decision_id, "request": request_input, "response": response}


def read_verdict(result: Any) -> ResponseVerdict:
    if not isinstance(result, dict):
        raise ResponsePolicyError("the response policy answered no object")
    visible = result.get("visible", [])
    if not isinstance(visible, list) or not all(isinstance(v, str) for v in visible):
        raise ResponsePolicyError("the response policy's visible is not a list of names")
    reasons = result.get("hidden", {})
    if not isinstance(reasons, dict) or not all(isinstance(v, str) for v in reasons.values()):
        raise ResponsePolicyError("the response policy's hidden is not an object of reasons")
    rules = result.get("redact", [])
    if not isinstance(rules, list):
        raise ResponsePolicyError("the response policy's redact is not a list")
    return ResponseVerdict(frozenset(visible), tuple(_rule(rule) for rule in rules), dict(reasons))


def _rule(raw: Any) -> RedactRule:
    if not isinstance(raw, dict) or not isinstance(raw.get("data_class"), str):
        raise ResponsePolicyError("a redact rule needs a data_class")
    fields, patterns = raw.get("fields", []), raw.get("patterns", [])
    if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
        raise ResponsePolicyError("a redact rule's fields must be a list of names")
    if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
        raise ResponsePolicyError("a redact rule's patterns must be a list of regular expressions")
    try:
        compiled = tuple(_compile(p) for p in patterns)
    except re.error as exc:
        raise ResponsePolicyError(f"a redact pattern does not compile: {exc}") from exc
    return RedactRule(raw["data_class"], frozenset(fields), compiled)


@lru_cache(maxsize=256)
def _compile(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)
