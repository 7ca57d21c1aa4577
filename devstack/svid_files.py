"""Envoy's mTLS certificates from the SPIFFE Workload API, as files Envoy reloads (file-based SDS).

Like spiffe-helper: an ``X509Source`` follows the Workload API stream, and on every update
(first SVID, rotation, new CA in the bundle) this writes the SVID for one SPIFFE ID and its
trust domain's bundle as two SDS resource files. Each file is replaced atomically (temp file +
rename in the same directory); Envoy watches the directory for renames and reloads the secret
without a restart. The listener refers to them with ``sds_config.path_config_source``
(see :func:`use_sds_files`). Plain PEM copies (``svid.pem``, ``svid.key``, ``bundle.pem``) are
written too, for clients such as curl.

In Kubernetes, Envoy asks the SPIRE agent's own SDS API over the CSI-mounted socket instead;
this helper is for the local stack, where Envoy runs without a SPIRE SDS cluster.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from spiffe import SpiffeId, X509Source
from spiffe.svid.x509_svid import X509Svid

log = logging.getLogger(__name__)

CERT_SECRET = "spiffe_svid"
BUNDLE_SECRET = "spiffe_bundle"
SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


def cert_file(directory: Path) -> Path:
    return directory / "svid-sds.yaml"


def bundle_file(directory: Path) -> Path:
    return directory / "bundle-sds.yaml"


def write_svid(directory: Path, svid: X509Svid, authorities: list[Any]) -> None:
    """Write the SDS resources (and PEM copies) for ``svid`` and the trust ``authorities``."""
    chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in svid.cert_chain).decode()
    key = svid.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    bundle = "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in authorities)
    cert_secret = {
        "@type": SECRET_TYPE,
        "name": CERT_SECRET,
        "tls_certificate": {"certificate_chain": {"inline_string": chain}, "private_key": {"inline_string": key}},
    }
    bundle_secret = {
        "@type": SECRET_TYPE,
        "name": BUNDLE_SECRET,
        "validation_context": {"trusted_ca": {"inline_string": bundle}},
    }
    directory.mkdir(parents=True, exist_ok=True)
    _replace(directory / "svid.pem", chain)
    _replace(directory / "svid.key", key, private=True)
    _replace(directory / "bundle.pem", bundle)
    # The bundle first: a new SVID from a new CA must never arrive before the CA is trusted.
    _replace(bundle_file(directory), yaml.safe_dump({"resources": [bundle_secret]}))
    _replace(cert_file(directory), yaml.safe_dump({"resources": [cert_secret]}), private=True)


def _replace(path: Path, text: str, private: bool = False) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600 if private else 0o644)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class SvidFiles:
    """Keeps ``directory`` current with the SVID of ``spiffe_id`` from the Workload API."""

    def __init__(self, socket: str, spiffe_id: str, directory: Path, timeout_s: float = 30.0) -> None:
        self.spiffe_id = SpiffeId(spiffe_id)
        self.directory = directory
        self.updated = threading.Event()
        self._source = X509Source(socket_path=socket, timeout_in_seconds=timeout_s, svid_picker=self._pick)
        self._source.subscribe_for_updates(self._write)
        self._write()

    def _pick(self, svids: list[X509Svid]) -> X509Svid:
        for svid in svids:
            if svid.spiffe_id == self.spiffe_id:
                return svid
        raise LookupError(f"the Workload API offers no SVID for {self.spiffe_id}")

    def _write(self) -> None:
        try:
            svid = self._source.svid
            bundle = self._source.get_bundle_for_trust_domain(self.spiffe_id.trust_domain)
            authorities = list(bundle.x509_authorities) if bundle is not None else []
            if not authorities:
                raise LookupError(f"no X.509 bundle for {self.spiffe_id.trust_domain}")
            write_svid(self.directory, svid, authorities)
        except Exception:  # keep the last good files; Envoy keeps serving them until they expire
            log.exception("could not write the SVID files for %s", self.spiffe_id)
            return
        log.info("wrote SVID files for %s (serial %x)", self.spiffe_id, svid.leaf.serial_number)
        self.updated.set()

    def close(self) -> None:
        self._source.close()


def run_svid_files(socket: str, spiffe_id: str, directory: Path) -> None:
    """Follow the Workload API until SIGTERM/SIGINT."""
    import signal

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    files = SvidFiles(socket, spiffe_id, directory)
    try:
        stop.wait()
    finally:
        files.close()


def use_sds_files(envoy_config: str, listener: str, directory: Path) -> str:
    """Rewrite ``listener``'s TLS context to take its certificate and trust bundle from the SDS
    files in ``directory`` (reloaded on change), keeping its SAN matchers."""
    config = yaml.safe_load(envoy_config)
    # Envoy's SDS subscriptions, file-based ones included, need a node identity.
    config.setdefault("node", {"id": "authz-sidecar-envoy", "cluster": "authz-sidecar"})
    found = [item for item in config["static_resources"]["listeners"] if item["name"] == listener]
    if len(found) != 1:
        raise ValueError(f"no listener named {listener!r} in the Envoy config")
    for chain in found[0]["filter_chains"]:
        tls = chain["transport_socket"]["typed_config"]["common_tls_context"]
        tls.pop("tls_certificates", None)
        validation = tls.pop("validation_context", {})
        validation.pop("trusted_ca", None)
        tls["tls_certificate_sds_secret_configs"] = [_sds_ref(CERT_SECRET, cert_file(directory), directory)]
        tls["combined_validation_context"] = {
            "default_validation_context": validation,
            "validation_context_sds_secret_config": _sds_ref(BUNDLE_SECRET, bundle_file(directory), directory),
        }
    dumped: str = yaml.safe_dump(config, sort_keys=False)
    return dumped


def _sds_ref(name: str, path: Path, directory: Path) -> dict[str, Any]:
    return {
        "name": name,
        "sds_config": {
            "resource_api_version": "V3",
            "path_config_source": {"path": str(path), "watched_directory": {"path": str(directory)}},
        },
    }
