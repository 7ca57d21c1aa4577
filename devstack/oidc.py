"""A development OIDC issuer for human approvers: a signing key, its JWKS, and ID tokens."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sidecar.keys import SigningKey, generate_key, signing_key, write_key

DEV_ISSUER = "https://idp.demo.local"
DEV_AUDIENCE = "authz-sidecar-approvals"


class DevOidcIssuer:
    def __init__(self, root: Path, issuer: str = DEV_ISSUER) -> None:
        self.root = root
        self.issuer = issuer

    @property
    def key_file(self) -> Path:
        return self.root / "oidc-signing.key"

    @property
    def jwks_file(self) -> Path:
        return self.root / "oidc-jwks.json"

    def ensure(self) -> DevOidcIssuer:
        if not (self.key_file.exists() and self.jwks_file.exists()):
            write_key(self.key_file, generate_key("ES256"))
            self.jwks_file.write_text(json.dumps({"keys": [self._key().jwk()]}, indent=2))
        return self

    def mint(self, sub: str, groups: list[str], email: str | None = None, ttl: int = 600) -> str:
        """An ID token for a human approver (audience: the sidecar's approval API)."""
        self.ensure()
        key = self._key()
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": sub,
            "aud": DEV_AUDIENCE,
            "iat": now,
            "exp": now + ttl,
            "groups": groups,
            "email": email or f"{sub}@demo.local",
            "email_verified": True,
        }
        return jwt.encode(claims, key.private, algorithm=key.algorithm, headers={"kid": key.kid})

    def _key(self) -> SigningKey:
        private = serialization.load_pem_private_key(self.key_file.read_bytes(), password=None)
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        return signing_key(private)
