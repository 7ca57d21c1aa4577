"""``./taskw bench`` (and ``QUICK=1``): bring the setups up, measure, write bench/results/.

Order of work: every setup up at once (idle processes cost little) → one pre-flight per setup
(each request of the mix answers the expected status, else the setup is left out and the report
says why) → warm-up → the main matrix, interleaved (repeat x setup x connections) so drift hits
every setup alike → body-size runs → policy-data runs → report.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import cpu, report
from bench.load import LoadError, LoadResult, preflight, run_wrk, wrk_path
from bench.mix import READER, TOKEN_TTL, WRITER, BenchRequest, mcp_call, read_under_task, request_mix
from bench.report import DIRECT
from bench.setups import DirectSetup, PluginSetup, Setup, SidecarSetup, policy_bundle
from devstack.stack import DEFAULT_BUNDLE, StackError
from devstack.tools import ToolMissing, find_tool

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Plan:
    repeats: int
    seconds: float
    warmup: float
    connections: tuple[int, ...]
    body_sizes: tuple[int, ...]
    body_repeats: int
    agent_counts: tuple[int, ...]
    data_setups: tuple[str, ...]
    history_lengths: tuple[int, ...] = (1, 1000, 10_000)

    @classmethod
    def quick(cls) -> Plan:
        return cls(3, 2, 2, (1, 16), (1024, 65_536), 1, (10, 10_000), ("sidecar-http", "opa-envoy-plugin"))

    @classmethod
    def full(cls) -> Plan:
        return cls(
            5,
            10,
            5,
            (1, 16),
            (1024, 4096, 16_384, 65_536),
            3,
            (10, 100, 1000, 10_000),
            ("sidecar-http", "sidecar-grpc", "opa-envoy-plugin"),
        )


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def tool_version(name: str) -> str:
    try:
        out = subprocess.run(
            [find_tool(name), "--version" if name == "envoy" else "version"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout
    except (ToolMissing, OSError, subprocess.TimeoutExpired):
        return "missing"
    return out.strip().splitlines()[0] if out.strip() else "unknown"


class Bench:
    def __init__(self, plan: Plan, workdir: Path, quick: bool) -> None:
        self.plan = plan
        self.workdir = workdir
        self.results = report.Results(quick=quick, connections=plan.connections)
        self.bundle = DEFAULT_BUNDLE  # replaced in start() by the copy with lifted session limits
        self.setups: dict[str, Setup] = {}
        self.mixes: dict[str, list[BenchRequest]] = {}
        self.tokens: dict[str, tuple[str, str]] = {}  # setup → (reader, writer) JWT-SVIDs

    # -- bring-up ------------------------------------------------------------------------
    def start(self) -> None:
        self.bundle = policy_bundle(DEFAULT_BUNDLE, self.workdir / "bundle")
        http = SidecarSetup(self.workdir / "sidecar-http", self.bundle, "http")
        grpc = SidecarSetup(self.workdir / "sidecar-grpc", self.bundle, "grpc")
        direct = DirectSetup(self.workdir / "envoy-direct", self.bundle)
        for setup in (direct, http, grpc):
            self._start(setup)
        for sidecar in (http, grpc):
            if sidecar.name in self.setups:
                self._sidecar_mix(sidecar)
        if direct.name in self.setups:
            reader, writer = self._mint(direct)
            self.mixes[direct.name] = request_mix(reader, writer, None)
        self._start_plugin(http)

    def _start(self, setup: Setup) -> bool:
        log(f"starting {setup.name}")
        try:
            setup.start()
        except (StackError, ToolMissing, OSError) as exc:
            setup.stop()
            self.results.notes.append(f"{setup.name} left out: it did not start ({str(exc).splitlines()[0]})")
            log(f"{setup.name} did not start: {exc}")
            return False
        self.setups[setup.name] = setup
        return True

    def _mint(self, setup: Setup) -> tuple[str, str]:
        td = setup.stack.trust_domain
        tokens = (td.mint_jwt(READER, ttl=TOKEN_TTL), td.mint_jwt(WRITER, ttl=TOKEN_TTL))
        self.tokens[setup.name] = tokens
        return tokens

    def _sidecar_mix(self, sidecar: SidecarSetup) -> None:
        reader, writer = self._mint(sidecar)
        grant = sidecar.open_task(WRITER, "triage", ["tickets:write"])
        self.mixes[sidecar.name] = request_mix(reader, writer, grant["token"])

    def _start_plugin(self, http: SidecarSetup) -> None:
        plugin = PluginSetup(self.workdir / "opa-envoy-plugin", self.bundle)
        try:
            find_tool("opa-envoy-plugin")
        except ToolMissing as exc:
            self.results.notes.append(f"opa-envoy-plugin left out: {exc}")
            return
        if http.name not in self.setups:
            self.results.notes.append("opa-envoy-plugin left out: it borrows its task grant from sidecar-http")
            return
        # The plugin has no task API: it verifies a grant the HTTP-mode sidecar issued (see the adapter).
        grant = http.open_task(WRITER, "triage", ["tickets:write"])
        fields = ("id", "purpose", "scopes", "issued_at", "expires_at", "parent_id", "root_id", "depth")
        task = {k: grant[k] for k in fields}
        tasks = {grant["id"]: {"task": task, "chain": list(grant.get("delegation_chain") or [])}}
        plugin.configure(http.jwks(), tasks, issuer="authz-sidecar")
        if self._start(plugin):
            reader, writer = self._mint(plugin)
            self.mixes[plugin.name] = request_mix(reader, writer, grant["token"])

    def check(self) -> None:
        for name in list(self.setups):
            problems = preflight(self.setups[name].url, self.mixes[name], self.setups[name].authz)
            if problems:
                self.results.notes.append(f"{name} left out: its decisions differ from the expected ones: {problems}")
                log(f"{name} pre-flight failed: {problems}")
                self.setups.pop(name).stop()

    def stop(self) -> None:
        for setup in self.setups.values():
            setup.stop()

    # -- measuring -------------------------------------------------------------------------
    def _run(self, name: str, mix: list[BenchRequest], connections: int, seconds: float) -> LoadResult:
        result = run_wrk(self.setups[name].url, mix, connections, seconds, self.workdir)
        expected_denies = sum(1 for r in mix if r.expected(self.setups[name].authz) >= 400) / len(mix)
        observed = result.status_errors / result.requests if result.requests else 1.0
        if result.socket_errors or abs(observed - expected_denies) > 0.02:
            raise LoadError(
                f"{name}: {result.socket_errors} socket errors, {observed:.1%} non-2xx answers "
                f"(expected {expected_denies:.0%}): the setup is not answering as in the pre-flight"
            )
        return result

    def _measured_run(
        self, name: str, mix: list[BenchRequest], connections: int, seconds: float
    ) -> tuple[LoadResult, dict[str, float]]:
        """A run, and the CPU each of the setup's processes spent per request during it."""
        processes = self.setups[name].stack.processes
        before = cpu.snapshot(processes)
        result = self._run(name, mix, connections, seconds)
        return result, cpu.per_request_ms(before, cpu.snapshot(processes), result.requests)

    def main_matrix(self) -> None:
        for name in self.setups:
            log(f"warm-up {name} ({self.plan.warmup:.0f} s)")
            self._run(name, self.mixes[name], max(self.plan.connections), self.plan.warmup)
        for repeat in range(1, self.plan.repeats + 1):
            for name in self.setups:
                for connections in self.plan.connections:
                    result, cpu_ms = self._measured_run(name, self.mixes[name], connections, self.plan.seconds)
                    self.results.cell(self.results.main, name, connections).runs.append(result)
                    self.results.cpu_runs(self.results.cpu, name, connections).append(cpu_ms)
                    log(
                        f"[{repeat}/{self.plan.repeats}] {name:17} c={connections:<3} p50 {result.p50_ms:7.3f} ms "
                        f"p99 {result.p99_ms:7.3f} ms {result.rps:8.0f} req/s"
                    )

    def body_scaling(self) -> None:
        seconds = max(1.0, self.plan.seconds / 2)
        for repeat in range(self.plan.body_repeats):
            for size in self.plan.body_sizes:
                for name in self.setups:
                    mix = [mcp_call(self.tokens[name][0], size)]
                    result, cpu_ms = self._measured_run(name, mix, 1, seconds)
                    self.results.cell(self.results.body, name, size).runs.append(result)
                    self.results.cpu_runs(self.results.body_cpu, name, size).append(cpu_ms)
                    log(f"[body {repeat + 1}] {name:17} {size // 1024:3} KiB p50 {result.p50_ms:7.3f} ms")

    def data_scaling(self) -> None:
        seconds = max(1.0, self.plan.seconds / 2)
        names = [n for n in self.plan.data_setups if n in self.setups]
        for agents in self.plan.agent_counts:
            bundle = policy_bundle(DEFAULT_BUNDLE, self.workdir / f"bundle-{agents}", agents)
            for name in names:
                self.setups[name].restart_policy(bundle)
                self._run(name, self.mixes[name], 1, 1)  # warm the new policy engine
                result = self._run(name, self.mixes[name], 1, seconds)
                self.results.cell(self.results.data, name, agents).runs.append(result)
                log(f"[data] {name:17} {agents:6} agents p50 {result.p50_ms:7.3f} ms")

    def session_scaling(self) -> None:
        """Added latency of one read under a task whose session already holds 1 → 10,000 calls.

        The history is made of real calls through Envoy (16 connections), so the state grows exactly
        as in use; then the same read is measured at 1 connection."""
        name = "sidecar-http"
        if name not in self.setups or DIRECT not in self.setups:
            self.results.notes.append("session history scaling not measured: sidecar-http or envoy-direct is missing")
            return
        setup = self.setups[name]
        assert isinstance(setup, SidecarSetup)
        grant = setup.open_task(READER, "research", ["docs:read"])
        mix = [read_under_task(self.tokens[name][0], grant["token"])]
        direct = [read_under_task(self.tokens[DIRECT][0], grant["token"])]
        seconds = max(1.0, self.plan.seconds / 2)
        made = 0
        for length in self.plan.history_lengths:
            while made < length - 1:  # grow the history with real calls until it holds length - 1 earlier calls
                filler = run_wrk(setup.url, mix, 16, max(1.0, min(20.0, (length - made) / 400)), self.workdir)
                made += filler.requests
            self.results.cell(self.results.session, DIRECT, length).runs.append(self._run(DIRECT, direct, 1, seconds))
            result = self._run(name, mix, 1, seconds)
            made += result.requests
            self.results.cell(self.results.session, name, length).runs.append(result)
            log(f"[session] {name:17} {length:6} earlier calls p50 {result.p50_ms:7.3f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="the short run for iterating (under 2 minutes)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where report.json/.md and latency.png go")
    args = parser.parse_args(argv)
    plan = Plan.quick() if args.quick else Plan.full()
    try:
        wrk_path()
    except LoadError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="authz-bench-") as tmp:
        bench = Bench(plan, Path(tmp), args.quick)
        bench.results.versions = {name: tool_version(name) for name in ("envoy", "opa", "opa-envoy-plugin")}
        bench.results.versions["wrk"] = "debian " + (Path(wrk_path()).name)
        try:
            bench.start()
            bench.check()
            if report.DIRECT not in bench.setups:
                print("bench: envoy-direct did not start; no baseline, no ratios", file=sys.stderr)
                return 1
            steps: list[Callable[[], None]] = [
                bench.main_matrix,
                bench.body_scaling,
                bench.data_scaling,
                bench.session_scaling,
            ]
            for step in steps:
                step()
        finally:
            bench.stop()
    bench.results.notes.append(f"whole run took {time.monotonic() - started:.0f} s")
    paths = report.write(bench.results, args.out)
    print(paths["markdown"].read_text())
    print(f"bench: wrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    return 0
