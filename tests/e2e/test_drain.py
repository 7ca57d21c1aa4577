"""SIGTERM drains a real sidecar process: /readyz fails at once, a check already in flight is
answered, then the process exits 0 (what a native sidecar, or the Istio-mode service, does when
its pod stops)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from devstack.stack import Ports
from tests.e2e.conftest import FakeOpa, _Handler

pytestmark = pytest.mark.e2e

SLOW_OPA_SECONDS = 2.0


@pytest.fixture
def slow_opa() -> Iterator[FakeOpa]:
    server = FakeOpa(("127.0.0.1", 0), _Handler)
    server.mode, server.slow_seconds = "slow", SLOW_OPA_SECONDS
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


def start_sidecar(tmp_path: Path, opa: FakeOpa, drain_delay: float) -> tuple[subprocess.Popen[bytes], str, str]:
    ports = Ports.free()
    config = {
        "listen": {"host": "127.0.0.1", "port": ports.sidecar},
        "admin": {"host": "127.0.0.1", "port": ports.sidecar_admin},
        "opa": {"url": f"http://127.0.0.1:{opa.server_address[1]}", "timeout_ms": 10_000},
        # Every caller on loopback is this pod: no credential needed for the check.
        "identity": {"sources": ["pod"], "pod": {"spiffe_id": "spiffe://demo.local/ns/agents/sa/drain"}},
        "shutdown": {"drain_delay_seconds": drain_delay, "drain_timeout_seconds": 10},
    }
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(config))
    argv = [sys.executable, "-m", "sidecar", "serve", "--config", str(path)]
    with (tmp_path / "sidecar.log").open("wb") as log:  # the child keeps its own descriptor
        process = subprocess.Popen(argv, stdout=log, stderr=log)
    check_url = f"http://127.0.0.1:{ports.sidecar}/authz/api/docs"
    admin_url = f"http://127.0.0.1:{ports.sidecar_admin}"
    deadline = time.monotonic() + 20
    while True:
        assert process.poll() is None, (tmp_path / "sidecar.log").read_text()
        try:
            if requests.get(admin_url + "/readyz", timeout=1).status_code == 200:
                return process, check_url, admin_url
        except requests.ConnectionError:
            pass
        assert time.monotonic() < deadline, "the sidecar did not become ready"
        time.sleep(0.1)


def test_sigterm_fails_readiness_drains_the_check_in_flight_and_exits_0(tmp_path: Path, slow_opa: FakeOpa) -> None:
    process, check_url, admin_url = start_sidecar(tmp_path, slow_opa, drain_delay=0.5)
    try:
        answers: list[int] = []
        check = threading.Thread(target=lambda: answers.append(requests.get(check_url, timeout=15).status_code))
        started = time.monotonic()
        check.start()
        time.sleep(0.5)  # the check is waiting on the slow OPA now
        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        while (readiness := requests.get(admin_url + "/readyz", timeout=2)).status_code == 200:
            assert time.monotonic() - signalled < 0.5, "readiness still passes after SIGTERM"
            time.sleep(0.02)
        assert readiness.status_code == 503 and readiness.json()["draining"] is True
        check.join(timeout=15)
        assert answers == [200], "the check in flight was answered, not cut off"
        assert time.monotonic() - started >= SLOW_OPA_SECONDS
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log = (tmp_path / "sidecar.log").read_text()
    assert "authz-sidecar draining" in log and "authz-sidecar stopped" in log


def test_after_the_drain_delay_new_checks_are_refused(tmp_path: Path, slow_opa: FakeOpa) -> None:
    """Once the listeners have closed nothing new is accepted (Envoy answers 503: fail closed)."""
    process, check_url, _ = start_sidecar(tmp_path, slow_opa, drain_delay=0.2)
    try:
        in_flight = threading.Thread(target=lambda: requests.get(check_url, timeout=15))
        in_flight.start()  # keeps the process draining for a while
        time.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        time.sleep(0.8)
        with pytest.raises(requests.ConnectionError):
            requests.get(check_url, timeout=2)
        in_flight.join(timeout=15)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
