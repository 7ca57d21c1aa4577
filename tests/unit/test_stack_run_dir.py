"""The local stack's socket directory: short enough for unix socket paths however deep its workdir
(pytest's numbered temporary directories grow with every run), and only ever this user's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from devstack.stack import Ports, Stack, StackError


def _deep(tmp_path: Path) -> Path:
    return tmp_path / ("d" * 60) / ("e" * 40)


def test_a_shallow_workdir_keeps_its_sockets_inside(tmp_path: Path) -> None:
    stack = Stack(tmp_path / "s", Ports())
    assert stack.run_dir == tmp_path / "s" / "run"


def test_a_deep_workdir_gets_a_short_owner_only_run_dir_again_and_again(tmp_path: Path) -> None:
    stack = Stack(_deep(tmp_path), Ports())
    try:
        stack.make_run_dir()
        sockets = (stack.check_socket, stack.grpc_socket, stack.opa_socket, stack.envoy_admin_socket)
        assert max(len(str(path)) for path in sockets) <= 100
        assert not stack.run_dir.is_relative_to(stack.workdir)
        assert stack.run_dir.stat().st_mode & 0o777 == 0o700 and stack.run_dir.stat().st_uid == os.getuid()
        assert Stack(_deep(tmp_path), Ports()).run_dir == stack.run_dir, "the same stack finds it again"
        assert Stack(tmp_path / ("f" * 100), Ports()).run_dir != stack.run_dir
    finally:
        stack.stop()
    assert not stack.run_dir.exists(), "stop() removes the short directory"


def test_a_planted_run_dir_is_refused(tmp_path: Path) -> None:
    """The short name is predictable: a symlink put there by someone else is never used."""
    stack = Stack(_deep(tmp_path), Ports())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    stack.run_dir.symlink_to(elsewhere)
    try:
        with pytest.raises(StackError, match="not a directory of this user's"):
            stack.make_run_dir()
    finally:
        stack.run_dir.unlink()
