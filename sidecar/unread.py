"""Input fields the sidecar may leave out of OPA's input when the policy names them unread.

The one table of them (:data:`OMITTABLE_INPUT`, dotted paths into the input document), how a
document goes without them (:func:`without_unread`, for the query) and how a logged input shows
that it went without them (:func:`left_out_of`, for ``policy replay``).
"""

from __future__ import annotations

from typing import Any

# The recent window is over half of a typical input, and what OPA decodes and logs costs it CPU
# per byte; the shipped policy never reads it.
OMITTABLE_INPUT = frozenset({"session.recent"})


def without_unread(document: dict[str, Any], unread: frozenset[str]) -> dict[str, Any]:
    """``document`` without the omittable fields in ``unread``: each key is left out, never emptied,
    so a policy that reads it finds it undefined rather than an empty history. ``document`` itself
    is unchanged; it is returned as is when nothing is left out."""
    for dotted in sorted(unread & OMITTABLE_INPUT):
        document = _without(document, dotted.split("."))
    return document


def left_out_of(document: Any) -> tuple[str, ...]:
    """The omittable fields missing from ``document`` where their parent object is present."""
    return tuple(dotted for dotted in sorted(OMITTABLE_INPUT) if _missing(document, dotted.split(".")))


def _without(document: dict[str, Any], path: list[str]) -> dict[str, Any]:
    head, rest = path[0], path[1:]
    if not rest:
        return {k: v for k, v in document.items() if k != head} if head in document else document
    child = document.get(head)
    if not isinstance(child, dict):
        return document
    lean = _without(child, rest)
    return document if lean is child else {**document, head: lean}


def _missing(document: Any, path: list[str]) -> bool:
    for key in path[:-1]:
        if not isinstance(document, dict):
            return False
        document = document.get(key)
    return isinstance(document, dict) and path[-1] not in document
