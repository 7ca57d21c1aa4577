"""``./taskw up`` behaves like the pod when a part dies: the rest keeps serving, the part comes back."""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Callable

import pytest

from devstack.stack import Ports, Stack
from devstack.supervisor import Backoff, Supervisor
from tests.e2e.test_faults import get_docs

pytestmark = pytest.mark.e2e


def wait_for(lines: list[str], pattern: str, after: int = 0, timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        for line in lines[after:]:
            if re.search(pattern, line):
                return line
        assert time.monotonic() < deadline, f"no line matching {pattern!r} in {lines}"
        time.sleep(0.05)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_killed_opa_gives_503_then_is_restarted_with_backoff(tmp_path_factory: pytest.TempPathFactory) -> None:
    lines: list[str] = []
    with Stack(tmp_path_factory.mktemp("supervised"), Ports.free()) as stack:
        # Longer first delay than the default 0.5 s: time enough to look at the stack without OPA.
        supervisor = Supervisor(stack, lines.append, backoff=lambda: Backoff(initial=1.0))
        stop = threading.Event()
        thread = threading.Thread(target=supervisor.run, args=(stop, 0.1), daemon=True)
        thread.start()
        try:
            assert get_docs(stack).status_code == 200
            opa = stack.processes["opa"]
            opa.send_signal(signal.SIGKILL)
            opa.wait()
            # Envoy and the sidecar keep serving: fail closed with 503, not connection refused.
            response = get_docs(stack)
            assert response.status_code == 503, response.text
            assert response.json()["verdict"] == "error"
            died = wait_for(lines, r"^stack: opa ")
            assert "opa killed by SIGKILL" in died
            assert "restarting it in 1.0 s" in died
            assert str(stack.logs / "opa.log") in died
            wait_for(lines, r"^stack: opa restarted \(pid \d+\)$")
            assert stack.processes["opa"].pid != opa.pid
            wait_until(lambda: get_docs(stack).status_code == 200, "no 200 after OPA was restarted")

            # Dies again soon after: the next delay doubles.
            seen = len(lines)
            stack.processes["opa"].send_signal(signal.SIGKILL)
            assert "restarting it in 2.0 s" in wait_for(lines, r"^stack: opa killed", after=seen)
            wait_for(lines, r"^stack: opa restarted", after=seen)
            wait_until(lambda: get_docs(stack).status_code == 200, "no 200 after the second restart")
        finally:
            stop.set()
            thread.join(timeout=30)
        assert [line for line in lines if not line.startswith("stack: opa ")] == [], "only OPA died"
