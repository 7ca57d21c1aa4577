"""The check request as the pipeline sees it, independent of the HTTP framework."""

from __future__ import annotations

from dataclasses import dataclass

PARTIAL_BODY_HEADER = "x-envoy-auth-partial-body"


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

    @property
    def body_truncated(self) -> bool:
        """Envoy sent only the first part of a larger body."""
        return self.headers.get(PARTIAL_BODY_HEADER, "").lower() == "true"
