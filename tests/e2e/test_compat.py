"""The quick compat corpus against the real opa-envoy-plugin: no unexplained difference."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tools import compat

pytestmark = pytest.mark.skipif(shutil.which("opa-envoy-plugin") is None, reason="opa-envoy-plugin not built")


def test_the_quick_corpus_matches_the_plugin(tmp_path: Path) -> None:
    assert compat.main(["--quick", "--out", str(tmp_path / "compat.json")]) == 0
