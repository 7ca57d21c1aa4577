"""JWT bundle sources: files on disk (reloaded on change) or the SPIFFE Workload API."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Protocol

from spiffe import JwtBundle, JwtSource, TrustDomain

log = logging.getLogger(__name__)


class BundleSource(Protocol):
    """Where the JWT authorities of a trust domain come from."""

    def bundle_for(self, trust_domain: TrustDomain) -> JwtBundle | None: ...

    def close(self) -> None: ...


class FileBundleSource:
    """JWKS files per trust domain; a file is re-read when its mtime or size changes."""

    def __init__(self, files: dict[str, Path]) -> None:
        self._files = {TrustDomain(name).name: path for name, path in files.items()}
        self._cache: dict[str, tuple[tuple[int, int], JwtBundle]] = {}
        self._lock = threading.Lock()

    def bundle_for(self, trust_domain: TrustDomain) -> JwtBundle | None:
        path = self._files.get(trust_domain.name)
        if path is None:
            return None
        try:
            stat = path.stat()
        except OSError:
            log.warning("JWT bundle file for %s is unreadable: %s", trust_domain, path)
            return None
        stamp = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            cached = self._cache.get(trust_domain.name)
            if cached and cached[0] == stamp:
                return cached[1]
            try:
                bundle = JwtBundle.parse(trust_domain, path.read_bytes())
            except Exception:  # fail closed: a broken file trusts no keys, not the old ones
                log.exception("cannot parse JWT bundle file %s", path)
                return None
            self._cache[trust_domain.name] = (stamp, bundle)
            return bundle

    def close(self) -> None:
        return None


class WorkloadApiBundleSource:
    """JWT bundles streamed from the SPIFFE Workload API (kept current by ``JwtSource``)."""

    def __init__(self, socket: str | None, timeout_s: float = 10.0) -> None:
        # JwtSource blocks until the first update; the caller runs this off the event loop.
        self._source = JwtSource(socket_path=socket, timeout_in_seconds=timeout_s)

    def bundle_for(self, trust_domain: TrustDomain) -> JwtBundle | None:
        bundle: JwtBundle | None = self._source.get_bundle_for_trust_domain(trust_domain)
        return bundle

    def close(self) -> None:
        self._source.close()


def workload_api_socket(configured: str | None) -> str | None:
    """The Workload API socket to use: configured, else ``SPIFFE_ENDPOINT_SOCKET``."""
    return configured or os.environ.get("SPIFFE_ENDPOINT_SOCKET") or None
