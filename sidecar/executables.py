"""Locate the external executables the policy tools run (``opa``)."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path

from sidecar.errors import SidecarError


class ToolMissing(SidecarError, RuntimeError):
    """A program the command needs (``opa``) is not installed where it looks."""

    CODE = "tool_missing"


def find_tool(name: str, extra_dirs: Iterable[Path] = ()) -> str:
    """``$<NAME>_BIN``, then PATH, then this Python's own bin directory, then ``extra_dirs``."""
    candidates = [os.environ.get(f"{name.upper()}_BIN"), shutil.which(name), str(Path(sys.executable).parent / name)]
    candidates += [str(directory / name) for directory in extra_dirs]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise ToolMissing(f"{name} not found: put it on PATH or set {name.upper()}_BIN")
