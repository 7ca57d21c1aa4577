"""The response policy's contract: its input document and a strict reading of its answer.

Input (``sidecar/schema/response-input.schema.json``): the request's decision id, the request's
own check input (``request``: agent, task, session, mcp, …) and what the response holds
(``response``: the method and, for a list, its items with their pin state). Answer: ``visible``
(names of listed items to keep) and ``redact`` (rules for tool output, by data class). Any other
shape is an error: the response is then refused, never passed unjudged.
"""

from __future__ import annotations

import re
import re._constants as _constants  # type: ignore[import-not-found]  # no stubs: the parsed form of a pattern
import re._parser as _parser  # type: ignore[import-not-found]
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sidecar.errors import Kind, SidecarError

_REPEATS = (_constants.MAX_REPEAT, _constants.MIN_REPEAT, _constants.POSSESSIVE_REPEAT)


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


MAX_BOUND = 256  # the largest repeat a redact pattern may use


@lru_cache(maxsize=256)
def _compile(pattern: str) -> re.Pattern[str]:
    """Compile a pattern whose every repeat is bounded (``{1,64}``, never ``+``, ``*`` or ``{n,}``).

    Patterns run on the event loop over whole tool outputs: an unbounded repeat that fails to
    match (``[a-z]+@`` over a long run of letters) backtracks quadratically and would stall every
    check in the process. A bound keeps each match attempt short."""
    tree = _parser.parse(pattern)
    if not _bounded(list(tree)):
        raise re.error(f"unbounded or too large repeat (use {{m,n}} with n <= {MAX_BOUND})")
    return re.compile(pattern)


def _bounded(nodes: Any) -> bool:
    """Whether every repeat in the parsed pattern has an upper bound of at most MAX_BOUND."""
    for node in nodes:
        if isinstance(node, tuple) and len(node) == 2:
            op, arg = node
            if op in _REPEATS and (arg[1] is _constants.MAXREPEAT or arg[1] > MAX_BOUND):
                return False
            if not _bounded([arg] if isinstance(arg, tuple) else arg if isinstance(arg, list) else []):
                return False
        elif isinstance(node, list | tuple | _parser.SubPattern) and not _bounded(list(node)):
            return False
    return True
