"""``./taskw bench-policy``: the shipped policy's evaluation against a trivial policy, with ``opa bench``.

For every example input the sidecar builds (sidecar/schema/examples/*.json: REST read, MCP
tools/call, a write under a task, an email after a PII read, an approved delete) this runs
``opa bench`` on ``data.agent.authz.decision`` of the shipped bundle (rego/, tests left out) and on
a trivial policy (one input field, a constant answer) with the same input, interleaved and
repeated, and prints the ratio of their ns/op medians. The target is the shipped policy at most
5x the trivial one. Results: a table, and bench/results/policy.json.

The examples were built at 2026-01-01T00:00:00Z (their task grants expire 30 minutes later);
``opa bench`` cannot mock time.now_ns, so every timestamp in them is moved by the time since then,
and each input takes the same path as in tests/rego/input_examples_test.rego (the verdict is
checked with ``opa eval`` first and printed).

``--baseline DIR`` measures another policy directory (e.g. a copy of rego/ before a change) in the
same run. ``--store read-optimized`` gives ``opa bench`` ``--optimize-store-for-read-speed`` (data
kept as AST values, as ``opa run --optimize-store-for-read-speed`` does); ``both`` runs both.
Ratios compare runs on the same machine in one invocation; nothing here is a test assertion.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devstack.tools import find_tool

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
EXAMPLES = REPO / "sidecar" / "schema" / "examples"
SHIPPED = REPO / "rego"
QUERY = "data.agent.authz.decision"
TRIVIAL_QUERY = "data.bench.trivial.decision"
TARGET = 5.0
BUILT_AT = 1767225600  # 2026-01-01T00:00:00Z, as built_at_ns in tests/rego/input_examples_test.rego

# The verdict each example gets (tests/rego/input_examples_test.rego); others are only reported.
EXPECTED = {
    "rest-read-jwt": "allow",
    "mcp-tools-call-xfcc": "deny",
    "rest-write-under-task-jwt": "allow",
    "mcp-send-email-after-pii-read-jwt": "step_up",
    "rest-delete-approved-jwt": "allow",
}

TRIVIAL = """package bench.trivial

# A trivial policy on the same input: one input field, a constant answer.
default decision := {"verdict": "deny", "reasons": ["no agent"], "remember": [], "write": true}

decision := {"verdict": "allow", "reasons": ["trivial"], "remember": [], "write": false} if {
	is_string(input.agent.spiffe_id)
}
"""

STORES = {"default": [], "read-optimized": ["--optimize-store-for-read-speed"]}
TIME_FIELDS = {"issued_at", "expires_at", "started_at", "at", "iat", "exp", "nbf", "auth_time", "decided_at"}


@dataclass
class Series:
    """ns/op of repeated ``opa bench`` runs of one policy on one input."""

    ns_per_op: list[float] = field(default_factory=list)
    allocs_per_op: list[float] = field(default_factory=list)

    @property
    def median_us(self) -> float:
        return statistics.median(self.ns_per_op) / 1000

    @property
    def spread(self) -> float:
        """(max - min) / median."""
        return (max(self.ns_per_op) - min(self.ns_per_op)) / statistics.median(self.ns_per_op)


def shift_times(value: Any, delta: int, key: str = "") -> Any:
    """The example with its unix timestamps moved by ``delta`` seconds (so its task is current)."""
    if isinstance(value, dict):
        if key == "labels":  # agent_history.labels: label -> when it was recorded
            return {k: v + delta if isinstance(v, int) else v for k, v in value.items()}
        return {k: shift_times(v, delta, k) for k, v in value.items()}
    if isinstance(value, list):
        return [shift_times(v, delta, key) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and key in TIME_FIELDS:
        return value + delta
    return value


def opa_bench(opa: str, policy: list[str], query: str, input_file: Path, store: str) -> tuple[float, float]:
    """ns/op and allocations/op of one ``opa bench`` run (it repeats the evaluation until the
    timing is stable). Allocations do not depend on the machine's load, timings do."""
    argv = [opa, "bench", "--count", "1", "--benchmem", "--format", "json", *policy]
    argv += ["--ignore", "*_test.rego", "-i", str(input_file), *STORES[store], query]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    result = json.loads(out)
    return float(result["T"]) / float(result["N"]), float(result["MemAllocs"]) / float(result["N"])


def verdict(opa: str, policy: list[str], input_file: Path) -> str:
    argv = [opa, "eval", "--format", "json", *policy, "--ignore", "*_test.rego", "-i", str(input_file), QUERY]
    out = json.loads(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)
    return str(out["result"][0]["expressions"][0]["value"]["verdict"])


def write_inputs(target: Path, delta: int) -> dict[str, Path]:
    """The examples, time-shifted, in the order of EXPECTED (then any others)."""
    inputs = {}
    examples = sorted(
        EXAMPLES.glob("*.json"), key=lambda p: (list(EXPECTED).index(p.stem) if p.stem in EXPECTED else 99, p.stem)
    )
    for example in examples:
        path = target / example.name
        path.write_text(json.dumps(shift_times(json.loads(example.read_text()), delta)))
        inputs[example.stem] = path
    return inputs


