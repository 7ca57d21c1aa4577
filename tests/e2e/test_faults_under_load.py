"""The short version of ``./taskw faults``: under steady load, OPA killed, OPA answering the wrong
shape and Redis stopped give 503s, never a wrong allow, and verdicts recover once the fault ends."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.faults import Faults, table

pytestmark = pytest.mark.e2e


def test_faults_under_load_never_allow_wrongly(tmp_path: Path, opa_bin: str, envoy_bin: str) -> None:
    faults = Faults(tmp_path, fault_s=1.5, settle_s=0.5, rate=30.0)
    with faults.running():
        phases = faults.run_all({"opa-sigkill", "opa-wrong-shape", "redis-stopped"})
    print(table(phases))
    assert [p.name for p in phases] == ["opa-sigkill", "opa-wrong-shape", "redis-stopped"]
    for phase in phases:
        assert phase.counts["wrongly_allowed"] == 0, phase
        assert phase.during["allowed"] == 0, f"{phase.name}: allowed while no decision could be made"
        assert phase.during["unavailable_503"] > 0, f"{phase.name}: the client saw no 503"
        assert phase.recover_s is not None and phase.recover_s < 15, f"{phase.name} did not recover"
        assert phase.counts["allowed"] > 0 and phase.counts["denied"] > 0, "normal verdicts before and after"
