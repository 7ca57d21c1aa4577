"""A SPIFFE Workload API server for tests, on a unix socket, backed by a dev trust domain.

It speaks the real gRPC protocol (the ``spiffe`` package's own generated stubs), so the
sidecar's ``WorkloadApiBundleSource`` and the ``svid-files`` helper are exercised exactly as
against a SPIRE agent: streamed JWT bundles and X.509 contexts, updates on rotation. It is the
stand-in where real SPIRE cannot be built (the same tests run against real SPIRE when
``spire-server``/``spire-agent`` are in ``.tools/bin``). It attests nobody: every caller gets
every registered identity, which is what the single-user SPIRE setup (unix:uid) gives too.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID as EKU
from cryptography.x509.oid import NameOID
from spiffe._proto import workload_pb2, workload_pb2_grpc


class _Authority:
    """One CA (X.509) or signing key (JWT)."""

    def __init__(self, trust_domain: str) -> None:
        self.kid = uuid.uuid4().hex[:16]
        self.key = ec.generate_private_key(ec.SECP256R1())
        td_id = f"spiffe://{trust_domain}"
        now = dt.datetime.now(dt.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, f"test CA {trust_domain} {self.kid}")])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(td_id)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    def jwk(self) -> dict[str, Any]:
        jwk: dict[str, Any] = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
        jwk.update({"kid": self.kid, "use": "jwt-svid"})
        return jwk


class TestWorkloadApi(workload_pb2_grpc.SpiffeWorkloadAPIServicer):
    """``start()`` / ``stop()``; ``rotate_*`` and ``revoke_jwt_key`` push updates to open streams."""

    __test__ = False  # not a pytest class

    def __init__(self, socket_path: Path, trust_domain: str, spiffe_ids: list[str]) -> None:
        self.socket_path = socket_path
        self.trust_domain = trust_domain
        self.spiffe_ids = spiffe_ids
        self._changed = threading.Condition()
        self._version = 0
        self._ca = _Authority(trust_domain)
        self._old_cas: list[_Authority] = []
        self._jwt_keys = [_Authority(trust_domain)]
        self._svids: dict[str, tuple[bytes, bytes]] = {}
        self._issue_svids()
        self._server: grpc.Server | None = None

    @property
    def socket(self) -> str:
        return f"unix://{self.socket_path}"

    def start(self) -> TestWorkloadApi:
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        workload_pb2_grpc.add_SpiffeWorkloadAPIServicer_to_server(self, self._server)
        self._server.add_insecure_port(f"unix:{self.socket_path}")
        self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=0).wait()
            self._server = None

    # -- rotation --------------------------------------------------------------------------
    def rotate_jwt_key(self) -> tuple[str, str]:
        """A new active signing key; the old one stays in the bundle. ``(old kid, new kid)``."""
        with self._changed:
            old = self._jwt_keys[-1].kid
            self._jwt_keys.append(_Authority(self.trust_domain))
            self._bump()
            return old, self._jwt_keys[-1].kid

    def revoke_jwt_key(self, kid: str) -> None:
        with self._changed:
            self._jwt_keys = [k for k in self._jwt_keys if k.kid != kid]
            self._bump()

    def rotate_x509(self) -> None:
        """A new CA (the old one stays trusted) and new SVIDs signed by it."""
        with self._changed:
            self._old_cas.append(self._ca)
            self._ca = _Authority(self.trust_domain)
            self._issue_svids()
            self._bump()

    def _bump(self) -> None:
        self._version += 1
        self._changed.notify_all()

    # -- the Workload API --------------------------------------------------------------------
    def FetchX509SVID(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        self._require_header(context)
        for _ in self._updates(context):
            bundle = b"".join(ca.cert.public_bytes(serialization.Encoding.DER) for ca in self._trusted_cas())
            yield workload_pb2.X509SVIDResponse(
                svids=[
                    workload_pb2.X509SVID(spiffe_id=sid, x509_svid=cert, x509_svid_key=key, bundle=bundle)
                    for sid, (cert, key) in self._svids.items()
                ]
            )

    def FetchJWTBundles(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        self._require_header(context)
        for _ in self._updates(context):
            jwks = json.dumps({"keys": [k.jwk() for k in self._jwt_keys], "spiffe_refresh_hint": 5}).encode()
            yield workload_pb2.JWTBundlesResponse(bundles={self.trust_domain: jwks})

    def FetchJWTSVID(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._require_header(context)
        wanted = [request.spiffe_id] if request.spiffe_id else self.spiffe_ids
        if any(sid not in self.spiffe_ids for sid in wanted):
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "no identity issued")
        key = self._jwt_keys[-1]
        now = int(time.time())
        svids = []
        for sid in wanted:
            claims = {"sub": sid, "aud": list(request.audience), "iat": now, "exp": now + 300}
            token = jwt.encode(claims, key.key, algorithm="ES256", headers={"kid": key.kid, "typ": "JWT"})
            svids.append(workload_pb2.JWTSVID(spiffe_id=sid, svid=token))
        return workload_pb2.JWTSVIDResponse(svids=svids)

    # -- internals ---------------------------------------------------------------------------
    @staticmethod
    def _require_header(context: grpc.ServicerContext) -> None:
        # The Workload API spec: requests without this header are refused (SSRF protection).
        if ("workload.spiffe.io", "true") not in tuple(context.invocation_metadata()):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "security header missing from request")

    def _updates(self, context: grpc.ServicerContext) -> Iterator[int]:
        seen = -1
        while context.is_active():
            with self._changed:
                if self._version == seen:
                    self._changed.wait(timeout=0.5)
                    continue
                seen = self._version
            yield seen

    def _trusted_cas(self) -> list[_Authority]:
        return [self._ca, *self._old_cas]

    def _issue_svids(self) -> None:
        now = dt.datetime.now(dt.UTC)
        for sid in self.spiffe_ids:
            key = ec.generate_private_key(ec.SECP256R1())
            cert = (
                x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "SPIFFE")]))
                .issuer_name(self._ca.cert.subject)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(hours=1))
                .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(sid)]), critical=True)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False), True)
                .add_extension(x509.ExtendedKeyUsage([EKU.SERVER_AUTH, EKU.CLIENT_AUTH]), critical=False)
                .sign(self._ca.key, hashes.SHA256())
            )
            self._svids[sid] = (
                cert.public_bytes(serialization.Encoding.DER),
                key.private_bytes(
                    serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                ),
            )
