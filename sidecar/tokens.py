"""Sign and verify the sidecar's own JWTs (task tokens and upstream credentials) with :mod:`sidecar.keys`.

Each kind has an explicit ``typ`` (RFC 8725 §3.11) so one can never be passed off as the other.
"""

from __future__ import annotations

from typing import Any

import jwt

from sidecar.errors import Kind, SidecarError
from sidecar.keys import KeySet, SigningKey
from sidecar.verified_cache import VerifiedCache

TASK_TYP = "task+jwt"
CREDENTIAL_TYP = "at+jwt"  # RFC 9068 access token


class TokenError(SidecarError, ValueError):
    """The token is not one of ours, or not valid; the message never contains the token."""

    KIND = Kind.UNAUTHENTICATED
    CODE = "token"

    def __init__(self, reason: str, *, expired: bool = False) -> None:
        super().__init__(reason)
        self.expired = expired


def sign(keys: KeySet, claims: dict[str, Any], typ: str) -> str:
    key = keys.active()
    return jwt.encode(claims, key.private, algorithm=key.algorithm, headers={"kid": key.kid, "typ": typ})


def verify(keys: KeySet, token: str, *, typ: str, issuer: str, audience: str, max_bytes: int = 8192) -> dict[str, Any]:
    """Signature (by ``kid`` among current keys, with that key's own algorithm), ``typ``, ``iss``, ``aud``, ``exp``."""
    return _verify(keys, token, typ=typ, issuer=issuer, audience=audience, max_bytes=max_bytes)[0]


def _verify(
    keys: KeySet, token: str, *, typ: str, issuer: str, audience: str, max_bytes: int = 8192
) -> tuple[dict[str, Any], SigningKey]:
    """:func:`verify`, and the key that verified the token."""
    if len(token) > max_bytes:
        raise TokenError(f"token is larger than {max_bytes} bytes")
    if not token.isascii():  # base64url and dots only: other text would make the JWT library raise
        raise TokenError("token is not a well-formed JWT")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise TokenError("token is not a well-formed JWT") from exc
    if header.get("typ") != typ:
        raise TokenError(f"token type is not {typ}")
    key = keys.by_kid(str(header.get("kid", "")))
    if key is None:
        raise TokenError("token was not signed by a key of this sidecar")
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key.public,
            algorithms=[key.algorithm],
            audience=audience,
            issuer=issuer,
            options={"require": ["exp", "iat", "sub", "jti", "iss", "aud"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise TokenError("token has expired", expired=True) from exc
    except jwt.InvalidSignatureError as exc:
        raise TokenError("token signature does not verify") from exc
    except jwt.PyJWTError as exc:
        raise TokenError(f"token is invalid ({type(exc).__name__})") from exc
    return claims, key


class VerifiedTokens:
    """:func:`verify` for one kind of token (``typ``, ``issuer``, ``audience``), remembering the
    claims of recent successes until their ``exp`` (:class:`~sidecar.verified_cache.VerifiedCache`).

    An agent presents the same task token on every call of its task. Only the signature and claims
    checks are remembered; whatever can change (the task's state, revocation, its binding to the
    caller) is looked up on every call by the caller."""

    def __init__(self, keys: KeySet, *, typ: str, issuer: str, audience: str, max_entries: int = 4096) -> None:
        self._keys = keys
        self._typ, self._issuer, self._audience = typ, issuer, audience
        self._cache: VerifiedCache[dict[str, Any]] = VerifiedCache(max_entries)

    def verify(self, token: str) -> dict[str, Any]:
        digest = self._cache.key(token)
        cached = self._cache.get(digest, self._keys.by_kid)
        if cached is not None:
            return dict(cached)
        claims, key = _verify(self._keys, token, typ=self._typ, issuer=self._issuer, audience=self._audience)
        if isinstance(claims.get("exp"), int | float):
            self._cache.put(digest, dict(claims), key, key.kid, float(claims["exp"]))
        return claims


def act_claim(chain: list[str] | tuple[str, ...]) -> dict[str, Any] | None:
    """RFC 8693 ``act`` nesting for a delegation chain given nearest actor first."""
    act: dict[str, Any] | None = None
    for actor in reversed(chain):
        act = {"sub": actor, **({"act": act} if act else {})}
    return act
