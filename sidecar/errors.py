"""One error taxonomy: every refusal or failure in the sidecar is a :class:`SidecarError`.

An error says what went wrong in domain terms (its :class:`Kind`), why (``reason``, safe to show
to the caller) and a short ``code`` for metrics. It never carries a transport status: each wire
maps kinds to its own statuses in :mod:`sidecar.wire_status`.
"""

from __future__ import annotations

from enum import StrEnum


class Kind(StrEnum):
    """What kind of failure; the wires map each to a status (:mod:`sidecar.wire_status`)."""

    INVALID = "invalid"  # the request cannot be judged as sent
    TOO_LARGE = "too_large"  # more than can be inspected or bound
    UNAUTHENTICATED = "unauthenticated"  # no valid credential for what needs one
    FORBIDDEN = "forbidden"  # authenticated, but not allowed
    NOT_FOUND = "not_found"  # nothing of that id for this caller
    CONFLICT = "conflict"  # the state changed under the request
    TOO_MANY = "too_many"  # a cap on pending work is reached
    UNAVAILABLE = "unavailable"  # no decision could be made: fail closed


class SidecarError(Exception):
    """Base of every domain error: a :class:`Kind`, a ``reason`` and a metric ``code``.

    Subclasses set a default ``KIND`` and ``CODE``; a raise site may choose another kind."""

    KIND = Kind.UNAVAILABLE
    CODE = "error"

    def __init__(self, reason: str, *, kind: Kind | None = None, code: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind or self.KIND
        self.code = code or self.CODE
