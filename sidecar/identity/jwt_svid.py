"""Verify JWT-SVIDs with the ``spiffe`` package, plus the checks it leaves to us."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import jwt

from sidecar.errors import Kind, SidecarError
from sidecar.identity.bundles import BundleSource
from sidecar.spiffe_types import JwtSvid, SpiffeId, TrustDomain
from sidecar.verified_cache import VerifiedCache

IAT_LEEWAY_SECONDS = 60


class JwtSvidError(SidecarError, ValueError):
    """The JWT-SVID was presented but is not valid; the message says why (no token text)."""

    KIND = Kind.UNAUTHENTICATED
    CODE = "jwt_svid"


@dataclass(frozen=True)
class VerifiedJwt:
    spiffe_id: SpiffeId
    claims: dict[str, Any]


class JwtSvidVerifier:
    """Signature, ``exp``, audience, algorithm allowlist and trust-domain allowlist."""

    def __init__(
        self,
        bundles: BundleSource,
        audiences: list[str],
        algorithms: list[str],
        trust_domains: list[str],
        max_token_bytes: int,
        cache_entries: int = 4096,
    ) -> None:
        self._bundles = bundles
        self._audiences = set(audiences)
        self._algorithms = frozenset(algorithms)
        self._trust_domains = frozenset(trust_domains)
        self._max_bytes = max_token_bytes
        self._cache: VerifiedCache[VerifiedJwt] = VerifiedCache(cache_entries)

    def verify(self, token: str) -> VerifiedJwt:
        if len(token) > self._max_bytes:
            raise JwtSvidError(f"token is larger than {self._max_bytes} bytes")
        if not token.isascii():  # a compact JWT is base64url and dots; anything else never reaches a parser
            raise JwtSvidError("token is not a well-formed JWT")
        key = self._cache.key(token)
        cached = self._cache.get(key, self._bundles.bundle_for)
        if cached is not None:
            return cached
        result, bundle, trust_domain = self._verify(token)
        self._cache.put(key, result, bundle, trust_domain, float(result.claims["exp"]))
        return result

    def _verify(self, token: str) -> tuple[VerifiedJwt, object, TrustDomain]:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except Exception as exc:
            raise JwtSvidError("token is not a well-formed JWT") from exc
        alg = header.get("alg")
        if alg not in self._algorithms:
            raise JwtSvidError(f"algorithm {alg!r} is not allowed")
        subject = unverified.get("sub")
        if not isinstance(subject, str):
            raise JwtSvidError("token has no 'sub' claim")
        try:
            trust_domain = SpiffeId(subject).trust_domain
        except Exception as exc:
            raise JwtSvidError("token subject is not a SPIFFE ID") from exc
        if trust_domain.name not in self._trust_domains:
            raise JwtSvidError(f"trust domain {trust_domain.name} is not trusted")
        bundle = self._bundles.bundle_for(trust_domain)
        if bundle is None:
            raise JwtSvidError(f"no JWT bundle for trust domain {trust_domain.name}")
        if not isinstance(unverified.get("exp"), int | float):
            raise JwtSvidError("token has no numeric 'exp' claim")
        issued = unverified.get("iat")
        # The spiffe package does not check iat; a token "issued" in the future is not one to trust.
        if issued is not None and (not isinstance(issued, int | float) or issued > time.time() + IAT_LEEWAY_SECONDS):
            raise JwtSvidError("token 'iat' is in the future")
        try:
            svid = JwtSvid.parse_and_validate(token, bundle, self._audiences)
        except Exception as exc:  # the spiffe package raises several unrelated types
            raise JwtSvidError(_describe(exc)) from exc
        # The signature now covers the payload decoded above, so its claims are verified.
        return VerifiedJwt(spiffe_id=svid.spiffe_id, claims=unverified), bundle, trust_domain


def _describe(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    lowered = text.lower()
    if "expired" in lowered:
        return "token has expired"
    if "audience" in lowered:
        return "token audience is not accepted here"
    if "signature" in lowered:
        return "token signature does not verify"
    if "not yet valid" in lowered or "immature" in lowered:
        return "token is not yet valid"
    if "authority" in lowered or "kid" in lowered:
        return "token key id is not in the trust bundle"
    return f"token is invalid ({type(exc).__name__})"
