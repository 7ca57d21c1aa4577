"""E2E fixtures: the real stack (OPA, sidecar, Envoy, demo upstream) on free loopback ports."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest

from devstack.agent_client import AgentClient
from devstack.stack import Ports, Stack

pytestmark = pytest.mark.e2e

READER = "spiffe://demo.local/agent/reader"
WRITER = "spiffe://demo.local/agent/writer"
SIDECAR_OPA_TIMEOUT_MS = 300  # broken_opa_stack's opa.timeout_ms; Envoy's ext_authz timeout is 2 s


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory, opa_bin: str, envoy_bin: str) -> Iterator[Stack]:
    with Stack(tmp_path_factory.mktemp("stack"), Ports.free()) as running:
        yield running


@pytest.fixture(scope="session")
def client(stack: Stack) -> AgentClient:
    return AgentClient(stack)


class FakeOpa(ThreadingHTTPServer):
    """Stands in for a broken OPA: answers decision queries with whatever ``mode`` says."""

    modes: ClassVar[dict[str, tuple[int, bytes]]] = {
        "garbage": (200, b"<html>not json</html>"),
        "wrong-shape": (200, b'{"result": "yes please"}'),
        "undefined": (200, b"{}"),
        "error-status": (500, b'{"code": "internal_error"}'),
        "list": (200, b"[1, 2]"),
        "allow-with-status-200": (200, b'{"result": {"verdict": "deny", "status": 200}}'),
    }
    mode = "garbage"
    # "slow": answer an allow after this long. Between the sidecar's OPA timeout in
    # ``broken_opa_stack`` (SIDECAR_OPA_TIMEOUT_MS) and Envoy's ext_authz timeout (2 s), so the
    # sidecar's timeout is the one that fires, and ignoring it would let the allow through.
    slow_seconds = 1.0
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """In "slow" mode the sidecar hangs up first (its timeout): expected, not worth a traceback."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: FakeOpa

    def do_GET(self) -> None:
        self._send(200, b"{}")

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.server.mode == "slow":
            threading.Event().wait(self.server.slow_seconds)
            self._send(200, b'{"result": true}')
            return
        self._send(*FakeOpa.modes[self.server.mode])

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture(scope="session")
def fake_opa() -> Iterator[FakeOpa]:
    server = FakeOpa(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


@pytest.fixture(scope="session")
def broken_opa_stack(tmp_path_factory: pytest.TempPathFactory, fake_opa: FakeOpa) -> Iterator[Stack]:
    env = {
        "AUTHZ_OPA__URL": f"http://127.0.0.1:{fake_opa.server_address[1]}",
        "AUTHZ_OPA__TIMEOUT_MS": str(SIDECAR_OPA_TIMEOUT_MS),
    }
    with Stack(tmp_path_factory.mktemp("broken-opa"), Ports.free(), sidecar_env=env) as running:
        yield running
