"""A decision-log receiver: OPA's decision-log service API, written to a JSON-lines file.

OPA POSTs batches to ``<service url>/logs`` as a JSON array of events, gzip-compressed
(``Content-Encoding: gzip``), and retries a batch until it gets a 2xx. Each event becomes one
line: the already-masked event exactly as OPA sent it, so a reviewer reads what OPA decided
(``decision_id``, ``path``, ``input``, ``result``, ``bundles`` revisions, ``erased`` pointers).
``authz-decision-log-receiver``; with ``--out /dev/stdout`` the cluster's log pipeline ships them.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import io
import json
import logging
import zlib
from pathlib import Path
from typing import IO

from aiohttp import web

from sidecar.errors import Kind, SidecarError
from sidecar.logs import setup_logging
from sidecar.services.service_token import read_token, require_bearer
from sidecar.signals import until_signalled

log = logging.getLogger(__name__)

MAX_BATCH_BYTES = 64 * 1024 * 1024  # decompressed; OPA's default upload limit is 32 KiB compressed
SINK = web.AppKey("sink", IO[str])


class BatchError(SidecarError, ValueError):
    """An upload that is not a batch of decision-log events (answered 400)."""

    KIND = Kind.INVALID
    CODE = "bad_batch"


def decode_batch(body: bytes, encoding: str) -> list[dict[str, object]]:
    """The events of one upload; anything but a JSON array of objects is an error."""
    if encoding == "gzip":
        try:
            body = _gunzip(body)
        except (OSError, EOFError, zlib.error) as exc:
            raise BatchError("body is not valid gzip") from exc
    elif encoding not in ("", "identity"):
        raise BatchError(f"unsupported content-encoding {encoding!r}")
    try:
        events = json.loads(body)
    except ValueError as exc:
        raise BatchError("body is not JSON") from exc
    if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
        raise BatchError("body is not a JSON array of events")
    return events


def _gunzip(body: bytes) -> bytes:
    with gzip.GzipFile(fileobj=io.BytesIO(body)) as stream:
        data = stream.read(MAX_BATCH_BYTES + 1)
    if len(data) > MAX_BATCH_BYTES:
        raise BatchError("decompressed batch is too large")
    return data


async def receive(request: web.Request) -> web.Response:
    try:
        events = decode_batch(await request.read(), request.headers.get("content-encoding", "").lower())
    except BatchError as exc:
        log.warning("rejected a decision-log upload: %s", exc)
        return web.json_response({"error": str(exc)}, status=400)
    sink = request.app[SINK]
    sink.write("".join(json.dumps(event, separators=(",", ":"), sort_keys=True) + "\n" for event in events))
    sink.flush()
    return web.json_response({"received": len(events)})


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def make_app(sink: IO[str], token: str | None = None) -> web.Application:
    """``token``: OPA's bearer token; without it anyone may post logs (tests only)."""
    app = web.Application(client_max_size=MAX_BATCH_BYTES, middlewares=[require_bearer(token)])
    app[SINK] = sink
    app.router.add_post("/logs", receive)
    app.router.add_get("/healthz", healthz)
    return app


def run_receiver(out: Path, host: str, port: int, token_file: Path | None = None) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    token = read_token(token_file)
    with out.open("a", encoding="utf-8") as sink:
        asyncio.run(_serve(make_app(sink, token), host, port))


async def _serve(app: web.Application, host: str, port: int) -> None:
    # OPA gzips its uploads: decompress in decode_batch (bounded), not in aiohttp's parser.
    runner = web.AppRunner(app, access_log=None, auto_decompress=False)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    try:
        await until_signalled()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    """``authz-decision-log-receiver``: append OPA's decision logs to ``--out`` until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(
        prog="authz-decision-log-receiver", description="receive OPA decision logs (POST /logs) into a JSON-lines file"
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8183)
    parser.add_argument("--token-file", type=Path, help="require OPA's bearer token from this file (all but /healthz)")
    args = parser.parse_args(argv)
    setup_logging("INFO")
    run_receiver(args.out, args.host, args.port, args.token_file)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
