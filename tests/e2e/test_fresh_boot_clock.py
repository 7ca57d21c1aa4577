"""The fault harness on a machine that booted moments ago: ``time.monotonic()`` near zero.

`time.monotonic()` counts from boot, so code that compares it against a zero start behaves
differently in a machine's first hour (the traffic generator once sent empty tokens for 50
minutes). A time namespace (``unshare --time``, root) moves the monotonic clock of everything
started inside it, OPA, Envoy, the sidecar and the load, back to a few seconds after "boot".
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def _fresh_boot(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` with a monotonic clock that reads about one second."""
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    offset = -(int(uptime) - 1)
    command = ["unshare", "--time", f"--monotonic={offset}", "--fork", *argv]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=False, **kw)  # type: ignore[call-overload, no-any-return]


@pytest.fixture(scope="module")
def time_namespace() -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("capability: time namespaces need root and unshare (util-linux)")
    probe = _fresh_boot([sys.executable, "-c", "import time; print(time.monotonic())"])
    if probe.returncode != 0:
        pytest.skip(f"capability: this kernel refuses time namespaces ({probe.stderr.strip()})")
    assert float(probe.stdout) < 30, "the namespace's monotonic clock must start near zero"


def test_faults_harness_runs_on_a_freshly_booted_clock(
    time_namespace: None, tmp_path: Path, opa_bin: str, envoy_bin: str
) -> None:
    out = tmp_path / "faults.json"
    argv = [sys.executable, "-m", "bench.faults", "--only", "opa-sigkill", "--fault-seconds", "1.5"]
    argv += ["--settle-seconds", "0.5", "--rate", "30", "--out", str(out)]
    done = _fresh_boot(argv, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    (phase,) = report["phases"]
    assert phase["counts"]["allowed"] > 0 and phase["counts"]["denied"] > 0, phase
    assert phase["during"]["unavailable_503"] > 0 and phase["counts"]["wrongly_allowed"] == 0, phase
