"""Decision → the HTTP answer Envoy's ext_authz HTTP service mode understands.

Envoy's conventions: 200 is allow (headers copied upstream per ``allowed_upstream_headers``,
to the client per ``allowed_client_headers_on_success``; ``x-envoy-auth-headers-to-remove``
drops request headers); any other status is a deny forwarded to the client; 5xx is an
authz-service error, answered with Envoy's ``status_on_error``.
"""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.outcome import Decision

HEADERS_TO_REMOVE = "x-envoy-auth-headers-to-remove"


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


def encode(decision: Decision) -> HttpAnswer:
    """The HTTP answer for ``decision``: one header list, Envoy's matchers pick where each goes."""
    if not decision.allowed:
        return HttpAnswer(decision.status, decision.client_headers, decision.body)
    headers = [*decision.upstream_headers, *decision.client_headers]
    if decision.remove_headers:
        headers.append((HEADERS_TO_REMOVE, ",".join(decision.remove_headers)))
    return HttpAnswer(decision.status, tuple(headers), b"")
