"""The check request as the pipeline sees it, independent of the HTTP framework."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

PARTIAL_BODY_HEADER = "x-envoy-auth-partial-body"
# ";" starts path parameters for Tomcat, Jetty and Spring (they strip "..;" to ".."), while Envoy
# and the policy read it as an ordinary character: refused, raw or percent-encoded, everywhere
# (Envoy's route, here, and the policy), so what is judged is what every upstream would serve.
PATH_PARAMETER = re.compile(r";|%3b", re.IGNORECASE)
LOWER_CASE = re.compile(r"[a-z]")


@dataclass(frozen=True)
class CheckRequest:
    """One request Envoy asks about: the original method, path, headers and body."""

    method: str
    path: str  # original path with query, the ext_authz path_prefix removed
    headers: dict[str, str]  # lower-case names, repeated headers joined with ","
    body: bytes
    # gRPC mode: Envoy's attributes.source.principal (the mTLS peer's URI SAN); the identity
    # resolver trusts it only with the per-deployment secret, like XFCC.
    peer_principal: str | None = None
    # The body filled Envoy's buffer (with_request_body.max_request_bytes): Envoy flags a partial
    # body only when it holds more than it sent, so a body of exactly the limit may have a rest
    # that reaches the upstream uninspected.
    at_buffer_limit: bool = False
    # gRPC mode, opa-envoy-plugin profile: the CheckRequest's attributes as the plugin maps them
    # (sidecar.grpc_attributes); None in HTTP mode, where the profile builds what Envoy sent.
    attributes: dict[str, Any] | None = None

    @property
    def body_truncated(self) -> bool:
        """Envoy sent only the first part of a larger body, or as much as its buffer holds."""
        return self.at_buffer_limit or self.headers.get(PARTIAL_BODY_HEADER, "").lower() == "true"


def request_line_problem(method: str, path: str) -> str | None:
    """Why the method or path cannot be judged as the upstream would read it, or None.

    Methods are case-sensitive, but servers disagree on a lower-case one (some upper-case it),
    so the method judged must be the one sent, in upper case.
    """
    if LOWER_CASE.search(method):
        return f"method {method[:32]!r} has lower-case letters; methods are refused unless upper case"
    if PATH_PARAMETER.search(path.partition("?")[0]):
        return "path parameters (';', raw or percent-encoded) are refused: servers disagree on what they mean"
    return None
