"""``python -m bench.transport``: the sidecar's CPU per check in its two ext_authz transports.

No Envoy, no OPA: a server process runs the sidecar's own check listener (HTTP mode: the aiohttp
app of :mod:`sidecar.server`; gRPC mode: :func:`sidecar.grpc_server.start_grpc_server`) on
loopback, on uvloop as the sidecar does, in front of the production pipeline with a
:class:`~sidecar.opa_fake.FakeOpa` that allows everything (``--pipeline real``) or of a pipeline
that answers one fixed allow (``--pipeline null``: the transport's cost alone). This process
plays Envoy: the same requests, as Envoy's HTTP ext_authz client and its gRPC client send them
(the gRPC call with the per-deployment secret and ``traceparent`` as metadata, a 2 s deadline),
from ``--connections`` concurrent callers (HTTP: one keep-alive connection each; gRPC: one HTTP/2
connection, as each Envoy worker has to the cluster).

Reported per mode: the server process's CPU time (utime + stime from /proc, all threads) per
check, and the callers' p50 latency. Rounds are interleaved (each round measures every mode, in
an order turned around every round) so drift hits all modes alike; medians are reported. Labels
ending in "+" (``--modes grpc,grpc+``) get ``--env``/``--grpc-option``, so a setting is measured
against the same mode without it in one run. Loopback only, bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.cpu import tree_seconds

SECRET = "bench-secret-0123456789abcdef"
SECRET_HEADER = "x-authz-xfcc-secret"
READER = "spiffe://demo.local/agent/reader"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
PREFIX = "/authz"
OPTIONS_ENV = "BENCH_GRPC_SERVER_OPTIONS"


@dataclass(frozen=True)
class Req:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes = b""


def requests() -> list[Req]:
    """A REST read and a 2 KiB MCP tools/call, as an mTLS agent sends them (XFCC identity)."""
    from bench.mix import mcp_body

    common = {
        "x-forwarded-client-cert": f"By=spiffe://demo.local/ns/default/sa/tools;URI={READER}",
        "x-forwarded-proto": "http",
        "x-request-id": "0b5c4f0e-3f3c-4d87-9a77-2d7c2b0c1f11",
    }
    body = mcp_body(2048)
    mcp = {"content-type": "application/json", "mcp-method": "tools/call", "mcp-name": "search_docs"}
    return [
        Req("GET", "/api/docs/handbook", dict(common)),
        Req("POST", "/mcp", {**common, **mcp, "content-length": str(len(body))}, body),
    ]


# -- the server process ------------------------------------------------------------------------


def _pipeline(kind: str) -> Any:
    from sidecar.config import validate_config
    from sidecar.identity import IdentityResolver
    from sidecar.opa_fake import FakeOpa, always
    from sidecar.outcome import Decision
    from sidecar.pipeline import Pipeline, Services, build_pipeline
    from sidecar.request import CheckRequest

    config = validate_config({"log": {"decisions": False}})
    if kind == "null":
        fixed = Decision("allow", 200, "d-1", ("ok",), upstream_headers=(("x-authz-decision-id", "d-1"),))

        class Fixed(Pipeline):
            async def check(self, request: CheckRequest) -> Decision:
                return replace(fixed)

        return Fixed(())
    resolver = IdentityResolver(config.identity, None, SECRET)
    opa = FakeOpa(always({"verdict": "allow", "reasons": ["bench"]}))
    return build_pipeline(config, Services(resolver, opa))


async def _serve(mode: str, port: int, kind: str) -> None:
    from aiohttp import web

    from sidecar import server
    from sidecar.config import TracingConfig
    from sidecar.grpc_server import start_grpc_server
    from sidecar.heap import settle_heap
    from sidecar.tracing import Tracing

    pipeline = _pipeline(kind)
    tracing = Tracing(TracingConfig())
    extra = json.loads(os.environ.get(OPTIONS_ENV, "[]"))
    if extra:  # --grpc-option: added to (and overriding) the sidecar's own server options
        import grpc

        make: Any = grpc.aio.server

        def with_options(**kwargs: Any) -> Any:
            merged = dict(kwargs.pop("options", None) or ())
            merged.update(extra)
            return make(options=list(merged.items()), **kwargs)

        setattr(grpc.aio, "server", with_options)  # noqa: B010 - a bench-only patch of the factory
    if mode == "grpc":
        grpc_server = await start_grpc_server(pipeline, f"127.0.0.1:{port}", SECRET_HEADER, tracing)
    else:
        app = web.Application(client_max_size=1_048_576 + 65_536, middlewares=[tracing.middleware()])
        app[server.PIPELINE] = pipeline
        app[server.PREFIX] = PREFIX
        app.router.add_route("*", PREFIX + "/{tail:.*}", server.check_handler)
        runner = web.AppRunner(app, access_log=None, max_line_size=65_536, max_field_size=65_536)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
    settle_heap()  # as sidecar.server.serve does once it listens
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes stdin
    if mode == "grpc":
        await grpc_server.stop(None)
    else:
        await runner.cleanup()


def serve_main(mode: str, port: int, kind: str) -> None:
    from sidecar.server import event_loop_factory

    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(_serve(mode, port, kind))


# -- the caller (Envoy's part) -----------------------------------------------------------------


def _grpc_messages(reqs: Sequence[Req]) -> list[Any]:
    from envoy.config.core.v3 import address_pb2
    from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2
    from google.protobuf import timestamp_pb2

    out = []
    for req in reqs:
        headers = {":authority": "127.0.0.1:10000", ":method": req.method, ":path": req.path, **req.headers}
        http = attribute_context_pb2.AttributeContext.HttpRequest(
            id="12345678901234567890",
            method=req.method,
            headers=headers,
            path=req.path,
            host="127.0.0.1:10000",
            scheme="http",
            protocol="HTTP/1.1",
            size=len(req.body),
            raw_body=req.body,
        )
        peer = attribute_context_pb2.AttributeContext.Peer(
            address=address_pb2.Address(socket_address=address_pb2.SocketAddress(address="127.0.0.1", port_value=51234))
        )
        own = attribute_context_pb2.AttributeContext.Peer(
            address=address_pb2.Address(socket_address=address_pb2.SocketAddress(address="127.0.0.1", port_value=10000))
        )
        attributes = attribute_context_pb2.AttributeContext(
            source=peer,
            destination=own,
            request=attribute_context_pb2.AttributeContext.Request(
                time=timestamp_pb2.Timestamp(seconds=int(time.time())), http=http
            ),
        )
        out.append(external_auth_pb2.CheckRequest(attributes=attributes))
    return out


async def _drive_grpc(port: int, reqs: Sequence[Req], connections: int, calls: int) -> list[float]:
    import grpc
    from envoy.service.auth.v3 import external_auth_pb2_grpc

    messages = _grpc_messages(reqs)
    metadata = ((SECRET_HEADER, SECRET), ("traceparent", TRACEPARENT), ("x-envoy-internal", "true"))
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)

        async def caller(offset: int) -> None:
            for i in range(calls // connections):
                started = time.perf_counter()
                answer = await stub.Check(messages[(i + offset) % len(messages)], metadata=metadata, timeout=2.0)
                latencies.append(time.perf_counter() - started)
                if answer.status.code != 0:
                    raise RuntimeError(f"gRPC check answered {answer.status}")

        await asyncio.gather(*(caller(n) for n in range(connections)))
    return latencies


async def _drive_http(port: int, reqs: Sequence[Req], connections: int, calls: int) -> list[float]:
    import aiohttp

    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    extra = {SECRET_HEADER: SECRET, "traceparent": TRACEPARENT, "host": "127.0.0.1:10000"}
    async with aiohttp.ClientSession(connector=connector) as session:

        async def caller(offset: int) -> None:
            for i in range(calls // connections):
                req = reqs[(i + offset) % len(reqs)]
                started = time.perf_counter()
                url = f"http://127.0.0.1:{port}{PREFIX}{req.path}"
                async with session.request(req.method, url, headers={**req.headers, **extra}, data=req.body) as r:
                    await r.read()
                    status = r.status
                latencies.append(time.perf_counter() - started)
                if status != 200:
                    raise RuntimeError(f"HTTP check answered {status}")

        await asyncio.gather(*(caller(n) for n in range(connections)))
    return latencies


@dataclass
class Server:
    mode: str
    port: int
    process: subprocess.Popen[str]

    @classmethod
    def start(cls, mode: str, kind: str, env: dict[str, str]) -> Server:
        from devstack.stack import Ports

        port = Ports.free().sidecar_grpc
        command = [sys.executable, "-m", "bench.transport", "--serve", mode, "--port", str(port), "--pipeline", kind]
        process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, **env}
        )
        assert process.stdout is not None
        if process.stdout.readline().strip() != "ready":
            raise RuntimeError(f"{mode} server did not start")
        return cls(mode, port, process)

    def cpu(self) -> float:
        seconds = tree_seconds(self.process.pid)
        if seconds is None:
            raise RuntimeError(f"{self.mode} server is gone")
        return seconds

    def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


async def measure(server: Server, connections: int, calls: int) -> tuple[float, float]:
    """(server CPU ms per check, p50 ms) of ``calls`` checks."""
    drive = _drive_grpc if server.mode == "grpc" else _drive_http
    reqs = requests()
    before = server.cpu()
    latencies = await drive(server.port, reqs, connections, calls)
    after = server.cpu()
    return (after - before) * 1000 / len(latencies), statistics.median(latencies) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.transport", description=__doc__)
    parser.add_argument("--serve", choices=["http", "grpc"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--modes", default="http,grpc", help="comma-separated: http, grpc, and http+/grpc+ with --env/--grpc-option"
    )
    parser.add_argument("--pipeline", choices=["real", "null"], default="real")
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--calls", type=int, default=4000, help="checks per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server processes")
    parser.add_argument(
        "--grpc-option", action="append", default=[], help="NAME=INT|STR: an extra grpc.aio server option"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.serve:
        serve_main(args.serve, args.port, args.pipeline)
        return 0
    env = dict(item.split("=", 1) for item in args.env)
    if args.grpc_option:
        options = [
            (name, int(v) if v.lstrip("-").isdigit() else v)
            for name, _, v in (o.partition("=") for o in args.grpc_option)
        ]
        env[OPTIONS_ENV] = json.dumps(options)
    modes = args.modes.split(",")
    # Settings go to the labels ending in "+" ("grpc+": gRPC mode with them, beside plain "grpc"), or
    # to every server when no label has one.
    tried = [label for label in modes if label.endswith("+")] or modes
    servers = {label: Server.start(label.rstrip("+"), args.pipeline, env if label in tried else {}) for label in modes}
    results: dict[str, dict[int, list[tuple[float, float]]]] = {m: {c: [] for c in args.connections} for m in modes}
    try:
        for server in servers.values():  # warm-up
            asyncio.run(measure(server, 4, 400))
        for round_ in range(args.rounds):
            for connections in args.connections:
                order = modes if round_ % 2 == 0 else modes[::-1]
                for mode in order:
                    results[mode][connections].append(asyncio.run(measure(servers[mode], connections, args.calls)))
    finally:
        for server in servers.values():
            server.stop()
    summary: dict[str, Any] = {"pipeline": args.pipeline, "env": env, "calls": args.calls, "modes": {}}
    print(f"pipeline={args.pipeline} calls={args.calls} rounds={args.rounds} env={env or '-'}")
    print(f"{'mode':6} {'conns':>5} {'cpu ms/check':>13} {'(min-max)':>13} {'p50 ms':>8}")
    for mode in modes:
        for connections in args.connections:
            cpu = [r[0] for r in results[mode][connections]]
            p50 = [r[1] for r in results[mode][connections]]
            summary["modes"].setdefault(mode, {})[connections] = {"cpu_ms": cpu, "p50_ms": p50}
            print(
                f"{mode:6} {connections:5} {statistics.median(cpu):13.3f} "
                f"{f'{min(cpu):.3f}-{max(cpu):.3f}':>13} {statistics.median(p50):8.3f}"
            )
    for label in modes:
        for base in ("http", "grpc"):
            if label == base or base not in modes or (base == "grpc" and label == "http"):
                continue
            for connections in args.connections:
                ratio = statistics.median(r[0] for r in results[label][connections]) / statistics.median(
                    r[0] for r in results[base][connections]
                )
                print(f"{label} / {base} CPU per check, c={connections}: {ratio:.2f}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
