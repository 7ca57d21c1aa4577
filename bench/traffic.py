"""Steady, bounded request load through Envoy for ``./taskw faults`` and ``./taskw soak``.

A fixed mix whose normal verdict is known per request kind, sent at a fixed rate by a few
threads on keep-alive connections. Every response is recorded with the times it was sent and
answered, so a fault window can later decide which answers were right: a 2xx for a request the
policy denies, or for any request sent while no decision could be made, is *wrongly allowed*.
Loopback only; the loop stops at its deadline or when told to.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from bench.setups import AGENT_CEILING_LIFTED, policy_bundle
from devstack.agent_client import AgentClient, Tokens
from devstack.stack import DEFAULT_BUNDLE, Stack

READER = "spiffe://demo.local/agent/reader"
WRITER = "spiffe://demo.local/agent/writer"
TOKEN_TTL_S = 3600
TOKEN_REFRESH_BEFORE_S = 600  # re-mint this long before expiry, as agents do
BASELINE_SHARE = 0.9  # share of a kind's answers that must be its normal status before a fault


class BaselineError(RuntimeError):
    """The load's verdicts are wrong before any fault: measuring the fault would mean nothing."""


@dataclass(frozen=True)
class Kind:
    name: str
    method: str
    path: str
    normal: int  # the status the policy gives when everything works
    body: dict[str, Any] | None = None
    agent: str = READER

    @property
    def must_deny(self) -> bool:
        return not 200 <= self.normal < 300


