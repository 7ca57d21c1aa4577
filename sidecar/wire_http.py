"""Decision → the HTTP answer Envoy's ext_authz HTTP service mode understands.

Envoy's conventions: 200 is allow (headers copied upstream per ``allowed_upstream_headers``,
to the client per ``allowed_client_headers_on_success``; ``x-envoy-auth-headers-to-remove``
drops request headers); any other status is a deny forwarded to the client; 5xx is an
authz-service error, answered with Envoy's ``status_on_error``.
"""

from __future__ import annotations

import json
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
    if decision.plugin is not None and (decision.plugin.query_set or decision.plugin.query_remove):
        return _cannot("the policy rewrites query parameters, which Envoy's HTTP service mode cannot do")
    if not decision.allowed:
        if not decision.failed and not 300 <= decision.status <= 499:  # Envoy would read 2xx as allow, 5xx as error
            return _cannot(f"the policy's deny status {decision.status} cannot be sent in HTTP service mode")
        return HttpAnswer(decision.status, _with_content_type(decision), decision.body)
    headers = [*decision.upstream_headers, *decision.client_headers]
    if decision.remove_headers:
        headers.append((HEADERS_TO_REMOVE, ",".join(decision.remove_headers)))
    return HttpAnswer(decision.status, tuple(headers), b"")


def _cannot(reason: str) -> HttpAnswer:
    """503 (fail closed): a decision this wire cannot carry is never weakened into another."""
    body = json.dumps({"verdict": "error", "reasons": [reason]}).encode()
    return HttpAnswer(503, (("content-type", "application/json"),), body)


def _with_content_type(decision: Decision) -> tuple[tuple[str, str], ...]:
    """A policy's own deny body gets a content type when it names none: JSON when it parses."""
    headers = decision.client_headers
    if not decision.body or any(name.lower() == "content-type" for name, _ in headers):
        return headers
    try:
        json.loads(decision.body)
        kind = "application/json"
    except ValueError:
        kind = "text/plain; charset=utf-8"
    return (*headers, ("content-type", kind))
