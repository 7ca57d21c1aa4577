"""Keep the local stack running like the kubelet keeps a pod: a part that dies is started again.

``./taskw up`` runs :class:`Supervisor` until Ctrl-C. When a part (OPA, the sidecar, Envoy, the
demo upstream, the bundle service, ...) exits, the others keep serving (with OPA gone the sidecar
answers 503 through Envoy, as in the pod), and the dead part is started again with the stack's
own start function (so with the same config) after an exponential backoff. One line is printed
per death and per restart.

A part stopped on purpose (``Stack.stop_opa`` and the like) is no longer in ``Stack.processes``
and is left alone.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from devstack.stack import Stack, StackError

Clock = Callable[[], float]


@dataclass
class Backoff:
    """Restart delays of one part: ``initial`` doubling on each death up to ``cap``, and back to
    ``initial`` once the part has stayed up ``reset_after`` seconds (the kubelet's CrashLoopBackOff,
    scaled down for a laptop). Pure: the caller passes the time."""

    initial: float = 0.5
    cap: float = 10.0
    reset_after: float = 30.0
    _next: float = field(init=False)
    _up_since: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self._next = self.initial

    def started(self, now: float) -> None:
        self._up_since = now

    def died(self, now: float) -> float:
        """The part died (or did not start) at ``now``: seconds to wait before starting it again."""
        if self._up_since is not None and now - self._up_since >= self.reset_after:
            self._next = self.initial
        self._up_since = None
        delay = self._next
        self._next = min(self._next * 2, self.cap)
        return delay


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


def starters(stack: Stack) -> dict[str, Callable[[], None]]:
    """How each part of the stack is started again: the functions the stack started it with."""
    return {
        "opa": stack.start_opa,
        "sidecar": stack.start_sidecar,
        "envoy": stack.start_envoy,
        "upstream": stack.start_upstream,
        # The published bundle is still on disk: serve it as it is (it may be one published since).
        "bundle-service": lambda: stack.start_bundle_service(publish=False),
        "decision-log-receiver": stack.start_decision_log_receiver,
        "svid-files": stack.start_svid_files,
        "opa-shadow": stack.start_shadow_opa,
    }


def _say(line: str) -> None:
    print(line, flush=True)


class Supervisor:
    """Watches ``stack.processes``; call :meth:`poll` repeatedly, or :meth:`run`."""

    def __init__(
        self,
        stack: Stack,
        say: Callable[[str], None] = _say,
        *,
        clock: Clock = time.monotonic,
        backoff: Callable[[], Backoff] = Backoff,
    ) -> None:
        self.stack = stack
        self.say = say
        self.clock = clock
        self.new_backoff = backoff
        self.starters = starters(stack)
        self.backoffs: dict[str, Backoff] = {}
        self.up_since: dict[str, float] = {}
        self.due: dict[str, float] = {}  # part -> when to start it again
        self.abandoned: set[str] = set()  # died, and there is no way to start it again
        self._watch()

    def run(self, stop: threading.Event | None = None, interval: float = 0.2) -> None:
        """Until ``stop`` is set (or forever: Ctrl-C ends it)."""
        stop = stop or threading.Event()
        while not stop.is_set():
            self.poll()
            stop.wait(interval)

    def poll(self) -> None:
        self._watch()
        for name, process in list(self.stack.processes.items()):
            if name in self.due or name in self.abandoned or process.poll() is None:
                continue
            now = self.clock()
            ran = f" after {now - self.up_since.pop(name, now):.1f} s"
            exited = f"{name} {describe_exit(process.returncode)}{ran}"
            if name not in self.starters:
                self.abandoned.add(name)
                self.say(f"stack: {exited}; not restarted (log {self.log(name)})")
                continue
            delay = self.backoffs[name].died(now)
            self.due[name] = now + delay
            self.say(f"stack: {exited}; restarting it in {delay:.1f} s (log {self.log(name)})")
        for name, when in list(self.due.items()):
            again = self.stack.processes.get(name)
            if again is not None and again.poll() is None:
                del self.due[name]  # started again by someone else meanwhile
            elif self.clock() >= when:
                self._restart(name)

    def log(self, name: str) -> str:
        return str(self.stack.logs / f"{name}.log")

    def _watch(self) -> None:
        """Parts started since the last look (by the stack, or by a restart) are up from now."""
        for name in self.stack.processes:
            if name not in self.backoffs:
                self.backoffs[name] = self.new_backoff()
            if name not in self.up_since and name not in self.due and self.stack.processes[name].poll() is None:
                self.abandoned.discard(name)
                now = self.clock()
                self.up_since[name] = now
                self.backoffs[name].started(now)

    def _restart(self, name: str) -> None:
        try:
            self.starters[name]()
        except (StackError, OSError) as exc:
            self.stack.stop_process(name)  # started but never ready: not left half up
            now = self.clock()
            delay = self.backoffs[name].died(now)
            self.due[name] = now + delay
            reason = str(exc).splitlines()[0].rstrip(":") if str(exc) else type(exc).__name__
            self.say(
                f"stack: {name} did not start again ({reason}); next attempt in {delay:.1f} s (log {self.log(name)})"
            )
            return
        del self.due[name]
        self._watch()
        self.say(f"stack: {name} restarted (pid {self.stack.processes[name].pid})")