def _rpc(tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": arguments}}


MIX = (
    Kind("read docs (allow)", "GET", "/api/docs/handbook", 200),
    Kind("write ticket, reader (deny)", "POST", "/api/tickets", 403, {"title": "x"}),
    Kind("mcp search_docs (allow)", "POST", "/mcp", 200, _rpc("search_docs", {"q": "vpn"})),
    Kind("mcp delete_record, reader (deny)", "POST", "/mcp", 403, _rpc("delete_record", {"id": "1"})),
    Kind("read record (allow)", "GET", "/api/records/7", 200),
)


@dataclass
class Sample:
    kind: Kind
    sent: float
    done: float
    status: int  # 0: no HTTP answer at all (connection error)


@dataclass
class Traffic:
    """Runs the mix at ``rate`` requests/s until :meth:`stop` or ``deadline_s``."""

    stack: Stack
    rate: float = 40.0
    threads: int = 2
    deadline_s: float = 600.0
    # Mcp-Session-Id pool: keeps each session under the per-session rate ceiling. The per-agent
    # ceiling counts every session: run the traffic on traffic_bundle(), which lifts it.
    sessions: int = 64
    samples: list[Sample] = field(default_factory=list)
    clock: Callable[[], float] = time.monotonic  # only differences are used: its origin is arbitrary

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []
        self.tokens = Tokens(
            self.stack.trust_domain, ttl=TOKEN_TTL_S, reuse_s=TOKEN_TTL_S - TOKEN_REFRESH_BEFORE_S, clock=self.clock
        )
        self._session_ids = [str(uuid.uuid4()) for _ in range(self.sessions)]

    def token(self, agent: str) -> str:
        """A JWT-SVID minted on first use and reused until it nears expiry, as agents do."""
        return self.tokens.token(agent)

    def start(self) -> Traffic:
        started = self.clock()
        for index in range(self.threads):
            worker = threading.Thread(target=self._run, args=(index, started), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=15)

    def _run(self, index: int, started: float) -> None:
        interval = self.threads / self.rate
        kinds = itertools.cycle(MIX[index % len(MIX) :] + MIX[: index % len(MIX)])
        sessions = itertools.cycle(self._session_ids[index :: self.threads] or self._session_ids)
        next_at = self.clock()
        with requests.Session() as http:  # keep-alive, as agents do
            client = AgentClient(self.stack, tokens=self.tokens, http=http, timeout=5)
            while not self._stop.is_set() and self.clock() - started < self.deadline_s:
                kind = next(kinds)
                self.record(kind, self._send(client, kind, next(sessions)))
                next_at += interval
                delay = next_at - self.clock()
                if delay > 0:
                    self._stop.wait(delay)
                else:
                    next_at = self.clock()  # behind schedule: do not burst to catch up

    def _send(self, client: AgentClient, kind: Kind, session_id: str) -> tuple[float, int]:
        sent = self.clock()
        try:
            response = client.request(
                kind.method, kind.path, kind.agent, {"mcp-session-id": session_id}, json=kind.body
            )
            return sent, response.status_code
        except requests.RequestException:
            return sent, 0

    def record(self, kind: Kind, result: tuple[float, int]) -> None:
        sent, status = result
        with self._lock:
            self.samples.append(Sample(kind, sent, self.clock(), status))

    def snapshot(self) -> list[Sample]:
        with self._lock:
            return list(self.samples)

    def between(self, start: float, end: float) -> list[Sample]:
        with self._lock:
            return [s for s in self.samples if start <= s.sent and s.done <= end]

    def check_baseline(self, since: float, per_kind: int = 2, timeout_s: float = 15.0) -> None:
        """Raise :class:`BaselineError` unless the answers since ``since`` are what the mix expects.

        Waits until every kind was answered ``per_kind`` times (or ``timeout_s`` passed), so a
        short window is judged on every kind. A fault phase measured on a load that was already
        refused (every token rejected, say) would report "no 503" instead of the real cause.
        """
        deadline = self.clock() + timeout_s
        while True:
            window = self.between(since, self.clock())
            seen = Counter(s.kind.name for s in window)
            if all(seen[k.name] >= per_kind for k in MIX) or self.clock() >= deadline:
                break
            self._stop.wait(0.1)
        problem = baseline_problem(window)
        if problem:
            raise BaselineError(problem)


def traffic_bundle(target: Path) -> Path:
    """The shipped bundle with only the per-agent call ceiling lifted, for a stack under Traffic."""
    return policy_bundle(DEFAULT_BUNDLE, target, lifted=AGENT_CEILING_LIFTED)


def baseline_problem(samples: list[Sample]) -> str | None:
    """Why ``samples`` are not a healthy baseline of the mix, or None when they are."""
    if not samples:
        return "baseline: no request of the load was answered"
    wrong = []
    for kind in MIX:
        statuses = Counter(s.status for s in samples if s.kind == kind)
        total = sum(statuses.values())
        if total == 0:
            wrong.append(f"{kind.name}: never answered")
        elif statuses[kind.normal] < BASELINE_SHARE * total:
            seen = ", ".join(f"{status or 'no answer'} x{n}" for status, n in statuses.most_common())
            wrong.append(f"{kind.name}: expected {kind.normal}, got {seen}")
    if not wrong:
        return None
    return "baseline before the fault is not what the mix expects, so the run stops: " + "; ".join(wrong)


def count(samples: list[Sample], no_decision: tuple[float, float] | None = None) -> dict[str, int]:
    """Counts of what the client saw. ``no_decision``: a window in which no decision could be made,
    so every 2xx for a request sent and answered inside it was wrongly allowed."""
    counts = {"sent": len(samples), "allowed": 0, "denied": 0, "unavailable_503": 0, "other": 0, "wrongly_allowed": 0}
    for sample in samples:
        ok = 200 <= sample.status < 300
        if ok:
            counts["allowed"] += 1
        elif sample.status == 503:
            counts["unavailable_503"] += 1
        elif 400 <= sample.status < 500:
            counts["denied"] += 1
        else:
            counts["other"] += 1
        inside = no_decision is not None and no_decision[0] <= sample.sent and sample.done <= no_decision[1]
        if ok and (sample.kind.must_deny or inside):
            counts["wrongly_allowed"] += 1
    return counts


def recovery_seconds(samples: list[Sample], since: float, settle: int = 10) -> float | None:
    """Seconds from ``since`` until answers are normal again: the first of ``settle`` consecutive
    samples (sent after ``since``) that all got their kind's normal status; None if never."""
    later = sorted((s for s in samples if s.sent >= since), key=lambda s: s.sent)
    run = 0
    for index, sample in enumerate(later):
        run = run + 1 if sample.status == sample.kind.normal else 0
        if run == settle:
            return round(later[index - settle + 1].done - since, 3)
    return None
