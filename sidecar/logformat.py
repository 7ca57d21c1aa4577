"""The conventions every JSON log line of ours follows: RFC 3339 UTC times and the redaction marker.

Shared by the formatter that writes the lines (:mod:`sidecar.logs`), the typed events
(:mod:`sidecar.events`) and the audit that reads them back, so writer and reader cannot drift.
"""

from __future__ import annotations

import datetime as dt
import itertools

REDACTED = "[redacted]"  # what a field named in ``log.redact`` is replaced with


def rfc3339(epoch: float) -> str:
    """``epoch`` seconds as RFC 3339 UTC with microseconds: ``2026-01-02T03:04:05.678901Z``."""
    return format_time(dt.datetime.fromtimestamp(epoch, dt.UTC))


def format_time(moment: dt.datetime) -> str:
    """An aware ``moment`` as RFC 3339 UTC with microseconds; a naive one is refused, never guessed."""
    if moment.tzinfo is None:
        raise ValueError(f"a time without a zone cannot be written as UTC: {moment!r}")
    return moment.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_time(value: str) -> dt.datetime:
    """An RFC 3339 timestamp (``Z`` or an offset; a fraction of any length) as an aware UTC datetime.
    A timestamp without a zone is not RFC 3339: ValueError, never a guess at the local zone."""
    text = value.strip()
    if len(text) < 20 or text[10] not in "Tt":
        raise ValueError(f"not an RFC 3339 timestamp: {value!r}")
    text = text[:10] + "T" + text[11:]
    if text[-1] in "Zz":
        text = text[:-1] + "+00:00"
    head, dot, rest = text.partition(".")
    if dot:  # Python parses at most microseconds: trim OPA's nanoseconds
        digits = "".join(itertools.takewhile(str.isdigit, rest))
        zone = rest[len(digits) :]
        text = f"{head}.{digits[:6]}{zone}"
    parsed = dt.datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        raise ValueError(f"RFC 3339 timestamp without a zone: {value!r}")
    return parsed.astimezone(dt.UTC)


def parse_rfc3339(value: str) -> float:
    """Epoch seconds of an RFC 3339 timestamp (see :func:`parse_time`)."""
    return parse_time(value).timestamp()
