"""``./taskw faults``: fault injection under steady load through Envoy (loopback, bounded).

One stack (OPA pulling a signed bundle from the bundle service, the sidecar on Redis, Envoy, the
demo upstream), a small OPA proxy in this process between the sidecar and OPA (to make OPA
answer garbage or a wrong shape), and steady traffic (bench/traffic.py). Phases, one after the
other, each with the load running:

  opa-sigkill        OPA killed with SIGKILL, then started again
  opa-slow           OPA frozen (SIGSTOP) beyond the sidecar's timeout, then resumed
  opa-garbage        OPA's answers replaced by non-JSON
  opa-wrong-shape    OPA's answers replaced by a result of an unexpected shape
  bundle-removed     the bundle vanishes from the bundle service (the active policy keeps deciding)
  opa-no-bundle      OPA restarted while the bundle service has no bundle, then the bundle published
  redis-stopped      Redis stopped, then started again (append-only file: state kept)
  sidecar-restart    the sidecar restarted on Redis; task, revocation and approval state checked after
  redis-failover     the sidecar moved onto a Sentinel-managed primary and replica, the primary
                     killed (SIGKILL): 503s until the replica is promoted, then verdicts recover on
                     their own; task, revocation, approval and session state checked after

For each: requests sent, allowed, denied, 503, wrongly allowed (must be 0), time to recover
(from the end of the fault; for redis-failover from the kill, since nothing but the promotion heals it).
A table on stdout, JSON in bench/results/faults.json. Exit 1 when anything was wrongly allowed,
a phase did not recover, or state was lost.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import requests

from bench.traffic import WRITER, BaselineError, Traffic, count, recovery_seconds, traffic_bundle
from devstack.agent_client import AgentClient, AgentClientError
from devstack.redis_cluster import LocalSentinel
from devstack.redis_server import RedisServer
from devstack.stack import Ports, Stack
from sidecar.unix_http import UnixHTTPConnection

RESULTS = Path(__file__).parent / "results"


class OpaProxy(ThreadingHTTPServer):
    """Forwards to the real OPA, or answers like a broken one (``mode``)."""

    daemon_threads = True
    answers = {
        "garbage": (200, b"<html>certainly not json</html>"),
        "wrong-shape": (200, b'{"result": {"verdict": "maybe", "reasons": "not a list"}}'),
    }

    def __init__(self, target: Path) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.target = target  # the real OPA's unix socket
        self.mode = "pass"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        """The sidecar hangs up on a slow answer (its timeout): expected here, not worth a traceback."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _ProxyHandler(BaseHTTPRequestHandler):
    server: OpaProxy
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._forward(None)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.server.mode in OpaProxy.answers and self.path.startswith("/v1/data/"):
            self._answer(*OpaProxy.answers[self.server.mode])
            return
        self._forward(body)

    def _forward(self, body: bytes | None) -> None:
        connection = UnixHTTPConnection(self.server.target, timeout=5)
        try:
            connection.request(self.command, self.path, body=body, headers={"content-type": "application/json"})
            upstream = connection.getresponse()
            self._answer(upstream.status, upstream.read())
        except OSError:
            self._answer(502, b'{"error": "opa unreachable"}')
        finally:
            connection.close()

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        return None


@dataclass
class Phase:
    name: str
    fault: str
    counts: dict[str, int] = field(default_factory=dict)
    during: dict[str, int] = field(default_factory=dict)
    recover_s: float | None = None
    expect_no_decision: bool = True
    notes: list[str] = field(default_factory=list)
    ok: bool = True


