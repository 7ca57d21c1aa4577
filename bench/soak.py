"""``./taskw soak``: steady mixed load for a bounded time; the sidecar's memory and open files over time.

The traffic mix of bench/traffic.py (reads, denied writes, MCP calls allowed and denied) plus a
task lifecycle every couple of seconds (open a short task, write under it with a minted
credential, complete it), through Envoy on loopback. Every ``--sample-seconds`` the sidecar's RSS
and open file descriptors are read from /proc. Printed as a table and written to
bench/results/soak.json with the verdict on whether RSS flattened (growth over the last half of
the run, as a share of the RSS at half time). ``SOAK_SECONDS`` (default 600) bounds the run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Required, TypedDict

import requests

from bench.traffic import MIX, WRITER, BaselineError, Traffic, traffic_bundle
from devstack.agent_client import AgentClient, AgentClientError
from devstack.stack import Mode, Ports, Stack

RESULTS = Path(__file__).parent / "results"
FLAT_GROWTH = 0.05  # RSS grew by less than 5 % over the second half: flat


@dataclass
class Point:
    at_s: float
    requests: int
    rps: float
    rss_mb: float
    anon_mb: float  # of rss_mb, the anonymous part (heap, stacks); the rest is mapped files (code)
    fds: int
    errors: int  # answers other than the kind's normal status
    wrongly_allowed: int


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 2)
    return 0.0


def proc_anon_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Anonymous:"):
            return round(int(line.split()[1]) / 1024, 2)
    return 0.0


def proc_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class TaskLifecycle(threading.Thread):
    """Open a task, write under it (a credential minted per write), complete it; repeat."""

    def __init__(self, stack: Stack, traffic: Traffic, every_s: float = 2.0) -> None:
        super().__init__(daemon=True)
        self.stack, self.traffic, self.every_s = stack, traffic, every_s
        self.stop = threading.Event()
        self.cycles = 0
        self.failures = 0

    def run(self) -> None:
        with requests.Session() as http:
            client = AgentClient(self.stack, tokens=self.traffic.tokens, http=http, timeout=5)
            while not self.stop.wait(self.every_s):
                try:
                    self._cycle(client)
                    self.cycles += 1
                except (requests.RequestException, AgentClientError, AssertionError, KeyError):
                    self.failures += 1

    def _cycle(self, client: AgentClient) -> None:
        task = client.open_task(WRITER, "triage", ["tickets:write"], ttl=60)
        for _ in range(3):
            written = client.request("POST", "/api/tickets", WRITER, task=task["token"], json={"title": "soak"})
            assert written.status_code == 201, written.text
        client.complete(WRITER, task["id"])


def soak(
    seconds: float, sample_s: float, rate: float, out: Path, mode: Mode = "http", response_path: bool = True
) -> int:
    points: list[Point] = []
    with (
        tempfile.TemporaryDirectory(prefix="authz-soak-") as tmp,
        Stack(
            Path(tmp),
            Ports.free(),
            bundle=traffic_bundle(Path(tmp) / "bundle"),
            mode=mode,
            response_path=response_path,
        ) as stack,
    ):
        pid = stack.processes["sidecar"].pid
        traffic = Traffic(stack, rate=rate, deadline_s=seconds + 30)
        began = traffic.clock()
        traffic.start()
        try:
            traffic.check_baseline(began)  # before anything is measured: is the mix decided as expected?
        except BaselineError as exc:
            traffic.stop()
            print(f"soak: stopped: {exc}", file=sys.stderr)
            return 1
        lifecycle = TaskLifecycle(stack, traffic)
        lifecycle.start()
        started = time.monotonic()
        last_n, last_t = 0, started
        try:
            while (now := time.monotonic()) - started < seconds:
                time.sleep(min(sample_s, max(0.0, seconds - (now - started))))
                samples = traffic.snapshot()
                now = time.monotonic()
                errors = sum(1 for s in samples if s.status != s.kind.normal)
                wrong = sum(1 for s in samples if s.kind.must_deny and 200 <= s.status < 300)
                rps = (len(samples) - last_n) / max(now - last_t, 1e-6)
                points.append(
                    Point(
                        round(now - started, 1),
                        len(samples),
                        round(rps, 1),
                        proc_rss_mb(pid),
                        proc_anon_mb(pid),
                        proc_fds(pid),
                        errors,
                        wrong,
                    )
                )
                last_n, last_t = len(samples), now
                p = points[-1]
                print(
                    f"{p.at_s:>8.1f}s {p.requests:>9} req {p.rps:>7.1f}/s  RSS {p.rss_mb:>8.2f} MB "
                    f"(anon {p.anon_mb:>6.2f})  fds {p.fds:>4}  "
                    f"errors {p.errors}  wrongly allowed {p.wrongly_allowed}",
                    flush=True,
                )
        finally:
            lifecycle.stop.set()
            traffic.stop()
            lifecycle.join(timeout=10)
    verdict = _verdict(points, lifecycle.cycles, lifecycle.failures)
    _print_table(points, verdict)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "seconds": seconds,
                "rate_per_s": rate,
                "mode": mode,
                "response_path": response_path,
                "mix": [k.name for k in MIX],
                **verdict,
                "points": [asdict(p) for p in points],
            },
            indent=2,
        )
    )
    print(f"wrote {out}")
    return 0 if verdict["wrongly_allowed"] == 0 and verdict["errors"] == 0 else 1


class Verdict(TypedDict, total=False):
    """What soak.json and the table say; the RSS and fd figures only when there were points."""

    rss_start_mb: float
    rss_half_mb: float
    rss_end_mb: float
    anon_end_mb: float
    rss_growth_second_half: float
    rss_flat: Required[bool | None]
    fds_min: int
    fds_max: int
    requests: int
    errors: Required[int]
    wrongly_allowed: Required[int]
    task_cycles: Required[int]
    task_failures: Required[int]


def _verdict(points: list[Point], cycles: int, failures: int) -> Verdict:
    if not points:
        return {"rss_flat": None, "errors": 0, "wrongly_allowed": 0, "task_cycles": cycles, "task_failures": failures}
    half = points[len(points) // 2]
    last = points[-1]
    growth = (last.rss_mb - half.rss_mb) / half.rss_mb if half.rss_mb else 0.0
    return {
        "rss_start_mb": points[0].rss_mb,
        "rss_half_mb": half.rss_mb,
        "rss_end_mb": last.rss_mb,
        "anon_end_mb": last.anon_mb,
        "rss_growth_second_half": round(growth, 4),
        "rss_flat": growth < FLAT_GROWTH,
        "fds_min": min(p.fds for p in points),
        "fds_max": max(p.fds for p in points),
        "requests": last.requests,
        "errors": last.errors,
        "wrongly_allowed": last.wrongly_allowed,
        "task_cycles": cycles,
        "task_failures": failures,
    }


def _print_table(points: list[Point], verdict: Verdict) -> None:
    print()
    print(f"{'time s':>8} {'requests':>9} {'req/s':>7} {'RSS MB':>8} {'fds':>5} {'errors':>7} {'wrongly':>8}")
    step = max(1, len(points) // 20)
    for p in points[::step] + ([points[-1]] if points and (len(points) - 1) % step else []):
        row = f"{p.at_s:>8.1f} {p.requests:>9} {p.rps:>7.1f} {p.rss_mb:>8.2f} {p.fds:>5}"
        print(f"{row} {p.errors:>7} {p.wrongly_allowed:>8}")
    print(
        f"RSS {verdict.get('rss_start_mb')} -> {verdict.get('rss_half_mb')} -> {verdict.get('rss_end_mb')} MB "
        f"(second half {float(verdict.get('rss_growth_second_half') or 0) * 100:+.1f} %: "
        f"{'flat' if verdict.get('rss_flat') else 'STILL GROWING'}), "
        f"fds {verdict.get('fds_min')}..{verdict.get('fds_max')}, "
        f"errors {verdict['errors']}, wrongly allowed {verdict['wrongly_allowed']}, "
        f"task cycles {verdict['task_cycles']} ({verdict['task_failures']} failed)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", "600")))
    parser.add_argument("--sample-seconds", type=float, default=None, help="default: seconds / 60, at least 2")
    parser.add_argument("--rate", type=float, default=60.0, help="requests per second of the mix (default 60)")
    parser.add_argument("--out", type=Path, default=RESULTS / "soak.json")
    parser.add_argument("--mode", choices=("http", "grpc"), default="http", help="how Envoy asks the sidecar")
    parser.add_argument(
        "--no-response-path",
        dest="response_path",
        action="store_false",
        help="without the MCP response path (Envoy's ext_proc filter and the sidecar's ext_proc server)",
    )
    args = parser.parse_args(argv)
    sample = args.sample_seconds or max(2.0, args.seconds / 60)
    mode: Mode = "grpc" if args.mode == "grpc" else "http"
    return soak(args.seconds, sample, args.rate, args.out, mode, args.response_path)


if __name__ == "__main__":
    sys.exit(main())
