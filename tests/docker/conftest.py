"""Compose-stack fixtures (pytest-docker). Without a Docker engine every test here is skipped
with the reason; the same behaviours are covered by the local-process e2e tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from devstack.trust_domain import DevTrustDomain
from sidecar.policy.bundle import SigningKey, build_bundle

REPO = Path(__file__).resolve().parents[2]


def docker_unavailable() -> str | None:
    """Why the compose tests cannot run here, or None when they can."""
    docker = shutil.which("docker")
    if docker is None:
        return "the docker CLI is not installed"
    try:
        info = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True,
                              timeout=30)  # fmt: skip
    except subprocess.TimeoutExpired:
        return "no Docker engine answered `docker info` within 30 s"
    if info.returncode != 0:
        detail = (info.stderr.strip().splitlines() or ["no output"])[-1]
        return f"no Docker engine is reachable (`docker info`: {detail})"
    compose = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, timeout=30)
    if compose.returncode != 0:
        return "the Docker Compose v2 plugin (`docker compose`) is not installed"
    return None


UNAVAILABLE = docker_unavailable()


@pytest.fixture(scope="session")
def docker_compose_file() -> str:
    return str(REPO / "docker-compose.yml")


@pytest.fixture(scope="session")
def docker_compose_project_name() -> str:
    return "authz-sidecar-tests"


@pytest.fixture(scope="session")
def compose_inputs() -> DevTrustDomain:
    """What docker-compose.yml mounts: the dev trust domain and the signed bundle (`./taskw bundle`)."""
    dev = DevTrustDomain(REPO / ".dev").ensure()
    key = SigningKey.ensure(REPO / ".dev")
    build_bundle(REPO / "rego", REPO / "build" / "bundle" / "authz.tar.gz", "compose-tests", key)
    return dev
