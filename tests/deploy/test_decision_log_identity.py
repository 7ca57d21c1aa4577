"""Every deployed OPA labels its decision-log events with the pod, namespace and deployment (from
the downward API), records time.now_ns for replay, and bounds its upload buffer; a real OPA reads
the rendered config and substitutes the labels."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from devstack.bundles import DECISION_LOG_BUFFER_BYTES, decision_log_identity, opa_config
from sidecar.unix_http import unix_request
from tests.deploy.chart import MODES, REPO, containers, render

POD_ENV = {
    "POD_NAME": "metadata.name",
    "POD_NAMESPACE": "metadata.namespace",
    "POD_APP": "metadata.labels['app.kubernetes.io/name']",
}


def opa_configs(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    maps = [d for d in docs if d["kind"] == "ConfigMap" and "opa.yaml" in d.get("data", {})]
    return [yaml.safe_load(m["data"]["opa.yaml"]) for m in maps]


@pytest.mark.parametrize("mode", MODES)
def test_deployed_opa_labels_its_events_and_bounds_its_buffer(mode: str) -> None:
    docs = render(mode)
    [config] = opa_configs(docs)
    assert config["labels"] == {"pod": "${POD_NAME}", "namespace": "${POD_NAMESPACE}", "deployment": "${POD_APP}"}
    assert config["nd_builtin_cache"] is True
    assert config["decision_logs"]["reporting"]["buffer_size_limit_bytes"] == DECISION_LOG_BUFFER_BYTES
    pods = [d["spec"]["template"]["spec"] for d in docs if d["kind"] == "Deployment"]
    opas = [c for spec in pods for c in containers(spec) if c["name"] == "opa"]
    assert opas
    for opa in opas:
        env = {
            e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"]
            for e in opa.get("env", [])
            if "fieldRef" in e.get("valueFrom", {})
        }
        assert {name: env.get(name) for name in POD_ENV} == POD_ENV


def test_the_local_stack_and_compose_label_theirs_too() -> None:
    local = opa_config(bundle_service_url=None, public_key=None, decision_log_url="http://127.0.0.1:1")
    assert set(local["labels"]) == {"pod", "namespace", "deployment"} and local["nd_builtin_cache"] is True
    assert local["decision_logs"]["reporting"]["buffer_size_limit_bytes"] == DECISION_LOG_BUFFER_BYTES
    assert decision_log_identity()["labels"] == local["labels"]
    compose = yaml.safe_load((REPO / "compose" / "opa.yaml").read_text())
    assert set(compose["labels"]) == {"pod", "namespace", "deployment"} and compose["nd_builtin_cache"] is True


def test_a_real_opa_reads_the_deployed_config(opa_bin: str, tmp_path: Path) -> None:
    [config] = opa_configs(render("egress"))
    config_file = tmp_path / "opa.yaml"
    config_file.write_text(yaml.safe_dump(config))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    public = tmp_path / "bundle-signing.pub"
    public.write_bytes(key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with tempfile.TemporaryDirectory(prefix="opa-") as short:  # a unix socket path must be short
        socket = Path(short) / "opa.sock"
        env = {
            **os.environ,
            "POD_NAME": "research-agent-7d9f-x2",
            "POD_NAMESPACE": "agents",
            "POD_APP": "research-agent",
        }
        argv = [opa_bin, "run", "--server", "--addr", f"unix://{socket}", "--config-file", str(config_file)]
        argv += [f"--set-file=keys.authz-bundle.key={public}", "--log-level", "error"]
        process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 20
            while not socket.exists():
                assert process.poll() is None, process.stderr.read() if process.stderr else ""
                assert time.monotonic() < deadline, "OPA did not start"
                time.sleep(0.05)
            active = unix_request(socket, "GET", "/v1/config", timeout=5).json()["result"]
        finally:
            process.terminate()
            process.wait(timeout=10)
    labels = active["labels"]
    assert (labels["pod"], labels["namespace"], labels["deployment"]) == (
        "research-agent-7d9f-x2",
        "agents",
        "research-agent",
    )
    assert active["decision_logs"]["reporting"]["buffer_size_limit_bytes"] == DECISION_LOG_BUFFER_BYTES