def table_row(name: str, verdicts: dict[str, str], series: dict[str, Series]) -> dict[str, Any]:
    """One input's figures: medians in µs, spreads, and the ratios to the trivial policy."""
    trivial = series["trivial"].median_us
    row: dict[str, Any] = {"input": name, "verdict": verdicts["shipped"]}
    for policy in ("shipped", "baseline", "trivial"):
        if policy in series:
            row[f"{policy}_us"] = round(series[policy].median_us, 1)
            row[f"{policy}_spread"] = round(series[policy].spread, 3)
            row[f"{policy}_allocs"] = round(statistics.median(series[policy].allocs_per_op))
    row["ratio"] = round(series["shipped"].median_us / trivial, 1)
    if "baseline" in series:
        row["baseline_verdict"] = verdicts["baseline"]
        row["baseline_ratio"] = round(series["baseline"].median_us / trivial, 1)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.policy", description=__doc__)
    parser.add_argument("--repeats", type=int, default=3, help="opa bench runs per policy and input (median)")
    parser.add_argument("--store", choices=["default", "read-optimized", "both"], default="default")
    parser.add_argument("--baseline", type=Path, help="another policy directory to measure in the same run")
    parser.add_argument("--only", action="append", default=[], help="example name(s) to measure (default: all)")
    parser.add_argument("--out", type=Path, default=RESULTS / "policy.json")
    args = parser.parse_args(argv)
    opa = find_tool("opa")
    stores = list(STORES) if args.store == "both" else [args.store]
    policies = {"shipped": ["--bundle", str(SHIPPED)]}
    if args.baseline:
        policies["baseline"] = ["--bundle", str(args.baseline.resolve())]
    version = subprocess.run([opa, "version"], capture_output=True, text=True, check=True).stdout.splitlines()[0]

    with tempfile.TemporaryDirectory(prefix="bench-policy-") as tmp:
        work = Path(tmp)
        (work / "trivial").mkdir()
        (work / "trivial" / "trivial.rego").write_text(TRIVIAL)
        policies["trivial"] = ["--bundle", str(work / "trivial")]
        queries = {name: (TRIVIAL_QUERY if name == "trivial" else QUERY) for name in policies}
        delta = int(time.time()) - BUILT_AT
        inputs = write_inputs(work, delta)
        if args.only:
            inputs = {name: path for name, path in inputs.items() if name in args.only}

        verdicts: dict[str, dict[str, str]] = {}
        for name, path in inputs.items():
            verdicts[name] = {p: verdict(opa, policies[p], path) for p in policies if p != "trivial"}
            expected = EXPECTED.get(name)
            if expected and verdicts[name]["shipped"] != expected:
                print(f"warning: {name}: the shipped policy says {verdicts[name]['shipped']}, not {expected}")

        series: dict[tuple[str, str, str], Series] = {}
        started = time.monotonic()
        for repeat in range(args.repeats):
            for store in stores:
                for name, path in inputs.items():
                    # Interleaved, the order turned around on every repeat: drift hits all alike.
                    order = list(policies) if repeat % 2 == 0 else list(reversed(policies))
                    for policy in order:
                        key = (store, name, policy)
                        ns, allocs = opa_bench(opa, policies[policy], queries[policy], path, store)
                        series.setdefault(key, Series()).ns_per_op.append(ns)
                        series[key].allocs_per_op.append(allocs)
            print(f"repeat {repeat + 1}/{args.repeats} done ({time.monotonic() - started:.0f} s)", file=sys.stderr)

    report: dict[str, Any] = {
        "opa": version,
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "repeats": args.repeats,
        "target_ratio": TARGET,
        "note": "ns/op and allocs/op medians of opa bench --count 1 --benchmem; ratio = policy / trivial, one run",
        "stores": {},
    }
    for store in stores:
        rows = []
        print(f"\nstore: {store}{' (--optimize-store-for-read-speed)' if STORES[store] else ''}")
        header = "| input | verdict | shipped µs | trivial µs | shipped / trivial | shipped allocs |"
        if "baseline" in policies:
            header += " baseline µs | baseline / trivial | baseline allocs |"
        print(header)
        print("|" + "---|" * (header.count("|") - 1))
        for name in inputs:
            row = table_row(name, verdicts[name], {p: series[(store, name, p)] for p in policies})
            rows.append(row)
            line = f"| {name} | {row['verdict']} | {row['shipped_us']} | {row['trivial_us']} | {row['ratio']}x |"
            line += f" {row['shipped_allocs']} |"
            if "baseline_us" in row:
                line += f" {row['baseline_us']} | {row['baseline_ratio']}x | {row['baseline_allocs']} |"
            print(line)
        met = all(r["ratio"] <= TARGET for r in rows)
        worst = max(r["ratio"] for r in rows)
        print(f"target shipped <= {TARGET:g}x trivial on every input: {'met' if met else 'missed'} (worst {worst}x)")
        report["stores"][store] = {"inputs": rows, "target_met": met, "worst_ratio": worst}

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwritten: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
