"""Who is approving: an approval service by JWT-SVID, or a human by an OIDC ID token.

A bearer token whose ``iss`` is the configured OIDC issuer is verified against that issuer's
JWKS (file or URL: signature, ``aud``, ``exp``, asymmetric algorithms only); any other bearer
token must be a valid JWT-SVID. Approver identities are never taken from plain headers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jwt

from sidecar.identity import IdentityError, IdentityResolver, bearer_token

ALGORITHMS = ["RS256", "RS384", "ES256", "ES384", "PS256"]


@dataclass(frozen=True)
class Approver:
    kind: Literal["spiffe", "oidc"]
    id: str  # a SPIFFE ID, or "<issuer>#<sub>"
    claims: dict[str, Any] = field(default_factory=dict)


class OidcVerifier:
    def __init__(self, issuer: str, audience: str, jwks_file: Path | None, jwks_url: str | None) -> None:
        if (jwks_file is None) == (jwks_url is None):
            raise ValueError("approvals: set exactly one of oidc_jwks_file and oidc_jwks_url with oidc_issuer")
        self.issuer = issuer
        self._audience = audience
        self._file = jwks_file
        self._client = jwt.PyJWKClient(jwks_url, cache_keys=True, lifespan=300) if jwks_url else None

    def verify(self, token: str) -> dict[str, Any]:
        """Blocking (the URL variant fetches keys): call it off the event loop."""
        try:
            header = jwt.get_unverified_header(token)
            if header.get("alg") not in ALGORITHMS:
                raise IdentityError(f"OIDC token algorithm {header.get('alg')!r} is not allowed", invalid_token=True)
            key = self._key(str(header.get("kid", "")))
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=ALGORITHMS,
                audience=self._audience,
                issuer=self.issuer,
                options={"require": ["exp", "iat", "sub", "iss", "aud"]},
            )
        except jwt.PyJWTError as exc:
            raise IdentityError(f"OIDC token rejected ({type(exc).__name__})", invalid_token=True) from exc
        return claims

    def _key(self, kid: str) -> Any:
        if self._client is not None:
            return self._client.get_signing_key(kid).key
        if self._file is None:  # neither a JWKS URL nor a file: no key verifies anything
            raise jwt.InvalidKeyError("no OIDC JWKS is configured")
        keys = jwt.PyJWKSet.from_json(self._file.read_text())
        for key in keys.keys:
            if key.key_id == kid:
                return key.key
        raise jwt.InvalidKeyError("no key with this kid in the OIDC JWKS")


class ApproverAuthenticator:
    def __init__(self, svid_resolver: IdentityResolver, oidc: OidcVerifier | None) -> None:
        self._svid = svid_resolver
        self._oidc = oidc

    def authenticate(self, headers: dict[str, str]) -> Approver:
        token = bearer_token(headers.get("authorization"))
        if token is None:
            raise IdentityError("an approver token (JWT-SVID or OIDC ID token) is required")
        if self._oidc is not None and _issuer(token) == self._oidc.issuer:
            claims = self._oidc.verify(token)
            return Approver("oidc", f"{claims['iss']}#{claims['sub']}", claims)
        identity = self._svid.resolve(headers)
        if identity is None:  # the resolver requires one; never let an anonymous caller decide
            raise IdentityError("an approver token (JWT-SVID or OIDC ID token) is required")
        return Approver("spiffe", str(identity.spiffe_id), identity.claims)


def _issuer(token: str) -> str | None:
    try:
        issuer = jwt.decode(token, options={"verify_signature": False}).get("iss")
    except (jwt.PyJWTError, json.JSONDecodeError):
        return None
    return issuer if isinstance(issuer, str) else None
