"""``./taskw bench-authzen``: AuthZEN evaluations per second, one batch of N against N single calls.

Starts the local stack (shipped bundle, real OPA and sidecar) on free ports, then, alternating
each round, asks N questions (routes and MCP tools for the demo agents, allowed and denied) as N
``POST /access/v1/evaluation`` calls one after another on one keep-alive connection, and as one
``POST /access/v1/evaluations`` (``execute_all``). Both must give the same decisions. Prints the
median evaluations per second of each and their ratio; bench/results/authzen.json keeps them.
Same machine, same run: the ratio is the figure to read, not the absolute rates.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from devstack.stack import AUTHZEN_PEP, Ports, Stack

RESULTS = Path(__file__).parent / "results"
AGENTS = ("spiffe://demo.local/agent/reader", "spiffe://demo.local/agent/writer")
ROUTES = (
    ("GET", "/api/docs/handbook"),
    ("GET", "/api/records/7"),
    ("POST", "/api/tickets"),
    ("DELETE", "/api/records/9"),
)
TOOLS = ("search_docs", "get_record", "create_ticket", "send_email")


def questions(size: int) -> list[dict[str, Any]]:
    """``size`` evaluations cycling through agents, routes and tools."""
    kinds: list[dict[str, Any]] = []
    for agent in AGENTS:
        subject = {"type": "agent", "id": agent}
        kinds += [
            {"subject": subject, "action": {"name": m}, "resource": {"type": "route", "id": p}} for m, p in ROUTES
        ]
        kinds += [
            {"subject": subject, "action": {"name": t}, "resource": {"type": "mcp_server", "id": "/mcp"}} for t in TOOLS
        ]
    return [kinds[i % len(kinds)] for i in range(size)]


def singles(session: requests.Session, url: str, asked: list[dict[str, Any]]) -> tuple[float, list[bool]]:
    started = time.perf_counter()
    decisions = []
    for question in asked:
        response = session.post(f"{url}/access/v1/evaluation", json=question, timeout=10)
        response.raise_for_status()
        decisions.append(response.json()["decision"])
    return time.perf_counter() - started, decisions


def batch(session: requests.Session, url: str, asked: list[dict[str, Any]]) -> tuple[float, list[bool]]:
    started = time.perf_counter()
    response = session.post(f"{url}/access/v1/evaluations", json={"evaluations": asked}, timeout=60)
    response.raise_for_status()
    decisions = [e["decision"] for e in response.json()["evaluations"]]
    return time.perf_counter() - started, decisions


def measure(stack: Stack, size: int, rounds: int) -> dict[str, Any]:
    asked = questions(size)
    session = requests.Session()
    session.headers["authorization"] = "Bearer " + stack.trust_domain.mint_jwt(AUTHZEN_PEP, ttl=3600)
    url = stack.sidecar_url
    _, expected = singles(session, url, asked)  # warm-up: connections, OPA's caches
    single_rates, batch_rates = [], []
    for _ in range(rounds):
        seconds, decisions = singles(session, url, asked)
        assert decisions == expected, "single evaluations changed their answers"
        single_rates.append(size / seconds)
        seconds, decisions = batch(session, url, asked)
        assert decisions == expected, "the batch answered differently from the single evaluations"
        batch_rates.append(size / seconds)
    single, batched = statistics.median(single_rates), statistics.median(batch_rates)
    return {
        "evaluations": size,
        "rounds": rounds,
        "permitted": sum(expected),
        "single_evaluations_per_second": round(single, 1),
        "batch_evaluations_per_second": round(batched, 1),
        "ratio_batch_to_single": round(batched / single, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench-authzen", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=100, help="evaluations per batch (and single calls per round)")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-authzen-") as workdir, Stack(Path(workdir), Ports.free()) as stack:
        result = measure(stack, args.size, args.rounds)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "authzen.json").write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{args.size} single evaluations: {result['single_evaluations_per_second']:.0f} evaluations/s\n"
        f"one batch of {args.size}:        {result['batch_evaluations_per_second']:.0f} evaluations/s\n"
        f"ratio batch / single:    {result['ratio_batch_to_single']:.2f}x  "
        f"(median of {args.rounds} rounds; {result['permitted']} of {args.size} permitted; bench/results/authzen.json)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
