"""Medians, spreads and ratios of the runs; the JSON and Markdown reports and the PNG plot."""

from __future__ import annotations

import json
import platform
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.load import LoadResult

DIRECT = "envoy-direct"
PLUGIN = "opa-envoy-plugin"
OURS = ("sidecar-http", "sidecar-grpc")
COLORS = {DIRECT: "tab:blue", "sidecar-http": "tab:orange", "sidecar-grpc": "tab:green", PLUGIN: "tab:red"}
METRICS = ("p50_ms", "p90_ms", "p99_ms", "rps")

# Issue 20's targets (report only, never test assertions).
TARGET_P50_DIRECT = 3.0  # sidecar-added p50 at 1 connection ≤ 3 x Envoy-direct p50
TARGET_P50 = 1.0  # sidecar-added p50 at 1 connection ≤ opa-envoy-plugin-added p50
TARGET_RPS_DIRECT = 0.2  # throughput at 16 connections ≥ 0.2 x Envoy-direct
TARGET_RPS = 1.0  # throughput at 16 connections ≥ 1.0 x Envoy + opa-envoy-plugin
TARGET_GRPC = 1.0  # gRPC mode at least as fast as HTTP mode (added p50 ≤, throughput ≥)
TARGET_BODY = 1.5  # added latency 64 KiB body ≤ 1.5 x 1 KiB body
TARGET_FLAT = 1.2  # added latency flat across session history / policy data


@dataclass
class Cell:
    """Every repeat of one (setup, connections) point."""

    runs: list[LoadResult] = field(default_factory=list)

    def median(self, metric: str) -> float:
        median: float = statistics.median(getattr(r, metric) for r in self.runs)
        return median

    def spread(self, metric: str) -> float:
        """(max - min) / median, over the repeats."""
        values = [getattr(r, metric) for r in self.runs]
        mid = statistics.median(values)
        return (max(values) - min(values)) / mid if mid else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "repeats": len(self.runs),
            **{m: round(self.median(m), 3) for m in METRICS},
            **{f"{m}_spread": round(self.spread(m), 3) for m in METRICS},
            "runs": [{**asdict(r), "rps": round(r.rps, 1)} for r in self.runs],
        }


