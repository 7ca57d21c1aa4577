"""The sidecar's signing keys (task tokens, upstream credentials) and their JWKS.

Keys live as PEM files in ``credentials.keys_dir``; the newest file (by mtime) signs, every
file present is published and accepted, so rotation is: add a new key, wait out the overlap
window (longest token lifetime), remove the old one. Files with the same mtime are ordered by
name and the last one signs: a Kubernetes Secret volume writes all its files at once on every
change, so there the name decides (``key-2026-12.pem`` after ``key-2026-06.pem``), the same on
every replica. The directory is re-read when it changes. Without a directory a key is generated
at start (development only).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from sidecar.errors import Kind, SidecarError

log = logging.getLogger(__name__)

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


class SigningKeyError(SidecarError):
    """No usable signing key."""

    KIND = Kind.UNAVAILABLE
    CODE = "signing_key"


@dataclass(frozen=True)
class SigningKey:
    kid: str
    algorithm: str
    private: PrivateKey

    @property
    def public(self) -> PublicKey:
        return self.private.public_key()

    def jwk(self) -> dict[str, Any]:
        if isinstance(self.private, ec.EllipticCurvePrivateKey):
            jwk: dict[str, Any] = json.loads(ECAlgorithm.to_jwk(self.private.public_key()))
        else:
            jwk = json.loads(RSAAlgorithm.to_jwk(self.private.public_key()))
        jwk.update({"kid": self.kid, "alg": self.algorithm, "use": "sig"})
        return jwk


def generate_key(algorithm: str) -> PrivateKey:
    if algorithm == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP384R1() if algorithm == "ES384" else ec.SECP256R1())


def write_key(path: Path, key: PrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.write_bytes(pem)


def signing_key(private: PrivateKey) -> SigningKey:
    """Wrap a private key; ``kid`` is the RFC 7638 thumbprint of its public JWK."""
    if isinstance(private, rsa.RSAPrivateKey):
        algorithm = "RS256"
        public_jwk = json.loads(RSAAlgorithm.to_jwk(private.public_key()))
    elif isinstance(private.curve, ec.SECP256R1):
        algorithm = "ES256"
        public_jwk = json.loads(ECAlgorithm.to_jwk(private.public_key()))
    elif isinstance(private.curve, ec.SECP384R1):
        algorithm = "ES384"
        public_jwk = json.loads(ECAlgorithm.to_jwk(private.public_key()))
    else:
        raise SigningKeyError(f"unsupported curve {private.curve.name}")
    return SigningKey(_thumbprint(public_jwk), algorithm, private)


class KeySet:
    """The active signing key plus every key still accepted and published."""

    def __init__(self, keys_dir: Path | None, algorithm: str, reload_seconds: float) -> None:
        self._dir = keys_dir
        self._reload = reload_seconds
        self._lock = threading.Lock()
        self._checked: float | None = None  # monotonic() of the last look; its origin is arbitrary
        self._stamp: tuple[tuple[str, int], ...] = ()
        if keys_dir is None:
            log.warning("credentials.keys_dir is not set: using a key generated at start (development only)")
            self._keys = [signing_key(generate_key(algorithm))]
        else:
            self._keys = []
            self._load()

    def active(self) -> SigningKey:
        self._maybe_reload()
        return self._keys[0]

    def by_kid(self, kid: str) -> SigningKey | None:
        self._maybe_reload()
        return next((k for k in self._keys if k.kid == kid), None)

    def jwks(self) -> dict[str, Any]:
        self._maybe_reload()
        return {"keys": [k.jwk() for k in self._keys]}

    def _maybe_reload(self) -> None:
        if self._dir is None or (self._checked is not None and time.monotonic() - self._checked < self._reload):
            return
        with self._lock:
            self._load()

    def _load(self) -> None:
        if self._dir is None:
            raise SigningKeyError("no keys directory to load signing keys from")
        self._checked = time.monotonic()
        files = sorted(self._dir.glob("*.pem"), key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True)
        stamp = tuple((str(p), p.stat().st_mtime_ns) for p in files)
        if stamp == self._stamp:
            return
        keys = []
        for path in files:
            try:
                private = serialization.load_pem_private_key(path.read_bytes(), password=None)
                if not isinstance(private, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
                    raise SigningKeyError("not an EC or RSA key")
                keys.append(signing_key(private))
            except Exception as exc:  # one bad file must not hide the others
                log.error("ignoring signing key %s: %s", path, exc)
        if not keys:
            if self._keys:
                log.error("no usable key in %s: keeping the previous keys", self._dir)
                return
            raise SigningKeyError(f"no usable signing key (*.pem) in {self._dir}")
        self._keys, self._stamp = keys, stamp


def _thumbprint(jwk: dict[str, Any]) -> str:
    members = ("crv", "kty", "x", "y") if jwk["kty"] == "EC" else ("e", "kty", "n")
    canonical = json.dumps({m: jwk[m] for m in members}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()
