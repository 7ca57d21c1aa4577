"""The ``spiffe`` package's types the sidecar uses, imported without the package's ``__init__``.

``spiffe/__init__.py`` re-exports everything it has, so ``from spiffe import SpiffeId`` also
imports the Workload API client and with it grpc, protobuf, pyasn1, pem and pyOpenSSL: about 6 MB
of RSS in every sidecar, and 11 MB more (grpc's core) in one that serves neither gRPC nor the MCP
response path. The classes are the same; only where they are imported from differs:
``SpiffeId`` and ``TrustDomain`` from ``spiffe.spiffe_id``, ``JwtSvid`` and ``JwtBundle`` from
their own modules (they need PyJWT and cryptography, which the sidecar loads anyway). The
Workload API's ``JwtSource`` is imported by the one bundle source that uses it, when it is
configured (sidecar/identity/bundles.py).

The package module is created without running its ``__init__``; the first time anything asks it
for a name it does not have yet (``from spiffe import X509Source``, ``spiffe.JwtSource``), the
``__init__`` runs after all and the name is there, so other code that imports ``spiffe`` whole
(devstack, the tests) behaves as before. Import this module before anything imports ``spiffe``
for the saving to apply; if ``spiffe`` is already imported, nothing changes.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
from types import ModuleType

_PACKAGE = "spiffe"
_lock = threading.Lock()


def _defer_package_init(name: str) -> None:
    if name in sys.modules:
        return  # already imported whole: nothing to save
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        raise ImportError(f"{name} is not an importable package")
    loader = spec.loader
    package: ModuleType = importlib.util.module_from_spec(spec)

    def complete(attribute: str) -> object:
        """Module ``__getattr__`` (PEP 562): run the deferred ``__init__`` once, then look again."""
        if attribute.startswith("__"):  # probes such as __wrapped__: no reason to load anything
            raise AttributeError(f"module {name!r} has no attribute {attribute!r}")
        with _lock:
            if package.__dict__.pop("__getattr__", None) is not None:
                loader.exec_module(package)
        return getattr(package, attribute)

    package.__dict__["__getattr__"] = complete
    sys.modules[name] = package


_defer_package_init(_PACKAGE)

from spiffe.bundle.jwt_bundle.jwt_bundle import JwtBundle  # noqa: E402 - after the deferral above
from spiffe.spiffe_id.spiffe_id import SpiffeId, TrustDomain  # noqa: E402
from spiffe.svid.jwt_svid import JwtSvid  # noqa: E402

__all__ = ["JwtBundle", "JwtSvid", "SpiffeId", "TrustDomain"]
