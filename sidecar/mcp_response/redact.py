"""Redaction of tool output: named fields replaced whole, patterns replaced inside every string."""

from __future__ import annotations

from collections import Counter
from typing import Any

from sidecar.mcp_response.policy import RedactRule


def redact(value: Any, rules: tuple[RedactRule, ...], counts: Counter[str]) -> Any:
    """``value`` with every rule applied; ``counts`` gains one per redaction, by data class."""
    if not rules:
        return value
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, child in value.items():
            rule = next((r for r in rules if key in r.fields), None)
            if rule is not None and child is not None:
                out[key] = rule.mark
                counts[rule.data_class] += 1
            else:
                out[key] = redact(child, rules, counts)
        return out
    if isinstance(value, list):
        return [redact(child, rules, counts) for child in value]
    if isinstance(value, str):
        for rule in rules:
            for pattern in rule.patterns:
                value, hits = pattern.subn(rule.mark, value)
                if hits:
                    counts[rule.data_class] += hits
        return value
    return value
