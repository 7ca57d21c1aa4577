"""Unit tests: the local stack's restart policy (devstack/supervisor.py), on an injected clock."""

from __future__ import annotations

import signal

from devstack.supervisor import Backoff, describe_exit


def test_backoff_doubles_from_half_a_second_to_the_cap() -> None:
    backoff = Backoff()
    now = 0.0
    delays = []
    for _ in range(8):
        backoff.started(now)
        now += 1.0  # dies a second after each start: a crash loop
        delay = backoff.died(now)
        delays.append(delay)
        now += delay
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]


def test_backoff_resets_once_the_part_stayed_up() -> None:
    backoff = Backoff(initial=0.5, cap=10.0, reset_after=30.0)
    backoff.started(0.0)
    assert [backoff.died(1.0), backoff.died(2.0), backoff.died(3.0)] == [0.5, 1.0, 2.0]
    backoff.started(10.0)
    assert backoff.died(39.9) == 4.0  # up 29.9 s: still crash looping
    backoff.started(50.0)
    assert backoff.died(80.0) == 0.5  # up 30 s: a fresh start
    assert backoff.died(80.5) == 1.0


def test_a_failed_start_does_not_count_as_time_up() -> None:
    """Up a long time, died, then the restart failed: the failure doubles, not resets again."""
    backoff = Backoff()
    backoff.started(0.0)
    assert backoff.died(100.0) == 0.5
    assert backoff.died(101.0) == 1.0  # no started() in between: the restart never came up
    assert backoff.died(200.0) == 2.0


def test_describe_exit() -> None:
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"
    assert describe_exit(-signal.SIGTERM) == "killed by SIGTERM"
    assert describe_exit(3) == "exit code 3"
    assert describe_exit(0) == "exit code 0"
