"""A development trust domain under ``.dev/``: a CA for X.509-SVIDs and a JWT signing key.

Stands in for SPIRE on a laptop: ``mint_jwt`` and ``mint_x509`` issue SVIDs the sidecar
and Envoy verify exactly as they would verify SPIRE's.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_NAME = "demo.local"
DEFAULT_AUDIENCE = "authz-sidecar"


@dataclass(frozen=True)
class X509Files:
    cert: Path
    key: Path
    bundle: Path


class DevTrustDomain:
    """Files of one dev trust domain in ``root``; created on first use, reused after."""

    def __init__(self, root: Path, name: str = DEFAULT_NAME) -> None:
        self.root = root
        self.name = name

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def jwt_key(self) -> Path:
        return self.root / "jwt-signing.key"

    @property
    def jwt_bundle(self) -> Path:
        return self.root / "jwt-bundle.json"

    @property
    def xfcc_secret(self) -> Path:
        return self.root / "xfcc-secret"

    def ensure(self) -> DevTrustDomain:
        self.root.mkdir(parents=True, exist_ok=True)
        if not (self.ca_cert.exists() and self.ca_key.exists()):
            self._write_ca()
        if not (self.jwt_key.exists() and self.jwt_bundle.exists()):
            self._write_jwt_key()
        if not self.xfcc_secret.exists():
            _write_private(self.xfcc_secret, secrets.token_urlsafe(32).encode())
        return self

    def mint_jwt(
        self,
        spiffe_id: str,
        audience: str | list[str] = DEFAULT_AUDIENCE,
        ttl: int = 300,
        extra_claims: dict[str, Any] | None = None,
    ) -> str:
        """A JWT-SVID for ``spiffe_id`` signed with this domain's JWT key (ES256)."""
        self.ensure()
        key = serialization.load_pem_private_key(self.jwt_key.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        now = int(time.time())
        claims: dict[str, Any] = {"sub": spiffe_id, "aud": audience, "iat": now, "exp": now + ttl}
        claims.update(extra_claims or {})
        return jwt.encode(claims, key, algorithm="ES256", headers={"kid": self._kid(), "typ": "JWT"})

    def mint_x509(self, spiffe_id: str, out_dir: Path, dns_names: tuple[str, ...] = ()) -> X509Files:
        """An X.509-SVID (cert, key) for ``spiffe_id`` plus the trust bundle, written to ``out_dir``."""
        self.ensure()
        ca_key = serialization.load_pem_private_key(self.ca_key.read_bytes(), password=None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        ca_cert = x509.load_pem_x509_certificate(self.ca_cert.read_bytes())
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(spiffe_id)]
        names += [_host_name(n) for n in dns_names]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SPIFFE")]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, True, False, False, False, False, False, False),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        files = X509Files(out_dir / "svid.pem", out_dir / "svid.key", out_dir / "bundle.pem")
        files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_private(files.key, _pem(key))
        files.bundle.write_bytes(self.ca_cert.read_bytes())
        return files

    def _write_ca(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"dev CA {self.name}")])
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{self.name}")]),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        _write_private(self.ca_key, _pem(key))
        self.ca_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def _write_jwt_key(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        _write_private(self.jwt_key, _pem(key))
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
        jwk.update({"kid": uuid.uuid4().hex[:16], "use": "jwt-svid", "alg": "ES256"})
        self.jwt_bundle.write_text(json.dumps({"keys": [jwk], "spiffe_refresh_hint": 300}, indent=2))

    def _kid(self) -> str:
        kid: str = json.loads(self.jwt_bundle.read_text())["keys"][0]["kid"]
        return kid


def _host_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_bytes(data)
