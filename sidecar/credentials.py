"""Just-in-time upstream credentials: a short JWT per allowed call, replacing the agent's own.

``sub`` is the agent, ``act`` its delegation chain, ``aud`` the target, ``scope`` just this
action, ``exp`` seconds away; upstreams verify it with the sidecar's JWKS. Each credential is
bound to the one request it was minted for (``req_method``, ``req_target``, ``req_body_sha256``,
the idea of DPoP's ``htm``/``htu``/``ath``): an upstream that recomputes them from what it
received refuses it for any other method, path, query or body (docs/tokens.md).
"""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from dataclasses import dataclass

from sidecar.keys import KeySet
from sidecar.tokens import CREDENTIAL_TYP, act_claim, sign


@dataclass(frozen=True)
class CredentialSpec:
    """What the decision asked for."""

    audience: str
    scopes: tuple[str, ...]
    ttl_seconds: int


# The claims that bind a credential to its request; upstreams compare them with what they received.
METHOD_CLAIM = "req_method"
TARGET_CLAIM = "req_target"
BODY_CLAIM = "req_body_sha256"


def body_sha256(body: bytes) -> str:
    """Unpadded base64url SHA-256 of the exact body bytes (the empty body too)."""
    return base64.urlsafe_b64encode(hashlib.sha256(body).digest()).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class RequestBinding:
    """The request a credential is minted for, in the form the upstream receives it.

    ``target`` is the origin-form request target (path and query) exactly as Envoy forwards it:
    not decoded or re-normalised, so an upstream compares it byte for byte with its raw target.
    """

    method: str
    target: str
    body: bytes

    def claims(self) -> dict[str, str]:
        return {METHOD_CLAIM: self.method, TARGET_CLAIM: self.target, BODY_CLAIM: body_sha256(self.body)}


class CredentialMinter:
    def __init__(self, keys: KeySet, issuer: str, max_ttl_seconds: int) -> None:
        self._keys = keys
        self._issuer = issuer
        self._max_ttl = max_ttl_seconds

    def mint(
        self,
        spec: CredentialSpec,
        *,
        request: RequestBinding,
        agent: str,
        chain: tuple[str, ...],
        decision_id: str,
        task_id: str | None,
        not_after: int | None = None,
    ) -> str:
        """``not_after`` caps the expiry (the task's own), so a credential never outlives its grant."""
        now = int(time.time())
        exp = now + min(spec.ttl_seconds, self._max_ttl)
        if not_after is not None:
            exp = min(exp, not_after)
        claims: dict[str, object] = {
            "iss": self._issuer,
            "sub": agent,
            "aud": spec.audience,
            "scope": " ".join(spec.scopes),
            "iat": now,
            "nbf": now,
            "exp": exp,
            "jti": str(uuid.uuid4()),
            "decision_id": decision_id,
            **request.claims(),
        }
        if task_id:
            claims["task_id"] = task_id
        act = act_claim(chain)
        if act:
            claims["act"] = act
        return sign(self._keys, claims, CREDENTIAL_TYP)
