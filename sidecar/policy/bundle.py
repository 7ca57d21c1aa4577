"""Policy bundles as signed artefacts: a signing key and ``opa build --signing-key``.

``authz-sidecar policy bundle`` (``./taskw bundle`` for rego/) builds a policy directory into a
signed, revisioned ``.tar.gz``; OPA verifies it with the public key (``keys`` and
``bundles.*.signing.keyid`` in its config) and pulls it from a bundle server
(``authz-bundle-server``, or any static file server).
"""

from __future__ import annotations

import datetime as dt
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sidecar.errors import Kind, SidecarError
from sidecar.executables import find_tool

SIGNING_ALG = "RS256"


class BundleBuildError(SidecarError, RuntimeError):
    """``opa build`` refused the policy directory."""

    KIND = Kind.INVALID
    CODE = "bundle_build"


@dataclass(frozen=True)
class SigningKey:
    """An RSA key pair for bundle signatures: OPA gets only ``public``."""

    private: Path
    public: Path

    @classmethod
    def ensure(cls, directory: Path) -> SigningKey:
        key = cls(directory / "bundle-signing.key", directory / "bundle-signing.pub")
        if not (key.private.exists() and key.public.exists()):
            directory.mkdir(parents=True, exist_ok=True)
            private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            key.private.touch(mode=0o600, exist_ok=True)
            key.private.write_bytes(
                private.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
            )
            key.public.write_bytes(
                private.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            )
        return key


def default_revision(source: Path) -> str:
    """``<git short sha>[-dirty]-<UTC time>`` of the checkout holding ``source``, or only the time
    outside one; dirty when ``source`` has uncommitted changes."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=source, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=source, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        return stamp
    return f"{sha}{'-dirty' if dirty.stdout.strip() else ''}-{stamp}"


def build_bundle(source: Path, out: Path, revision: str, key: SigningKey, opa: str | None = None) -> Path:
    """``opa build`` of ``source`` (tests excluded) into a signed bundle at ``out``; ``opa``: the
    binary (default: found on PATH or ``$OPA_BIN``)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    # Run inside the source so the files in the bundle (and their signatures) have relative names.
    result = subprocess.run(
        [
            opa or find_tool("opa"),
            "build",
            "--bundle",
            ".",
            "--ignore",
            "*_test.rego",
            "--revision",
            revision,
            "--signing-key",
            str(key.private.resolve()),
            "--signing-alg",
            SIGNING_ALG,
            "--output",
            str(out.resolve()),
        ],
        cwd=source,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise BundleBuildError(f"opa build failed for {source}:\n{result.stdout}{result.stderr}")
    return out
