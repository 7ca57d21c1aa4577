"""Locate the external binaries the dev stack runs (OPA, Envoy)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from sidecar.dev.envoy_config import REPO_ROOT


class ToolMissing(RuntimeError):
    pass


def find_tool(name: str) -> str:
    """``$<NAME>_BIN``, then PATH, then the venv and ``.tools/bin`` of this checkout."""
    candidates = [os.environ.get(f"{name.upper()}_BIN"), shutil.which(name)]
    candidates += [
        str(Path(sys.executable).parent / name),
        str(REPO_ROOT / ".tools" / "bin" / name),
    ]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise ToolMissing(f"{name} not found: run through ./taskw, which installs it, or set {name.upper()}_BIN")
