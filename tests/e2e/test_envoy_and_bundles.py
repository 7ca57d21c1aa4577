"""Envoy config validation, user bundles at their own decision path, and the demo itself."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import requests

from devstack.demo import SCRIPT, run_demo
from devstack.envoy_config import render_envoy_config
from devstack.stack import Ports, Stack
from tests.e2e.conftest import READER

pytestmark = pytest.mark.e2e
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def test_envoy_config_validates(envoy_bin: str, tmp_path: Path) -> None:
    stack = Stack(tmp_path, Ports.free())
    stack.trust_domain.ensure()
    config = stack._write_envoy_config()
    result = subprocess.run([envoy_bin, "--mode", "validate", "-c", str(config)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    rendered = config.read_text()
    assert "failure_mode_allow: false" in rendered
    assert "forward_client_cert_details: SANITIZE_SET" in rendered
    assert "forward_client_cert_details: SANITIZE\n" in rendered


def test_envoy_template_needs_every_value() -> None:
    with pytest.raises(KeyError):
        render_envoy_config({"EGRESS_PORT": 1})


@pytest.mark.parametrize("decision_path", ["envoy/authz/allow", "envoy/authz/result"])
def test_opa_envoy_plugin_policy_runs_unchanged(tmp_path: Path, decision_path: str) -> None:
    bundle = FIXTURES / "plugin-bundle"
    with Stack(tmp_path, Ports.free(), bundle=bundle, decision_path=decision_path) as stack:
        token = stack.trust_domain.mint_jwt(READER)
        headers = {"authorization": f"Bearer {token}"}
        assert requests.get(stack.egress_url + "/api/docs/a", headers=headers).status_code == 200
        denied = requests.post(stack.egress_url + "/api/tickets", headers=headers)
        assert denied.status_code == (418 if decision_path.endswith("result") else 403)


def test_undefined_decision_path_fails_closed(tmp_path: Path) -> None:
    with Stack(tmp_path, Ports.free(), decision_path="no/such/rule") as stack:
        token = stack.trust_domain.mint_jwt(READER)
        response = requests.get(stack.egress_url + "/api/docs/a", headers={"authorization": f"Bearer {token}"})
        assert response.status_code == 503


def test_demo_script_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_demo(tmp_path, Ports.free()) == 0
    out = capsys.readouterr().out
    assert f"{len(SCRIPT)}/{len(SCRIPT)} verdicts as expected" in out
