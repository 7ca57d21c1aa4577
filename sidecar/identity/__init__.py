"""Who is calling: verified SPIFFE identity from XFCC, a JWT-SVID, or the pod's own SVID.

Every configured source is checked; a credential that is presented but invalid is an
:class:`IdentityError` (401), never a reason to fall through to another source. When
several sources are presented they must name the same SPIFFE ID.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from sidecar import metrics
from sidecar.config import IdentityConfig, IdentitySource
from sidecar.errors import Kind, SidecarError
from sidecar.identity.chain import DelegationError, actor_chain
from sidecar.identity.jwt_svid import JwtSvidError, JwtSvidVerifier
from sidecar.identity.xfcc import XfccError, peer_spiffe_id
from sidecar.spiffe_types import SpiffeId

Source = IdentitySource
XFCC_HEADER = "x-forwarded-client-cert"


class IdentityError(SidecarError):
    """Authentication failed; ``reason`` is safe to show to the caller."""

    KIND = Kind.UNAUTHENTICATED
    CODE = "identity"

    def __init__(self, reason: str, *, invalid_token: bool = False) -> None:
        super().__init__(reason)
        self.invalid_token = invalid_token  # a credential was presented: the challenge says it is invalid


@dataclass(frozen=True)
class Identity:
    """A verified caller."""

    spiffe_id: SpiffeId
    source: Source
    claims: dict[str, Any] = field(default_factory=dict)
    delegation_chain: tuple[str, ...] = ()


class IdentityResolver:
    """Applies the configured identity sources, in order, to one request's headers."""

    def __init__(
        self,
        config: IdentityConfig,
        jwt_verifier: JwtSvidVerifier | None,
        xfcc_secret: str | None,
    ) -> None:
        self._config = config
        self._trust_domains = frozenset(config.trust_domains)
        self._jwt = jwt_verifier
        self._xfcc_secret = xfcc_secret
        self._pod_id = SpiffeId(config.pod.spiffe_id) if config.pod.spiffe_id else None

    def resolve(self, headers: dict[str, str], peer_principal: str | None = None) -> Identity | None:
        """``peer_principal`` is gRPC mode's ``source.principal``: the ``xfcc`` source trusts it like XFCC."""
        found = []
        for source in self._config.sources:
            try:
                identity = self._from_source(source, headers, peer_principal)
            except IdentityError:
                metrics.IDENTITY_FAILURES.labels(source).inc()
                raise
            if identity is not None:
                found.append(identity)
        if not found:
            if self._config.required:
                metrics.IDENTITY_FAILURES.labels("none").inc()
                raise IdentityError("no agent identity was presented")
            return None
        if len({str(identity.spiffe_id) for identity in found}) > 1:
            metrics.IDENTITY_FAILURES.labels("mismatch").inc()
            raise IdentityError("the presented credentials name different SPIFFE IDs")
        return found[0]

    def _from_source(self, source: Source, headers: dict[str, str], peer_principal: str | None) -> Identity | None:
        if source == "xfcc":
            return self._from_peer(headers, peer_principal)
        if source == "jwt_svid":
            return self._from_jwt(headers)
        return self._from_pod()

    def _from_peer(self, headers: dict[str, str], peer_principal: str | None) -> Identity | None:
        """The mTLS peer Envoy verified: XFCC (HTTP mode) and/or ``source.principal`` (gRPC mode)."""
        value = headers.get(XFCC_HEADER)
        if value is None and not peer_principal:
            return None
        presented = headers.get(self._config.xfcc.secret_header, "")
        if not self._xfcc_secret or not hmac.compare_digest(presented.encode(), self._xfcc_secret.encode()):
            what = "x-forwarded-client-cert" if value is not None else "source.principal"
            raise IdentityError(f"{what} is not trusted on this listener")
        peers: dict[str, SpiffeId] = {}
        try:
            if value is not None:
                from_xfcc = peer_spiffe_id(value)
                peers[str(from_xfcc)] = from_xfcc
            if peer_principal:
                from_principal = principal_spiffe_id(peer_principal)
                peers[str(from_principal)] = from_principal
        except XfccError as exc:
            raise IdentityError(f"peer certificate identity is unusable: {exc}") from exc
        except Exception as exc:  # the spiffe package raises several error types
            raise IdentityError("peer certificate identity is unusable: source.principal is not a SPIFFE ID") from exc
        if len(peers) != 1:
            raise IdentityError("x-forwarded-client-cert and source.principal name different SPIFFE IDs")
        return Identity(self._trusted(peers.popitem()[1]), "xfcc")

    def _from_jwt(self, headers: dict[str, str]) -> Identity | None:
        token = bearer_token(headers.get("authorization"))
        if token is None:
            return None
        if self._jwt is None:
            raise IdentityError("JWT-SVIDs are not accepted: no JWT bundle is configured")
        try:
            verified = self._jwt.verify(token)
            chain = actor_chain(verified.claims, self._config.max_delegation_depth)
        except (JwtSvidError, DelegationError) as exc:
            raise IdentityError(f"JWT-SVID rejected: {exc}", invalid_token=True) from exc
        return Identity(verified.spiffe_id, "jwt_svid", verified.claims, tuple(chain))

    def _from_pod(self) -> Identity | None:
        if self._pod_id is None:
            return None
        return Identity(self._trusted(self._pod_id), "pod")

    def _trusted(self, spiffe_id: SpiffeId) -> SpiffeId:
        if spiffe_id.trust_domain.name not in self._trust_domains:
            raise IdentityError(f"trust domain {spiffe_id.trust_domain.name} is not trusted")
        return spiffe_id


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer`` header, else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


@lru_cache(maxsize=4096)
def principal_spiffe_id(principal: str) -> SpiffeId:
    """gRPC mode's ``source.principal`` as a SPIFFE ID (the same on every call of a peer; kept)."""
    return SpiffeId(principal)
