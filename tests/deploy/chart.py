"""Rendering charts/authz-sidecar with the real ``helm`` (built by ./taskw into .tools/bin).

Each mode renders as the tests' release with the values in ``charts/authz-sidecar/ci/<mode>-values.yaml``
(the same installs README.md shows); ``render(mode, values)`` lays more values over them.
"""

from __future__ import annotations

import copy
import functools
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack.tools import ToolMissing, find_tool

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "authz-sidecar"
KUBE_VERSION = "1.33.0"
# mode -> (release, namespace) as README.md installs them
RELEASES = {
    "egress": ("research-agent", "agents"),
    "ingress": ("tickets", "tools"),
    "istio": ("authz-sidecar", "authz-system"),
}
MODES = list(RELEASES)

Doc = dict[str, Any]


def helm() -> str:
    try:
        return find_tool("helm")
    except ToolMissing as exc:
        pytest.fail(f"{exc} (./taskw builds helm into .tools/bin)")


def values_file(mode: str) -> Path:
    return CHART / "ci" / f"{mode}-values.yaml"


def helm_args(mode: str, values: dict[str, Any] | None = None) -> list[str]:
    release, namespace = RELEASES[mode]
    argv = [release, str(CHART), "--namespace", namespace, "--kube-version", KUBE_VERSION, "-f", str(values_file(mode))]
    for key, value in (values or {}).items():
        argv += ["--set-json", f"{key}={json.dumps(value)}"]
    return argv


def helm_template(mode: str, values: dict[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm(), "template", *helm_args(mode, values)], capture_output=True, text=True, timeout=120)


@functools.cache
def _render(mode: str, values_json: str) -> list[Doc]:
    result = helm_template(mode, json.loads(values_json) or None)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def render(mode: str, values: dict[str, Any] | None = None) -> list[Doc]:
    """The chart's objects for ``mode`` (a copy: tests may change it)."""
    return copy.deepcopy(_render(mode, json.dumps(values or {}, sort_keys=True)))


def of_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def config_map(docs: list[Doc], key: str) -> Doc | None:
    """The ConfigMap holding the file ``key`` (envoy.yaml, sidecar.yaml, opa.yaml, bundle-signing.pub)."""
    found = [d for d in of_kind(docs, "ConfigMap") if key in d.get("data", {})]
    assert len(found) <= 1, f"several ConfigMaps hold {key}"
    return found[0] if found else None


def containers(pod_spec: Doc) -> list[Doc]:
    """Every container of a pod: native sidecars (initContainers) first, then the others."""
    return [*pod_spec.get("initContainers", []), *pod_spec["containers"]]
