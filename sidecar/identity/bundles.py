"""JWT bundle sources: files on disk (reloaded on change) or the SPIFFE Workload API."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from sidecar.spiffe_types import JwtBundle, TrustDomain

if TYPE_CHECKING:
    from spiffe.workloadapi.jwt_source import JwtSource

log = logging.getLogger(__name__)


class BundleSource(Protocol):
    """Where the JWT authorities of a trust domain come from."""

    def bundle_for(self, trust_domain: TrustDomain) -> JwtBundle | None: ...

    def ready(self) -> bool:
        """Whether keys can be looked up at all (for ``/readyz``)."""
        ...

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

    def ready(self) -> bool:
        return True  # files are read per lookup; a missing or broken file rejects that domain's tokens

    def close(self) -> None:
        return None


class WorkloadApiBundleSource:
    """JWT bundles streamed from the SPIFFE Workload API (kept current by ``JwtSource``).

    Never blocks the caller and never dies: a background thread connects, and reconnects
    whenever the stream ends for good (``JwtSource`` closes itself on a non-retryable error).
    Until bundles have arrived, and while no source is connected, ``bundle_for`` returns
    ``None``, so a JWT-SVID is rejected (401) rather than checked against nothing or crashing
    the check. Bundle updates (key rotation) replace the set atomically inside ``JwtSource``.
    """

    def __init__(self, socket: str | None, timeout_s: float = 10.0, retry_s: float = 1.0) -> None:
        # The Workload API client (grpc, protobuf): imported with this source only, at start-up.
        from spiffe.workloadapi.jwt_source import JwtSource

        self._jwt_source = JwtSource
        self._socket = socket
        self._timeout_s = timeout_s
        self._retry_s = retry_s
        self._lock = threading.Lock()
        self._source: JwtSource | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._maintain, name="workload-api-jwt-bundles", daemon=True)
        self._thread.start()

    def bundle_for(self, trust_domain: TrustDomain) -> JwtBundle | None:
        source = self._current()
        if source is None:
            return None
        try:
            bundle: JwtBundle | None = source.get_bundle_for_trust_domain(trust_domain)
        except Exception:  # a closed or failed source trusts nothing until it is replaced
            log.warning("JWT bundle source is not usable; rejecting until it reconnects", exc_info=True)
            return None
        return bundle

    def ready(self) -> bool:
        source = self._current()
        return source is not None and not source.is_closed()

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            source, self._source = self._source, None
        if source is not None:
            source.close()

    def _current(self) -> JwtSource | None:
        with self._lock:
            return self._source

    def _maintain(self) -> None:
        while not self._stop.is_set():
            current = self._current()
            if current is None or current.is_closed():
                self._connect()
            self._stop.wait(self._retry_s)

    def _connect(self) -> None:
        try:
            # Blocks until the first bundle set arrives (or the timeout): only this thread waits.
            source = self._jwt_source(socket_path=self._socket, timeout_in_seconds=self._timeout_s)
        except Exception as exc:
            with self._lock:
                self._source = None
            log.warning("no JWT bundles from the Workload API at %s yet: %s", self._socket, exc)
            return
        with self._lock:
            if self._stop.is_set():
                source.close()
                return
            self._source = source
        log.info("JWT bundles from the Workload API at %s", self._socket)


def workload_api_socket(configured: str | None) -> str | None:
    """The Workload API socket to use: configured, else ``SPIFFE_ENDPOINT_SOCKET``."""
    return configured or os.environ.get("SPIFFE_ENDPOINT_SOCKET") or None
