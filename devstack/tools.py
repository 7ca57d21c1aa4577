"""Locate the external binaries the dev stack runs (OPA, Envoy, SPIRE), in this checkout too."""

from __future__ import annotations

from devstack.envoy_config import REPO_ROOT
from sidecar.executables import ToolMissing
from sidecar.executables import find_tool as find_installed_tool

__all__ = ["ToolMissing", "find_tool"]


def find_tool(name: str) -> str:
    """As :func:`sidecar.executables.find_tool`, then the checkout's ``.tools/bin`` (where ./taskw builds them)."""
    try:
        return find_installed_tool(name, [REPO_ROOT / ".tools" / "bin"])
    except ToolMissing:
        # The runtime's message knows nothing of ./taskw; here it is the way to get the binary.
        raise ToolMissing(
            f"{name} not found: run through ./taskw, which installs it, or set {name.upper()}_BIN"
        ) from None
