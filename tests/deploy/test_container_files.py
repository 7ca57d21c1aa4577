"""Dockerfile and docker-compose.yml, checked without a Docker engine: what they mount exists
(or is made by `authz-dev init` and `./taskw bundle`), every container is non-root and
read-only, and the configs they mount pass Envoy's and the sidecar's own validation."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from devstack.stack import OPA_ENV, OPA_RUN_FLAGS
from sidecar.config import load_config

REPO = Path(__file__).resolve().parents[2]
MADE_BY_SETUP = {".dev/jwt-bundle.json", ".dev/bundle-signing.pub", "build/bundle"}


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return loaded


DOCKERFILE = REPO / "Dockerfile"
LOCKS = REPO / "requirements"


def dockerfile() -> str:
    return DOCKERFILE.read_text()


def instructions(text: str) -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    return [line.strip() for line in joined.splitlines() if line.strip()]


def test_dockerfile_is_multi_stage_slim_and_non_root() -> None:
    text = dockerfile()
    stages = re.findall(r"^FROM\s+(\S+)", text, flags=re.MULTILINE)
    assert len(stages) >= 2 and set(stages) == {"${PYTHON_BASE}"}, stages
    final = text[text.rindex("\nFROM ") :]
    user = re.findall(r"^USER\s+(\S+)", final, flags=re.MULTILINE)
    assert user and user[-1].split(":")[0].isdigit() and user[-1].split(":")[0] != "0", user
    assert "COPY --from=build" in final and "pip install" not in final, "no build tools in the final image"


def test_the_base_is_pinned_by_digest() -> None:
    """PYTHON_BASE names a slim image by digest; its default is the documented all-zero placeholder,
    so nothing is built on a base nobody chose (the header says how to pass the real digest)."""
    (default,) = re.findall(r"^ARG PYTHON_BASE=(\S+)$", dockerfile(), flags=re.MULTILINE)
    image, _, digest = default.partition("@")
    assert "slim" in image and re.fullmatch(r"sha256:[0-9a-f]{64}", digest), default
    assert "--build-arg PYTHON_BASE=python:3.11-slim-bookworm@sha256:" in dockerfile(), "the header shows how"


def test_the_build_is_reproducible() -> None:
    """No step depends on a cache or on what a registry serves today: every package is pinned by
    hash, pip keeps no cache, nothing else is downloaded, and SOURCE_DATE_EPOCH reaches the build."""
    steps = instructions(dockerfile())
    assert any(s.startswith("ARG SOURCE_DATE_EPOCH") for s in steps)
    assert any(s.startswith("ENV ") and "SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH}" in s for s in steps)
    assert any(s.startswith("ENV ") and "PIP_NO_CACHE_DIR=1" in s for s in steps)
    for step in steps:
        assert not re.search(r"\b(apt-get|apk|curl|wget)\b", step), step
        assert not step.startswith("ADD "), step
        assert "--mount=type=cache" not in step, step
        for install in re.findall(r"pip install ([^&]*)", step):
            pinned = "--require-hashes" in install and "-r requirements/" in install
            own = "--no-deps" in install and re.search(r"(\s|^)\.(\s|$)", install)
            assert pinned or own, f"an unpinned install: pip install {install}"
    for lock in ("runtime.lock", "build.lock", "sbom.lock"):
        assert f"requirements/{lock}" in dockerfile(), lock


def locked(lock: str) -> dict[str, str]:
    """name -> version of every requirement in a lock file, each pinned with == and hashed."""
    text = (LOCKS / lock).read_text()
    entries = re.split(r"\n(?=[a-z0-9])", text)
    out = {}
    for entry in entries:
        match = re.match(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([^\s;]+)", entry)
        if not match:
            assert not entry.strip() or entry.lstrip().startswith("#"), entry[:80]
            continue
        assert "--hash=sha256:" in entry, f"{lock}: {match.group(1)} has no hash"
        out[match.group(1).lower().replace("_", "-")] = match.group(3)
    return out


def test_the_locks_pin_every_dependency() -> None:
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    runtime = locked("runtime.lock")
    for requirement in project["project"]["dependencies"]:
        name = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower().replace("_", "-")  # type: ignore[union-attr]
        assert name in runtime, f"{name} is not in requirements/runtime.lock: re-run pip-compile"
    build = locked("build.lock")
    assert {"setuptools", "wheel"} <= set(build)
    assert "cyclonedx-bom" in locked("sbom.lock")
    assert not re.search(r"^--(find-links|index-url|extra-index-url)", (LOCKS / "runtime.lock").read_text(), re.M)


def test_the_image_carries_a_reproducible_sbom() -> None:
    steps = instructions(dockerfile())
    (generate,) = [s for s in steps if "cyclonedx-py environment" in s]
    assert "--output-reproducible" in generate and "/opt/authz-sidecar/bin/python" in generate
    assert "--pyproject pyproject.toml" in generate, "the SBOM names the image's own component"
    assert re.search(r"pip install --require-hashes --no-deps -r requirements/sbom\.lock", generate)
    final = dockerfile()[dockerfile().rindex("\nFROM ") :]
    assert "COPY --from=build /sbom/sbom.cdx.json /usr/share/doc/authz-sidecar/sbom.cdx.json" in final
    assert "cyclonedx" not in final.replace("sbom.cdx.json", ""), "the generator stays in the build stage"


def test_the_image_runs_with_a_read_only_root() -> None:
    """Nothing in the image needs to write outside /tmp (the chart mounts an emptyDir there) and
    the decision-log receiver's directory; Python writes no bytecode."""
    final = dockerfile()[dockerfile().rindex("\nFROM ") :]
    assert "PYTHONDONTWRITEBYTECODE=1" in final
    assert re.findall(r"chown (\S+) (\S+)", final) == [("65532:65532", "/var/log/authz")]


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


def test_compose_runs_opa_as_the_local_stack_does() -> None:
    """The flags and Go runtime settings every OPA that serves decisions runs with (devstack.stack)."""
    opa = compose()["services"]["opa"]
    assert set(OPA_RUN_FLAGS) <= set(opa["command"])
    assert {name: opa["environment"].get(name) for name in OPA_ENV} == OPA_ENV
