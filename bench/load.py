"""Closed-loop load from a separate process: wrk (Debian's package) with a generated Lua script.

wrk keeps ``connections`` requests in flight, each connection sending its next request as soon
as the previous answer arrived, cycling through the mix. The script's ``done`` hook prints the
latency percentiles (microseconds) and counts as one JSON line.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import requests

from bench.mix import BenchRequest

MARKER = "BENCH_JSON "

LUA_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"requests":%d,"duration_us":%d,"status_errors":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"timeouts":%d,"p50":%d,"p90":%d,"p99":%d,"mean":%.1f,"max":%d}\n',
    "MARKER", summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max))
end
"""


class LoadError(RuntimeError):
    pass


@dataclass(frozen=True)
class LoadResult:
    requests: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    status_errors: int  # answers >= 400: the denies of the mix
    socket_errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def wrk_path() -> str:
    found = shutil.which("wrk")
    if not found:
        raise LoadError("wrk is not installed: ./taskw bench installs Debian's wrk package (apt-get install wrk)")
    return found


def _lua_string(data: bytes) -> str:
    text = data.decode("utf-8")
    level = "=" * 4
    if f"]{level}]" in text:
        raise ValueError("request body contains the Lua long-string terminator")
    return f"[{level}[{text}]{level}]" if text else "nil"


def lua_script(mix: list[BenchRequest]) -> str:
    """A wrk script that sends the mix in order, round robin, on every connection of the thread."""
    lines = ["local reqs = {}", "init = function(args)"]
    for index, item in enumerate(mix, start=1):
        headers = ", ".join(f"[{json.dumps(k)}] = {json.dumps(v)}" for k, v in item.headers.items())
        lines.append(
            f"  reqs[{index}] = wrk.format({json.dumps(item.method)}, {json.dumps(item.path)}, "
            f"{{{headers}}}, {_lua_string(item.body)})"
        )
    lines += [
        "end",
        "local i = 0",
        "request = function()",
        "  i = i % #reqs + 1",
        "  return reqs[i]",
        "end",
        LUA_DONE.replace('"MARKER"', json.dumps(MARKER)),
    ]
    return "\n".join(lines)


def run_wrk(url: str, mix: list[BenchRequest], connections: int, seconds: float, workdir: Path) -> LoadResult:
    """One closed-loop run; wrk runs as its own process with one thread (the machine has 2 cores)."""
    script = workdir / f"mix-{abs(hash(tuple(r.name for r in mix)))}.lua"
    script.write_text(lua_script(mix))
    argv = [
        wrk_path(),
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "5s",
        "-s",
        str(script),
        url,
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=False)
    line = next((x for x in done.stdout.splitlines() if x.startswith(MARKER)), None)
    if done.returncode != 0 or line is None:
        raise LoadError(f"wrk failed ({done.returncode}): {done.stdout[-500:]} {done.stderr[-500:]}")
    raw = json.loads(line[len(MARKER) :])
    return LoadResult(
        requests=raw["requests"],
        seconds=raw["duration_us"] / 1e6,
        p50_ms=raw["p50"] / 1000,
        p90_ms=raw["p90"] / 1000,
        p99_ms=raw["p99"] / 1000,
        mean_ms=raw["mean"] / 1000,
        status_errors=raw["status_errors"],
        socket_errors=raw["connect_errors"] + raw["read_errors"] + raw["write_errors"] + raw["timeouts"],
    )


def preflight(url: str, mix: list[BenchRequest], authz: bool) -> list[str]:
    """Send each request once; the problems found (an empty list when every status is as expected)."""
    problems = []
    for item in mix:
        response = requests.request(item.method, url + item.path, headers=item.headers, data=item.body, timeout=10)
        if response.status_code != item.expected(authz):
            problems.append(
                f"{item.name}: expected {item.expected(authz)}, got {response.status_code} {response.text[:200]}"
            )
    return problems