class Faults:
    def __init__(self, workdir: Path, fault_s: float, settle_s: float, rate: float) -> None:
        self.workdir = workdir
        self.fault_s = fault_s
        self.settle_s = settle_s
        self.rate = rate
        self.redis = RedisServer(workdir / "redis")
        self.sentinel: LocalSentinel | None = None  # started by the redis-failover phase
        self.proxy: OpaProxy | None = None
        self.stack: Stack | None = None
        self.traffic: Traffic | None = None
        self.completed: list[Phase] = []  # phases measured so far (kept when a baseline check stops the run)

    @contextmanager
    def running(self) -> Iterator[Faults]:
        self.redis.start()  # first: the stack's free ports are then chosen with Redis's port taken
        ports = Ports.free()
        bundle = traffic_bundle(self.workdir / "bundle")
        self.stack = Stack(self.workdir / "stack", ports, bundle=bundle, bundle_service=True)
        self.proxy = OpaProxy(self.stack.opa_socket)  # between the sidecar and OPA's socket
        threading.Thread(target=self.proxy.serve_forever, daemon=True).start()
        self.stack.sidecar_env.update(
            {
                "AUTHZ_OPA__URL": self.proxy.url,
                "AUTHZ_OPA__TIMEOUT_MS": "300",
                "AUTHZ_STATE__BACKEND": "redis",
                "AUTHZ_STATE__REDIS_URL": self.redis.url,
                "AUTHZ_STATE__TIMEOUT_MS": "300",
            }
        )
        try:
            with self.stack:
                self.traffic = Traffic(self.stack, rate=self.rate, deadline_s=1800).start()
                yield self
        finally:
            if self.traffic is not None:
                self.traffic.stop()
            self.proxy.shutdown()
            self.redis.stop()
            if self.sentinel is not None:
                self.sentinel.stop()

    # -- one phase ---------------------------------------------------------------------
    def phase(
        self,
        name: str,
        fault: str,
        begin: Callable[[], None],
        end: Callable[[], None],
        *,
        no_decision: bool = True,
        recover_timeout: float = 30.0,
        recover_from_fault: bool = False,
    ) -> Phase:
        assert self.traffic is not None
        result = Phase(name, fault, expect_no_decision=no_decision)
        settle_start = time.monotonic()
        time.sleep(self.settle_s)  # steady state before the fault
        try:
            self.traffic.check_baseline(settle_start)
        except BaselineError as exc:
            raise BaselineError(f"{name}: {exc}") from None
        start = time.monotonic()
        begin()
        fault_start = time.monotonic()
        time.sleep(self.fault_s)
        fault_end = time.monotonic()
        end()
        ended = fault_start if recover_from_fault else time.monotonic()
        deadline = ended + recover_timeout
        while time.monotonic() < deadline:
            time.sleep(0.5)
            if recovery_seconds(self.traffic.between(ended, time.monotonic()), ended) is not None:
                break
        time.sleep(self.settle_s)
        everything = self.traffic.between(start, time.monotonic())
        result.counts = count(everything, (fault_start, fault_end) if no_decision else None)
        result.during = count(self.traffic.between(fault_start, fault_end))
        result.recover_s = recovery_seconds(self.traffic.between(ended, time.monotonic()), ended)
        result.ok = result.counts["wrongly_allowed"] == 0 and result.recover_s is not None
        if no_decision and result.during["allowed"]:
            result.ok = False
            result.notes.append(f"{result.during['allowed']} allowed while no decision could be made")
        if no_decision and result.during["sent"] and not result.during["unavailable_503"]:
            result.notes.append("no 503 seen during the fault")
            result.ok = False
        return result

    # -- the faults ---------------------------------------------------------------------
    def run_all(self, only: set[str] | None = None) -> list[Phase]:
        stack, proxy = self.stack, self.proxy
        assert stack is not None and proxy is not None

        def opa() -> subprocess.Popen[bytes]:  # looked up on each call: the process object changes on restart
            return stack.processes["opa"]

        def set_mode(mode: str) -> Callable[[], None]:
            return lambda: setattr(proxy, "mode", mode)

        bundle = stack.bundle_root / "bundles" / "authz.tar.gz"
        saved = bundle.with_suffix(".saved")

        def remove_bundle() -> None:
            bundle.replace(saved)

        def restore_bundle() -> None:
            saved.replace(bundle)

        def restart_opa_without_bundle() -> None:
            bundle.replace(saved)
            stack.stop_opa(signal.SIGKILL)
            stack.wait_ready = False
            stack.start_opa()

        def publish_bundle_again() -> None:
            saved.replace(bundle)
            stack.wait_ready = True

        phases: list[tuple[str, str, Callable[[], None], Callable[[], None], bool]] = [
            (
                "opa-sigkill",
                "OPA killed (SIGKILL), restarted",
                lambda: stack.stop_opa(signal.SIGKILL),
                stack.start_opa,
                True,
            ),
            (
                "opa-slow",
                "OPA frozen (SIGSTOP) past the 300 ms timeout",
                lambda: opa().send_signal(signal.SIGSTOP),
                lambda: opa().send_signal(signal.SIGCONT),
                True,
            ),
            ("opa-garbage", "OPA answers non-JSON", set_mode("garbage"), set_mode("pass"), True),
            (
                "opa-wrong-shape",
                "OPA answers a result of the wrong shape",
                set_mode("wrong-shape"),
                set_mode("pass"),
                True,
            ),
            (
                "bundle-removed",
                "bundle gone from the bundle service (last good policy keeps deciding)",
                remove_bundle,
                restore_bundle,
                False,
            ),
            (
                "opa-no-bundle",
                "OPA restarted with no bundle to load, then it is published",
                restart_opa_without_bundle,
                publish_bundle_again,
                True,
            ),
            ("redis-stopped", "Redis stopped, then started again", self.redis.stop, self.redis.start, True),
        ]
        results = self.completed
        for name, fault, begin, end, no_decision in phases:
            if only and name not in only:
                continue
            print(f"faults: {name} ...", file=sys.stderr, flush=True)
            results.append(self.phase(name, fault, begin, end, no_decision=no_decision))
        if not only or "sidecar-restart" in only:
            print("faults: sidecar-restart ...", file=sys.stderr, flush=True)
            results.append(self.sidecar_restart())
        if not only or "redis-failover" in only:
            print("faults: redis-failover ...", file=sys.stderr, flush=True)
            results.append(self.redis_failover())
        return results

    def sidecar_restart(self) -> Phase:
        """Restart the sidecar on Redis: the traffic sees 503s, and no state is lost."""
        stack = self.stack
        assert stack is not None
        before = _State.build(stack)
        phase = self.phase(
            "sidecar-restart", "sidecar restarted (state in Redis)", stack.stop_sidecar, stack.start_sidecar
        )
        before.report(stack, phase, "the restart")
        return phase

    def redis_failover(self) -> Phase:
        """Kill the Sentinel-managed primary under load: 503s, never a wrong allow, recovery once the
        replica is promoted (the old primary then rejoins as its replica, as an orchestrator would
        restart it), and no acknowledged state lost."""
        stack = self.stack
        assert stack is not None
        sentinel = self.sentinel = LocalSentinel(self.workdir / "sentinel").start()
        stack.stop_sidecar()  # outside the measured window: the phase's baseline check waits for steady answers
        stack.sidecar_env.update(
            {
                "AUTHZ_STATE__REDIS_MODE": "sentinel",
                "AUTHZ_STATE__SENTINEL_NODES": json.dumps(sentinel.nodes),
                "AUTHZ_STATE__SENTINEL_SERVICE": sentinel.service,
            }
        )
        stack.start_sidecar()
        before = _State.build(stack)
        killed = sentinel.current_primary()
        promotion: list[float] = []  # seconds from the kill until the sentinels named the replica

        def watch_promotion(killed_at: float) -> None:
            while time.monotonic() < killed_at + 30:
                if sentinel.current_primary() is not killed:
                    promotion.append(time.monotonic() - killed_at)
                    return
                time.sleep(0.05)

        def kill_primary() -> None:
            killed.kill()
            threading.Thread(target=watch_promotion, args=(time.monotonic(),), daemon=True).start()

        def rejoin_as_replica() -> None:
            deadline = time.monotonic() + 30
            while not promotion:  # not before the promotion: it would come back as the primary
                if time.monotonic() > deadline:
                    raise RuntimeError("the sentinels did not promote the replica within 30 s")
                time.sleep(0.05)
            sentinel.restart_as_replica(killed)

        # After the promotion verdicts are real decisions again, so allows inside the fault window
        # are expected; a wrong allow is still any allow of a request that must be denied.
        phase = self.phase(
            "redis-failover",
            "Redis primary killed (SIGKILL); Sentinel promotes the replica",
            kill_primary,
            rejoin_as_replica,
            no_decision=False,
            recover_from_fault=True,
        )
        if not phase.counts["unavailable_503"]:
            phase.ok = False
            phase.notes.append("no 503 seen while the primary was down")
        if promotion:
            phase.notes.append(f"the sentinels promoted the replica {promotion[0]:.2f} s after the kill")
        before.report(stack, phase, "the failover")
        return phase