@dataclass
class Results:
    quick: bool
    connections: tuple[int, ...]
    main: dict[str, dict[int, Cell]] = field(default_factory=dict)
    body: dict[str, dict[int, Cell]] = field(default_factory=dict)  # setup → body bytes → cell
    data: dict[str, dict[int, Cell]] = field(default_factory=dict)  # setup → agents → cell
    session: dict[str, dict[int, Cell]] = field(default_factory=dict)  # setup → earlier calls in the task → cell
    # setup → connections (main) or body bytes (body_cpu) → per run: process → CPU ms per request
    cpu: dict[str, dict[int, list[dict[str, float]]]] = field(default_factory=dict)
    body_cpu: dict[str, dict[int, list[dict[str, float]]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)

    def cell(self, table: dict[str, dict[int, Cell]], setup: str, key: int) -> Cell:
        return table.setdefault(setup, {}).setdefault(key, Cell())

    def cpu_runs(
        self, table: dict[str, dict[int, list[dict[str, float]]]], setup: str, key: int
    ) -> list[dict[str, float]]:
        return table.setdefault(setup, {}).setdefault(key, [])


def cpu_medians(runs: list[dict[str, float]]) -> dict[str, float]:
    """Per process, the median CPU ms per request over the runs; "total" is their sum."""
    names = sorted({name for run in runs for name in run})
    out = {name: statistics.median(run[name] for run in runs if name in run) for name in names}
    if out:
        out["total"] = sum(out.values())
    return out


def added(table: dict[str, dict[int, Cell]], setup: str, key: int, metric: str, base: str = DIRECT) -> float | None:
    """Latency ``setup`` adds over Envoy-direct at the same point (ms)."""
    try:
        return table[setup][key].median(metric) - table[base][key].median(metric)
    except (KeyError, statistics.StatisticsError):
        return None


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return a / b


def comparisons(results: Results) -> dict[str, Any]:
    """Ratios vs Envoy-direct and vs opa-envoy-plugin, and the targets, for every point measured."""
    out: dict[str, Any] = {}
    for connections in results.connections:
        point: dict[str, Any] = {}
        table, c = results.main, connections
        for setup in [*OURS, PLUGIN]:
            if setup not in table:
                continue
            entry: dict[str, Any] = {}
            for metric in ("p50_ms", "p90_ms", "p99_ms"):
                entry[f"added_{metric}"] = _round(added(table, setup, c, metric))
                entry[f"vs_direct_{metric}"] = _round(
                    ratio(_median(table, setup, c, metric), _median(table, DIRECT, c, metric))
                )
            entry["rps_vs_direct"] = _round(ratio(_median(table, setup, c, "rps"), _median(table, DIRECT, c, "rps")))
            if setup in OURS and PLUGIN in table:
                for metric in ("p50_ms", "p90_ms", "p99_ms"):
                    entry[f"added_{metric}_vs_plugin"] = _round(
                        ratio(added(table, setup, c, metric), added(table, PLUGIN, c, metric))
                    )
                entry["rps_vs_plugin"] = _round(
                    ratio(_median(table, setup, c, "rps"), _median(table, PLUGIN, c, "rps"))
                )
            point[setup] = entry
        out[f"c{connections}"] = point
    out["targets"] = targets(results, out)
    return out


def targets(results: Results, comp: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    worst_c = max(results.connections)
    for setup in OURS:
        c1 = comp.get(f"c{min(results.connections)}", {}).get(setup, {})
        cn = comp.get(f"c{worst_c}", {}).get(setup, {})
        first_c = min(results.connections)
        added_vs_direct = ratio(
            added(results.main, setup, first_c, "p50_ms"), _median(results.main, DIRECT, first_c, "p50_ms")
        )
        rows.append(_target(f"{setup}: added p50 vs Envoy-direct p50 (c=1)", added_vs_direct, TARGET_P50_DIRECT, "≤"))
        rows.append(_target(f"{setup}: added p50 vs plugin (c=1)", c1.get("added_p50_ms_vs_plugin"), TARGET_P50, "≤"))
        rows.append(
            _target(
                f"{setup}: throughput vs Envoy-direct (c={worst_c})", cn.get("rps_vs_direct"), TARGET_RPS_DIRECT, "≥"
            )
        )
        rows.append(_target(f"{setup}: throughput vs plugin (c={worst_c})", cn.get("rps_vs_plugin"), TARGET_RPS, "≥"))
        sizes = sorted(results.body.get(setup, {}))
        if len(sizes) >= 2:
            first, last = sizes[0], sizes[-1]
            value = ratio(added(results.body, setup, last, "p50_ms"), added(results.body, setup, first, "p50_ms"))
            name = f"{setup}: added p50 {last // 1024} KiB vs {first // 1024} KiB body"
            rows.append(_target(name, value, TARGET_BODY, "≤"))
        counts = sorted(results.data.get(setup, {}))
        if len(counts) >= 2:
            first, last = counts[0], counts[-1]
            value = ratio(_median(results.data, setup, last, "p50_ms"), _median(results.data, setup, first, "p50_ms"))
            rows.append(_target(f"{setup}: p50 with {last} vs {first} agents in data", value, TARGET_FLAT, "≤"))
    http, grpc = OURS
    if http in results.main and grpc in results.main:
        first_c = min(results.connections)
        value = ratio(added(results.main, grpc, first_c, "p50_ms"), added(results.main, http, first_c, "p50_ms"))
        rows.append(_target("gRPC vs HTTP mode: added p50 (c=1)", value, TARGET_GRPC, "≤"))
        value = ratio(_median(results.main, grpc, worst_c, "rps"), _median(results.main, http, worst_c, "rps"))
        rows.append(_target(f"gRPC vs HTTP mode: throughput (c={worst_c})", value, TARGET_GRPC, "≥"))
    for setup in OURS:
        lengths = sorted(results.session.get(setup, {}))
        if len(lengths) >= 2:
            first, last = lengths[0], lengths[-1]
            value = ratio(added(results.session, setup, last, "p50_ms"), added(results.session, setup, first, "p50_ms"))
            rows.append(
                _target(
                    f"{setup}: added p50 after {last} vs {first} earlier calls in the task", value, TARGET_FLAT, "≤"
                )
            )
    return rows


def _target(name: str, value: float | None, limit: float, op: str) -> dict[str, Any]:
    met = None if value is None else (value <= limit if op == "≤" else value >= limit)
    miss = None
    if value is not None and not met:
        miss = f"missed by {abs(value / limit - 1) * 100:.0f} %"
    return {"target": f"{name} {op} {limit}", "value": _round(value), "limit": limit, "met": met, "note": miss}


def _median(table: dict[str, dict[int, Cell]], setup: str, key: int, metric: str) -> float | None:
    try:
        return table[setup][key].median(metric)
    except (KeyError, statistics.StatisticsError):
        return None


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def to_json(results: Results) -> dict[str, Any]:
    return {
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": _cpus(), "platform": platform.platform(), "python": platform.python_version()},
        "quick": results.quick,
        "versions": results.versions,
        "notes": results.notes,
        "main": {s: {f"c{c}": cell.summary() for c, cell in cells.items()} for s, cells in results.main.items()},
        "body_size": {s: {str(b): cell.summary() for b, cell in cells.items()} for s, cells in results.body.items()},
        "policy_data": {s: {str(n): cell.summary() for n, cell in cells.items()} for s, cells in results.data.items()},
        "session_history": {
            s: {str(n): cell.summary() for n, cell in cells.items()} for s, cells in results.session.items()
        },
        "cpu_ms_per_request": {
            s: {f"c{c}": _rounded(cpu_medians(runs)) for c, runs in by_c.items()} for s, by_c in results.cpu.items()
        },
        "body_size_cpu_ms_per_request": {
            s: {str(b): _rounded(cpu_medians(runs)) for b, runs in by_b.items()} for s, by_b in results.body_cpu.items()
        },
        "comparisons": comparisons(results),
    }


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in values.items()}


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


def _fmt(value: float | None, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:.3f}{suffix}" if abs(value) < 10 else f"{value:.1f}{suffix}"


def to_markdown(results: Results, document: dict[str, Any]) -> str:
    comp = document["comparisons"]
    lines = [
        f"# authz-sidecar benchmark ({'quick' if results.quick else 'full'} mode)",
        "",
        f"{document['generated']} · {document['machine']['cpus']} CPUs · {document['machine']['platform']}",
        "",
        "Closed loop (wrk, one thread, separate process), fixed mix: REST read, REST write under a task grant, "
        "MCP tools/call with a 2 KiB body, a deny. Latency in ms; median of the repeats, "
        "spread = (max - min) / median.",
        "",
    ]
    for connections in results.connections:
        lines += [
            f"## {connections} connection{'s' if connections > 1 else ''}",
            "",
            "| setup | p50 | p90 | p99 | req/s | spread p50 / p99 / req/s | added p50 | added p99 "
            "| added p50 vs plugin | added p99 vs plugin | req/s vs plugin |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for setup, cells in results.main.items():
            cell = cells.get(connections)
            if cell is None or not cell.runs:
                continue
            entry = comp.get(f"c{connections}", {}).get(setup, {})
            lines.append(
                f"| {setup} | {_fmt(cell.median('p50_ms'))} | {_fmt(cell.median('p90_ms'))} | "
                f"{_fmt(cell.median('p99_ms'))} | {cell.median('rps'):.0f} | "
                f"{cell.spread('p50_ms') * 100:.0f} % / {cell.spread('p99_ms') * 100:.0f} % / "
                f"{cell.spread('rps') * 100:.0f} % | {_fmt(entry.get('added_p50_ms'))} | "
                f"{_fmt(entry.get('added_p99_ms'))} | {_fmt(entry.get('added_p50_ms_vs_plugin'), 'x')} | "
                f"{_fmt(entry.get('added_p99_ms_vs_plugin'), 'x')} | {_fmt(entry.get('rps_vs_plugin'), 'x')} |"
            )
        lines.append("")
    if results.body:
        lines += _scaling_table("Body size (MCP tools/call only, 1 connection): p50 and added p50", results.body, "KiB")
    if results.data:
        lines += _scaling_table("Policy data size (the mix, 1 connection): p50", results.data, "agents")
    if results.session:
        lines += _scaling_table(
            "Session history (a read under a task, 1 connection): p50 and added p50", results.session, "calls"
        )
    lines += _cpu_table("CPU per request by process (ms, from /proc, median of the repeats)", results.cpu, "c=")
    lines += _cpu_table("CPU per request by process, body size (MCP tools/call, 1 connection)", results.body_cpu, "KiB")
    lines += [
        "## Targets",
        "",
        "| target | value | met |",
        "|---|---|---|",
    ]
    for row in comp["targets"]:
        met = "n/a" if row["met"] is None else ("yes" if row["met"] else "**no**")
        note = f" ({row['note']})" if row.get("note") else ""
        lines.append(f"| {row['target']} | {_fmt(row['value'])} | {met}{note} |")
    if results.notes:
        lines += ["", "## Notes", "", *[f"- {note}" for note in results.notes]]
    if results.versions:
        lines += ["", "## Versions", "", *[f"- {k}: {v}" for k, v in results.versions.items()]]
    return "\n".join(lines) + "\n"


def _cpu_table(title: str, table: dict[str, dict[int, list[dict[str, float]]]], unit: str) -> list[str]:
    if not table:
        return []
    lines = [f"## {title}", "", "| setup | point | processes | total |", "|---|---|---|---|"]
    for setup, by_key in table.items():
        for key, runs in sorted(by_key.items()):
            medians = cpu_medians(runs)
            if not medians:
                continue
            total = medians.pop("total")
            point = f"{key // 1024} KiB" if unit == "KiB" else f"c={key}"
            parts = ", ".join(f"{name} {value:.3f}" for name, value in sorted(medians.items()))
            lines.append(f"| {setup} | {point} | {parts} | {total:.3f} |")
    return [*lines, ""]


def _scaling_table(title: str, table: dict[str, dict[int, Cell]], unit: str) -> list[str]:
    keys = sorted({k for cells in table.values() for k in cells})
    label: Callable[[int], str] = (lambda k: f"{k // 1024} KiB") if unit == "KiB" else (lambda k: f"{k} {unit}")
    lines = [f"## {title}", "", "| setup | " + " | ".join(label(k) for k in keys) + " |", "|---|" + "---|" * len(keys)]
    for setup, cells in table.items():
        row = []
        for key in keys:
            cell = cells.get(key)
            if cell is None or not cell.runs:
                row.append("")
                continue
            extra = ""
            if unit in ("KiB", "calls") and setup != DIRECT:
                extra = f" (+{_fmt(added(table, setup, key, 'p50_ms'))})"
            row.append(f"{_fmt(cell.median('p50_ms'))}{extra}")
        lines.append(f"| {setup} | " + " | ".join(row) + " |")
    return [*lines, ""]


def plot(results: Results, path: Path) -> None:
    """Latency percentiles per setup (one panel per connection count) and the scaling runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = len(results.connections) + sum(1 for t in (results.body, results.data, results.session) if t)
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4.2), squeeze=False)
    setups = list(results.main)
    percentiles = ("p50_ms", "p90_ms", "p99_ms")
    width = 0.8 / max(1, len(setups))
    for ax, connections in zip(axes[0], results.connections, strict=False):
        for index, setup in enumerate(setups):
            cell = results.main[setup].get(connections)
            if cell is None or not cell.runs:
                continue
            values = [cell.median(p) for p in percentiles]
            errors = [
                [cell.median(p) - min(getattr(r, p) for r in cell.runs) for p in percentiles],
                [max(getattr(r, p) for r in cell.runs) - cell.median(p) for p in percentiles],
            ]
            xs = [i + index * width for i in range(len(percentiles))]
            ax.bar(xs, values, width, yerr=errors, capsize=3, label=setup, color=COLORS.get(setup))
        ax.set_xticks([i + width * (len(setups) - 1) / 2 for i in range(len(percentiles))], ["p50", "p90", "p99"])
        ax.set_ylabel("latency (ms)")
        ax.set_title(f"{connections} connection{'s' if connections > 1 else ''}")
        ax.legend(fontsize=7)
    next_panel = len(results.connections)
    scaling = (
        (results.body, "body size (p50)", "KiB"),
        (results.data, "agents in data (p50)", ""),
        (results.session, "earlier calls in the task (p50)", ""),
    )
    for table, title, unit in scaling:
        if not table:
            continue
        ax = axes[0][next_panel]
        next_panel += 1
        for setup, cells in table.items():
            keys = sorted(k for k, c in cells.items() if c.runs)
            xs = [k / 1024 if unit == "KiB" else k for k in keys]
            ax.plot(xs, [cells[k].median("p50_ms") for k in keys], marker="o", label=setup, color=COLORS.get(setup))
        ax.set_xscale("log")
        ax.set_xlabel("KiB" if unit == "KiB" else "agents")
        ax.set_ylabel("p50 (ms)")
        ax.set_title(title)
        ax.legend(fontsize=7)
    fig.suptitle("authz-sidecar benchmark: latency (median of repeats, bars = min-max)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(results: Results, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    document = to_json(results)
    paths = {"json": out / "report.json", "markdown": out / "report.md", "png": out / "latency.png"}
    paths["json"].write_text(json.dumps(document, indent=2))
    paths["markdown"].write_text(to_markdown(results, document))
    plot(results, paths["png"])
    return paths
