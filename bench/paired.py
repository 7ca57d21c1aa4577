"""``./taskw bench-paired -- BASE [OTHER]``: two trees' sidecar setups side by side, CPU per request.

On a machine whose speed drifts by tens of per cent within minutes, two whole-bench runs cannot
separate a change of a few per cent. Here each tree (a checkout: BASE, e.g. a worktree of an
earlier commit, and OTHER, this tree by default) brings up its own HTTP- or gRPC-mode stack (Envoy,
its sidecar, OPA, the bench upstream), and wrk bursts at 16 connections alternate between the two,
in an order turned around every round. Per burst: CPU per request of every process of the stack
(from /proc). Reported per round and as medians: each process's CPU per request, and as the
drift-proof figure, the sidecar's and OPA's CPU per request as a multiple of Envoy's in the same
burst (Envoy's code is the same in both trees), with the number of rounds in which OTHER's is the
lower. Loopback only; bounded by ``--rounds`` x ``--seconds``. Nothing here is a test assertion.

Each stack runs this file as a script from this tree with ``PYTHONPATH`` set to its own tree, so
its sidecar, devstack and bench helpers are that tree's own (an older tree needs no copy of this
file). Results: a table, and bench/results/paired.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
RESULTS = HERE.parent / "results"
BASIS = "envoy"  # the process both trees run unchanged: the yardstick of each burst
RATIOS = ("sidecar", "opa")


def serve(mode: str) -> None:
    """One tree's stack: 'run CONNECTIONS SECONDS' on stdin → one JSON line of figures on stdout."""
    from bench.cpu import tree_seconds
    from bench.load import run_wrk
    from bench.mix import READER, TOKEN_TTL, WRITER, request_mix
    from bench.setups import SidecarSetup, policy_bundle
    from devstack.stack import DEFAULT_BUNDLE

    with tempfile.TemporaryDirectory(prefix="authz-paired-") as tmp:
        work = Path(tmp)
        setup = SidecarSetup(work / "sidecar", policy_bundle(DEFAULT_BUNDLE, work / "bundle"), mode)
        setup.start()
        try:
            td = setup.stack.trust_domain
            grant = setup.open_task(WRITER, "triage", ["tickets:write"])
            mix = request_mix(td.mint_jwt(READER, ttl=TOKEN_TTL), td.mint_jwt(WRITER, ttl=TOKEN_TTL), grant["token"])
            run_wrk(setup.url, mix, 16, 2, work)  # warm-up
            pids = {name: process.pid for name, process in setup.stack.processes.items()}
            print("ready", flush=True)
            for line in sys.stdin:
                _, connections, seconds = line.split()
                before = {name: tree_seconds(pid) or 0.0 for name, pid in pids.items()}
                result = run_wrk(setup.url, mix, int(connections), float(seconds), work)
                after = {name: tree_seconds(pid) or 0.0 for name, pid in pids.items()}
                cpu = {name: (after[name] - before[name]) / result.requests * 1000 for name in pids}
                rps = result.requests / result.seconds
                print(json.dumps({"rps": rps, "p50_ms": result.p50_ms, "cpu_ms": cpu}), flush=True)
        finally:
            setup.stop()


def summarise(rounds: dict[str, list[dict[str, Any]]], base: str, other: str) -> dict[str, Any]:
    """Medians per tree, and per ratio how many rounds had ``other`` lower than ``base``."""
    summary: dict[str, Any] = {"trees": {}, "other_lower": {}}
    for tree, bursts in rounds.items():
        processes = sorted(bursts[0]["cpu_ms"])
        summary["trees"][tree] = {
            "cpu_ms": {p: statistics.median(b["cpu_ms"][p] for b in bursts) for p in processes},
            "vs_envoy": {r: statistics.median(_ratio(b, r) for b in bursts) for r in RATIOS},
            "rps": statistics.median(b["rps"] for b in bursts),
        }
    for ratio in RATIOS:
        pairs = list(zip(rounds[base], rounds[other], strict=True))
        summary["other_lower"][ratio] = f"{sum(_ratio(o, ratio) < _ratio(b, ratio) for b, o in pairs)} of {len(pairs)}"
    return summary


def _ratio(burst: dict[str, Any], process: str) -> float:
    cpu = burst["cpu_ms"]
    return float(cpu[process] / cpu[BASIS])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.paired", description=__doc__)
    parser.add_argument("base", type=Path, help="a checkout to compare against, e.g. a worktree of an earlier commit")
    parser.add_argument("other", type=Path, nargs="?", default=HERE.parents[1], help="default: this tree")
    parser.add_argument("--mode", choices=["http", "grpc"], default="http")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.mode)
        return 0
    trees = {"base": args.base.resolve(), "other": args.other.resolve()}
    if trees["base"] == trees["other"]:
        parser.error("BASE and OTHER are the same tree")
    stacks: dict[str, subprocess.Popen[str]] = {}
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    try:
        for name, tree in trees.items():
            env = {**os.environ, "PYTHONPATH": str(tree)}
            argv_ = [sys.executable, str(HERE), str(tree), "--serve", "--mode", args.mode]
            stack = subprocess.Popen(argv_, cwd=tree, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            stacks[name] = stack
            assert stack.stdout is not None
            if stack.stdout.readline().strip() != "ready":
                print(f"bench-paired: the {name} tree's stack did not start ({tree})", file=sys.stderr)
                return 1
        for n in range(args.rounds):
            for name in list(trees) if n % 2 == 0 else list(reversed(trees)):
                stack = stacks[name]
                assert stack.stdin is not None and stack.stdout is not None
                stack.stdin.write(f"run {args.connections} {args.seconds}\n")
                stack.stdin.flush()
                burst = json.loads(stack.stdout.readline())
                rounds[name].append(burst)
                shown = ", ".join(f"{p} {v:.3f}" for p, v in sorted(burst["cpu_ms"].items()))
                print(f"round {n} {name:5s}  {burst['rps']:7.1f} req/s  CPU ms/request: {shown}", flush=True)
    finally:
        for stack in stacks.values():
            if stack.stdin is not None:
                stack.stdin.close()
            stack.wait(timeout=120)
    summary = summarise(rounds, "base", "other")
    print(f"\n{args.mode} mode, {args.rounds} rounds of {args.seconds:g} s at c={args.connections}; medians:")
    for name, figures in summary["trees"].items():
        ratios = ", ".join(f"{r} {v:.2f}x" for r, v in figures["vs_envoy"].items())
        print(f"  {name:5s} ({trees[name]}): {figures['rps']:.1f} req/s; CPU per request vs Envoy's: {ratios}")
    print("  other lower than base: " + ", ".join(f"{r} in {n}" for r, n in summary["other_lower"].items()))
    RESULTS.mkdir(parents=True, exist_ok=True)
    report = {"mode": args.mode, "trees": {k: str(v) for k, v in trees.items()}, "rounds": rounds, **summary}
    (RESULTS / "paired.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
