"""What the MCP response path costs: the same MCP mix through Envoy with and without it.

Two local stacks, identical but for the response path (``Stack(response_path=False)``: Envoy
without its ext_proc filter, the request path alone). One client, one keep-alive connection,
requests in turn, so the difference per request is the response path's added latency
(ext_proc round trip, buffering, one policy query, pinning, the body rewritten).

Mix (as readers): ``tools/list`` (5 tools listed, 3 filtered out, definitions pinned),
``tools/call get_record`` (output redacted), ``tools/call search_docs`` (judged, unchanged).

    python -m bench.mcp_response [--requests N]      # ./taskw bench-mcp; bench/results/mcp-response.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import requests

from devstack.agent_client import agent_headers, jsonrpc
from devstack.stack import Ports, Stack

# Readers by pattern (agent/ops/*): a fresh one every CALLS_PER_AGENT calls keeps each under the
# shipped policy's 120 calls a minute per agent.
AGENT = "spiffe://demo.local/agent/ops/bench-{}"
CALLS_PER_AGENT = 99
MIX = [
    ("tools/list", None, None),
    ("tools/call", "get_record", {"id": "42"}),
    ("tools/call", "search_docs", {"q": "vpn"}),
]
RESULTS = Path(__file__).resolve().parent / "results"


def measure(stack: Stack, rounds: int) -> dict[str, dict[str, float]]:
    """Latency (ms) of each request of the mix, ``rounds`` times, after a warm-up round."""
    tokens = [stack.trust_domain.mint_jwt(AGENT.format(n), ttl=3600) for n in range(rounds * 3 // CALLS_PER_AGENT + 2)]
    session, calls = requests.Session(), 0
    url = stack.egress_url + "/mcp"
    timings: dict[str, list[float]] = {name: [] for name in (_name(m, t) for m, t, _ in MIX)}
    for round_ in range(rounds + 1):
        for method, tool, arguments in MIX:
            mcp_headers, body = jsonrpc(method, tool, arguments, rpc_id=round_)
            headers = agent_headers(
                tokens[calls // CALLS_PER_AGENT], extra={"content-type": "application/json", **mcp_headers}
            )
            started = time.perf_counter()
            response = session.post(url, headers=headers, data=json.dumps(body), timeout=10)
            elapsed = (time.perf_counter() - started) * 1000
            calls += 1
            if response.status_code != 200:
                raise SystemExit(f"{method} {tool}: {response.status_code} {response.text[:200]}")
            if round_:
                timings[_name(method, tool)].append(elapsed)
    return {name: _summary(values) for name, values in timings.items()}


def _name(method: str, tool: str | None) -> str:
    return f"{method} {tool}" if tool else method


def _summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "mean_ms": round(statistics.fmean(ordered), 3),
        "p50_ms": round(ordered[len(ordered) // 2], 3),
        "p95_ms": round(ordered[int(len(ordered) * 0.95) - 1], 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="rounds of the mix per setup")
    args = parser.parse_args(argv)
    results: dict[str, dict[str, dict[str, float]]] = {}
    for name, on in (("request path only", False), ("request + response path", True)):
        with Stack(Path(tempfile.mkdtemp(prefix="bench-mcp-")), Ports.free(), response_path=on) as stack:
            results[name] = measure(stack, args.requests)
    base, full = results["request path only"], results["request + response path"]
    print(f"{'request':<24} {'p50 without':>12} {'p50 with':>10} {'added p50':>10} {'added mean':>11}")
    for request in base:
        added_p50 = full[request]["p50_ms"] - base[request]["p50_ms"]
        added_mean = full[request]["mean_ms"] - base[request]["mean_ms"]
        print(
            f"{request:<24} {base[request]['p50_ms']:>10.2f}ms {full[request]['p50_ms']:>8.2f}ms"
            f" {added_p50:>8.2f}ms {added_mean:>9.2f}ms"
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "mcp-response.json").write_text(json.dumps({"rounds": args.requests, **results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