@dataclass
class _State:
    """State created before a sidecar restart, checked after it."""

    active: dict[str, Any]
    completed: dict[str, Any]
    approval_id: str
    cleanup: dict[str, Any]
    writes_before: int

    @staticmethod
    def build(stack: Stack) -> _State:
        # Set-up, not measurement: a 503 (the harness gives OPA only 300 ms, and a loaded machine
        # may miss that) is retried; each step either happens once or not at all.
        client = AgentClient(stack)
        active = _decided(lambda: client.open_task(WRITER, "triage", ["tickets:write"], ttl=600))
        completed = _decided(lambda: client.open_task(WRITER, "triage", ["tickets:write"], ttl=600))
        _decided(lambda: client.complete(WRITER, completed["id"]))
        cleanup = _decided(lambda: client.open_task(WRITER, "cleanup", ["records:delete"], ttl=600))
        asked = _decided(lambda: _expect(401, _call(stack, "DELETE", "/api/records/31", cleanup["token"])))
        approval_id = asked.json()["step_up"]["approval_id"]
        _decided(lambda: client.decide_approval(approval_id, reason="faults").raise_for_status())
        writes = 3
        for _ in range(writes):
            _decided(lambda: _expect(201, _call(stack, "POST", "/api/tickets", active["token"])))
        return _State(active, completed, approval_id, cleanup, writes)

    def report(self, stack: Stack, phase: Phase, fault: str) -> None:
        """Check the state after ``fault`` and put what was lost (or that nothing was) in the phase."""
        lost = self.check(stack)
        if lost:
            phase.ok = False
            phase.notes += lost
        else:
            phase.notes.append(f"task, revocation, approval and session state all survived {fault}")

    def check(self, stack: Stack) -> list[str]:
        lost = []
        if _call(stack, "POST", "/api/tickets", self.completed["token"]).status_code != 403:
            lost.append("a completed (revoked) task was honoured again after the restart")
        retry = _call(stack, "DELETE", "/api/records/31", self.cleanup["token"], self.approval_id)
        if retry.status_code != 200:
            lost.append(f"the approved approval was lost ({retry.status_code})")
        elif _call(stack, "DELETE", "/api/records/31", self.cleanup["token"], self.approval_id).status_code != 403:
            lost.append("the used approval could be used again")
        allowed = sum(_call(stack, "POST", "/api/tickets", self.active["token"]).status_code == 201 for _ in range(12))
        if allowed != 10 - self.writes_before:
            lost.append(f"session write count lost: {allowed} more writes allowed, expected {10 - self.writes_before}")
        return lost


