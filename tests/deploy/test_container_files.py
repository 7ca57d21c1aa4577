"""Dockerfile and docker-compose.yml, checked without a Docker engine: what they mount exists
(or is made by `authz-dev init` and `./taskw bundle`), every container is non-root and
read-only, and the configs they mount pass Envoy's and the sidecar's own validation."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from sidecar.config import load_config

REPO = Path(__file__).resolve().parents[2]
MADE_BY_SETUP = {".dev/jwt-bundle.json", ".dev/bundle-signing.pub", "build/bundle"}


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return loaded


def test_dockerfile_is_multi_stage_slim_and_non_root() -> None:
    text = (REPO / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)", text, flags=re.MULTILINE)
    assert len(stages) >= 2 and all("slim" in image for image in stages), stages
    final = text[text.rindex("\nFROM ") :]
    user = re.findall(r"^USER\s+(\S+)", final, flags=re.MULTILINE)
    assert user and user[-1].split(":")[0].isdigit() and user[-1].split(":")[0] != "0", user
    assert "COPY --from=build" in final and "pip install" not in final, "no build tools in the final image"


def test_compose_services_are_locked_down() -> None:
    services = compose()["services"]
    assert {"envoy", "authz-sidecar", "opa", "bundle-service", "decision-log-receiver", "upstream"} <= set(services)
    for name, service in services.items():
        assert service.get("read_only") is True, name
        assert service.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        assert service.get("user", "0").split(":")[0] not in ("0", "root"), name
        assert "privileged" not in service, name
    published = [(name, port) for name, s in services.items() for port in s.get("ports", [])]
    assert published == [("envoy", "127.0.0.1:10000:10000")], "only Envoy's egress listener, on loopback"


def test_compose_mounts_exist() -> None:
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith("./"):
                continue  # a named volume
            relative = source.removeprefix("./")
            assert (REPO / relative).exists() or relative in MADE_BY_SETUP, (name, source)


def test_compose_configs_validate(envoy_bin: str, tmp_path: Path) -> None:
    envoy = REPO / "compose" / "envoy.yaml"
    result = subprocess.run([envoy_bin, "--mode", "validate", "-c", str(envoy)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    ext_authz = yaml.safe_load(envoy.read_text())["static_resources"]["listeners"][0]["filter_chains"][0]
    http_filter = ext_authz["filters"][0]["typed_config"]["http_filters"][0]["typed_config"]
    assert http_filter["failure_mode_allow"] is False
    config = load_config(REPO / "compose" / "sidecar.yaml")
    assert config.opa.url == "http://opa:8181" and config.identity.sources == ["jwt_svid"]
    opa = yaml.safe_load((REPO / "compose" / "opa.yaml").read_text())
    assert opa["bundles"]["authz"]["signing"]["keyid"] in opa["keys"]
    assert opa["decision_logs"]["service"] in opa["services"]
