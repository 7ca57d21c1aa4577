"""A real OPA serving a bundle on a free loopback port, for tests that need the evaluator itself."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from devstack.ports import free_ports


@contextmanager
def serve_bundle(opa_bin: str, bundle: Path, log_dir: Path, *flags: str) -> Iterator[str]:
    """``opa run --server`` on ``bundle`` (tests left out), ready with its bundle; yields its URL."""
    [port] = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    log = (log_dir / "opa.log").open("wb")
    argv = [opa_bin, "run", "--server", "--addr", f"127.0.0.1:{port}", *flags]
    process = subprocess.Popen(
        [*argv, "--bundle", str(bundle), "--ignore", "*_test.rego"], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"{url}/health?bundles", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"OPA with {bundle} did not start (see {log.name})")
            time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()
