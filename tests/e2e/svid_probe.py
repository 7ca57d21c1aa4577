"""What a process gets from a SPIFFE Workload API socket, as JSON on stdout.

``python tests/e2e/svid_probe.py unix:///path/to/workload.sock``. Run as another uid by
tests/e2e/test_spire.py (a stand-in for the agent, a process in the pod that reaches the socket):
it first connects to the socket with the standard library (so a refusal below is the Workload API
answering, not a file permission), then asks for X.509-SVIDs and a JWT-SVID with the ``spiffe``
package and reports the SPIFFE IDs it got, or the gRPC status code the Workload API answered.
Imports only the standard library, ``spiffe`` and ``grpc``.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from typing import Any

import grpc
from spiffe import WorkloadApiClient

AUDIENCE = "authz-sidecar"


def _status(exc: BaseException) -> dict[str, Any]:
    """The gRPC status behind an error the ``spiffe`` package wrapped, if there is one."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, grpc.Call):
            return {"ok": False, "code": seen.code().name, "detail": seen.details()}
        seen = seen.__cause__ or seen.__context__
    return {"ok": False, "code": None, "detail": f"{type(exc).__name__}: {exc}"}


def probe(endpoint: str) -> dict[str, Any]:
    path = endpoint.removeprefix("unix://")
    report: dict[str, Any] = {"uid": os.getuid(), "gid": os.getgid()}
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        raw.connect(path)
        report["connected"] = True
    except OSError as exc:
        report["connected"] = False
        report["connect_error"] = f"{type(exc).__name__}: {exc}"
        return report
    finally:
        raw.close()

    client = WorkloadApiClient(endpoint)
    try:
        try:
            context = client.fetch_x509_context(timeout=10)
            report["x509"] = {"ok": True, "spiffe_ids": sorted(str(s.spiffe_id) for s in context.x509_svids)}
        except Exception as exc:
            report["x509"] = _status(exc)
        try:
            token = client.fetch_jwt_svid(audience={AUDIENCE}, timeout=10)
            report["jwt"] = {"ok": True, "spiffe_ids": [str(token.spiffe_id)]}
        except Exception as exc:
            report["jwt"] = _status(exc)
    finally:
        client.close()
    return report


if __name__ == "__main__":
    print(json.dumps(probe(sys.argv[1])))