T = TypeVar("T")


def _decided(step: Callable[[], T], attempts: int = 10) -> T:
    """``step``, retried while the stack answers 503 (no decision: nothing happened)."""
    for attempt in range(attempts):
        try:
            return step()
        except (AgentClientError, requests.HTTPError) as exc:
            if exc.response is None or exc.response.status_code != 503 or attempt == attempts - 1:
                raise
            time.sleep(0.5)
    raise AssertionError("unreachable")


def _expect(status: int, response: requests.Response) -> requests.Response:
    """``response`` if it has ``status``; a 503 raises (for :func:`_decided`), anything else fails."""
    if response.status_code == 503:
        raise requests.HTTPError("no decision", response=response)
    assert response.status_code == status, (response.status_code, response.text[:300])
    return response


def _call(stack: Stack, method: str, path: str, task_token: str, approval: str | None = None) -> requests.Response:
    return AgentClient(stack).request(method, path, WRITER, task=task_token, approval=approval, json={"t": 1})


def table(phases: list[Phase]) -> str:
    header = (
        f"{'phase':<17} {'sent':>6} {'allowed':>8} {'denied':>7} {'503':>6} {'wrongly':>8} {'recover s':>10}  fault"
    )
    lines = [header, "-" * len(header)]
    for p in phases:
        c = p.counts
        recover = f"{p.recover_s:.2f}" if p.recover_s is not None else "never"
        lines.append(
            f"{p.name:<17} {c['sent']:>6} {c['allowed']:>8} {c['denied']:>7} {c['unavailable_503']:>6} "
            f"{c['wrongly_allowed']:>8} {recover:>10}  {p.fault}{'' if p.ok else '  << FAILED'}"
        )
        lines += [f"{'':<17} note: {note}" for note in p.notes]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fault-seconds", type=float, default=4.0)
    parser.add_argument("--settle-seconds", type=float, default=2.0)
    parser.add_argument("--rate", type=float, default=40.0, help="requests per second (default 40)")
    parser.add_argument("--only", action="append", help="run only these phases (repeatable)")
    parser.add_argument("--out", type=Path, default=RESULTS / "faults.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="authz-faults-") as tmp:
        faults = Faults(Path(tmp), args.fault_seconds, args.settle_seconds, args.rate)
        try:
            with faults.running():
                phases = faults.run_all(set(args.only) if args.only else None)
        except BaselineError as exc:
            if faults.completed:
                print(table(faults.completed))
            print(f"faults: stopped: {exc}", file=sys.stderr)
            return 1
    print(table(phases))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "generated_at": time.time(),
                "rate_per_s": args.rate,
                "fault_seconds": args.fault_seconds,
                "phases": [p.__dict__ for p in phases],
                "wrongly_allowed": sum(p.counts["wrongly_allowed"] for p in phases),
                "ok": all(p.ok for p in phases),
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")
    return 0 if all(p.ok for p in phases) else 1


if __name__ == "__main__":
    sys.exit(main())
