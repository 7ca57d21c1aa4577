"""Render envoy/envoy.yaml (or envoy/envoy-grpc.yaml) for given ports and dev trust-domain files."""

from __future__ import annotations

from pathlib import Path
from string import Template

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = REPO_ROOT / "envoy" / "envoy.yaml"
GRPC_TEMPLATE = REPO_ROOT / "envoy" / "envoy-grpc.yaml"  # ext_authz gRPC mode


def render_envoy_config(values: dict[str, object], template: Path = TEMPLATE) -> str:
    """Fill every ``${NAME}``; a missing value is an error, never an empty string."""
    return Template(template.read_text(encoding="utf-8")).substitute({k: str(v) for k, v in values.items()})
