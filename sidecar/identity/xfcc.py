"""Parse Envoy's ``x-forwarded-client-cert`` header (XFCC).

Elements are ``,``-separated; each is ``;``-separated ``Key=Value`` pairs; values may be
double-quoted with backslash escapes. Only Envoy's own SANITIZE_SET output is trusted,
which holds exactly one element: the verified peer of this connection.
"""

from __future__ import annotations

from functools import lru_cache

from sidecar.errors import Kind, SidecarError
from sidecar.spiffe_types import SpiffeId

MAX_XFCC_BYTES = 16_384


class XfccError(SidecarError, ValueError):
    """The XFCC header is malformed or does not name exactly one SPIFFE peer."""

    KIND = Kind.UNAUTHENTICATED
    CODE = "xfcc"


def parse_xfcc(header: str) -> list[dict[str, list[str]]]:
    """Split an XFCC header into elements of ``key -> values`` (keys lower-cased)."""
    if len(header) > MAX_XFCC_BYTES:
        raise XfccError("x-forwarded-client-cert header is too large")
    elements: list[dict[str, list[str]]] = []
    element: dict[str, list[str]] = {}
    pair = ""
    in_quotes = False
    escaped = False

    def close_pair() -> None:
        nonlocal pair
        if not pair:
            return
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise XfccError(f"malformed XFCC pair {pair[:40]!r}")
        element.setdefault(key.strip().lower(), []).append(value)
        pair = ""

    for char in header:
        if escaped:
            pair += char
            escaped = False
        elif char == "\\" and in_quotes:
            escaped = True
        elif char == '"':
            in_quotes = not in_quotes
        elif char == ";" and not in_quotes:
            close_pair()
        elif char == "," and not in_quotes:
            close_pair()
            if not element:
                raise XfccError("empty XFCC element")
            elements.append(element)
            element = {}
        else:
            pair += char
    if in_quotes or escaped:
        raise XfccError("unterminated quoted value in XFCC")
    close_pair()
    if not element:
        raise XfccError("empty XFCC element")
    elements.append(element)
    return elements


# Envoy sends the same XFCC value on every call of a connection's peer: parsing is a pure
# function of the header, so its result is kept (bounded; failures are never kept).
@lru_cache(maxsize=4096)
def peer_spiffe_id(header: str) -> SpiffeId:
    """The one verified peer's SPIFFE ID from an XFCC header set by Envoy (SANITIZE_SET)."""
    elements = parse_xfcc(header)
    if len(elements) != 1:
        raise XfccError(f"expected exactly one XFCC element, got {len(elements)}")
    uris = elements[0].get("uri", [])
    if len(uris) != 1:
        raise XfccError(f"expected exactly one URI in the XFCC element, got {len(uris)}")
    try:
        return SpiffeId(uris[0])
    except Exception as exc:  # the spiffe package raises several error types
        raise XfccError(f"XFCC URI is not a valid SPIFFE ID: {exc}") from exc
