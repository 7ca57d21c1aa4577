"""CPU time of a setup's processes from /proc, to turn into CPU per decision per process.

Latency on a shared 2-core machine moves with whatever else runs; the CPU a process spends per
request does much less, so the bench reports both. Linux only: without /proc the figures are absent.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

PROC = Path("/proc")
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class HasPid(Protocol):
    pid: int


def _own_seconds(pid: int) -> float | None:
    """utime + stime of one process (all its threads), in seconds; None once it is gone."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its closing one.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # fields 14 and 15 of proc(5)


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = list((PROC / str(pid) / "task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def tree_seconds(pid: int) -> float | None:
    """CPU seconds of a process and of its live descendants (a wrapper's real worker counts too)."""
    own = _own_seconds(pid)
    if own is None:
        return None
    return own + sum(t for child in _children(pid) if (t := tree_seconds(child)) is not None)


def snapshot(processes: Mapping[str, HasPid]) -> dict[str, float]:
    """CPU seconds so far of every named process tree that is still running."""
    out: dict[str, float] = {}
    for name, process in processes.items():
        seconds = tree_seconds(process.pid)
        if seconds is not None:
            out[name] = seconds
    return out


def per_request_ms(before: Mapping[str, float], after: Mapping[str, float], requests: int) -> dict[str, float]:
    """Milliseconds of CPU each process spent per request between two snapshots."""
    if requests <= 0:
        return {}
    return {name: (after[name] - before[name]) * 1000 / requests for name in before if name in after}
