"""``./taskw fuzz`` itself, with a budget of seconds: both engines find nothing on the current code."""

from __future__ import annotations

import importlib.util

import pytest

from tools.fuzz.__main__ import main


def test_fuzz_runner_with_hypothesis(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--seconds", "2", "--engine", "hypothesis", "decision", "request-target"]) == 0
    out = capsys.readouterr().out
    assert "decision" in out and "request-target" in out and "CRASH" not in out


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris (the fuzz extra) is not installed")
def test_fuzz_runner_with_atheris(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--seconds", "4", "--engine", "atheris", "mcp-body", "xfcc"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith(("mcp-body", "xfcc"))]
    assert len(rows) == 2 and all(int(row[2]) > 100 and row[3] == "ok" for row in rows), rows
