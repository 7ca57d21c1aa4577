"""Just-in-time upstream credentials: a short JWT per allowed call, replacing the agent's own.

``sub`` is the agent, ``act`` its delegation chain, ``aud`` the target, ``scope`` just this
action, ``exp`` seconds away; upstreams verify it with the sidecar's JWKS.
"""

from __future__ import annotations

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


class CredentialMinter:
    def __init__(self, keys: KeySet, issuer: str, max_ttl_seconds: int) -> None:
        self._keys = keys
        self._issuer = issuer
        self._max_ttl = max_ttl_seconds

    def mint(
        self,
        spec: CredentialSpec,
        *,
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
        }
        if task_id:
            claims["task_id"] = task_id
        act = act_claim(chain)
        if act:
            claims["act"] = act
        return sign(self._keys, claims, CREDENTIAL_TYP)
