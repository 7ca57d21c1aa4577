"""aiohttp apps: the ext_authz check endpoint and the admin endpoints.

Routes hand a framework-free :class:`CheckRequest` to the pipeline; nothing else in the
package knows aiohttp's request type.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sidecar.config import Config
from sidecar.identity import IdentityResolver
from sidecar.identity.bundles import (
    BundleSource,
    FileBundleSource,
    WorkloadApiBundleSource,
    workload_api_socket,
)
from sidecar.identity.jwt_svid import JwtSvidVerifier
from sidecar.opa import OpaClient
from sidecar.pipeline import Pipeline
from sidecar.request import CheckRequest

log = logging.getLogger(__name__)

PIPELINE = web.AppKey("pipeline", Pipeline)
OPA = web.AppKey("opa", OpaClient)
PREFIX = web.AppKey("prefix", str)


async def check_handler(request: web.Request) -> web.StreamResponse:
    prefix = request.app[PREFIX]
    raw_path = request.raw_path
    original = raw_path[len(prefix) :] if raw_path.startswith(prefix) else raw_path
    if not original.startswith("/"):
        original = "/" + original
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        key = name.lower()
        headers[key] = f"{headers[key]},{value}" if key in headers else value
    check = CheckRequest(method=request.method, path=original, headers=headers, body=await request.read())
    answer = await request.app[PIPELINE].check(check)
    response = web.Response(status=answer.status, body=answer.body)
    for name, value in answer.headers:
        if name == "content-type":
            response.content_type = value
        else:
            response.headers.add(name, value)
    return response


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    ready, detail = await request.app[OPA].health()
    return web.json_response({"ready": ready, "opa": detail}, status=200 if ready else 503)


async def metrics_handler(_: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"content-type": CONTENT_TYPE_LATEST})


def read_secret(path: Path | None) -> str | None:
    if path is None:
        return None
    secret = path.read_text(encoding="utf-8").strip()
    if len(secret) < 16:
        raise ValueError(f"XFCC secret in {path} is shorter than 16 characters")
    return secret


def make_bundle_source(config: Config) -> BundleSource | None:
    jwt_config = config.identity.jwt_svid
    if jwt_config.bundle_files:
        return FileBundleSource(jwt_config.bundle_files)
    socket = workload_api_socket(jwt_config.workload_api_socket)
    if socket:
        return WorkloadApiBundleSource(socket)
    return None


def build_pipeline(config: Config, opa: OpaClient, bundles: BundleSource | None) -> Pipeline:
    identity = config.identity
    verifier = None
    if bundles is not None:
        verifier = JwtSvidVerifier(
            bundles,
            audiences=identity.jwt_svid.audiences,
            algorithms=identity.jwt_svid.algorithms,
            trust_domains=identity.trust_domains,
            max_token_bytes=identity.jwt_svid.max_token_bytes,
        )
    resolver = IdentityResolver(identity, verifier, read_secret(identity.xfcc.trusted_secret_file))
    return Pipeline(
        resolver,
        opa,
        allow_partial_body=config.request_body.allow_partial,
        strip_jwt_svid=identity.jwt_svid.strip_from_upstream,
        hidden_headers=frozenset({identity.xfcc.secret_header}),
        log_decisions=config.log.decisions,
    )


def build_apps(config: Config, pipeline: Pipeline, opa: OpaClient) -> tuple[web.Application, web.Application]:
    authz = web.Application(client_max_size=config.request_body.max_bytes + 65_536)
    authz[PIPELINE] = pipeline
    authz[PREFIX] = config.listen.path_prefix
    authz.router.add_route("*", config.listen.path_prefix + "/{tail:.*}", check_handler)
    if config.listen.path_prefix:
        authz.router.add_route("*", config.listen.path_prefix, check_handler)

    admin = web.Application()
    admin[OPA] = opa
    admin.router.add_get("/healthz", healthz)
    admin.router.add_get("/readyz", readyz)
    admin.router.add_get("/metrics", metrics_handler)
    return authz, admin


async def serve(config: Config) -> None:
    """Run both listeners until SIGINT/SIGTERM."""
    opa = OpaClient(config.opa.url, config.opa.decision_path, config.opa.timeout_ms, config.opa.max_connections)
    await opa.start()
    bundles = await asyncio.to_thread(make_bundle_source, config)
    pipeline = build_pipeline(config, opa, bundles)
    authz, admin = build_apps(config, pipeline, opa)
    # Envoy accepts up to 60 KiB of headers; read them all so oversize tokens get our 401, not a 400.
    runners = [
        web.AppRunner(authz, access_log=None, max_line_size=65_536, max_field_size=65_536),
        web.AppRunner(admin, access_log=None),
    ]
    for runner in runners:
        await runner.setup()
    await web.TCPSite(runners[0], config.listen.host, config.listen.port).start()
    await web.TCPSite(runners[1], config.admin.host, config.admin.port).start()
    log.info(
        "authz-sidecar listening",
        extra={
            "check": f"{config.listen.host}:{config.listen.port}{config.listen.path_prefix}",
            "admin": f"{config.admin.host}:{config.admin.port}",
            "opa": f"{config.opa.url}/v1/data/{config.opa.decision_path}",
        },
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for runner in runners:
            await runner.cleanup()
        await opa.close()
        if bundles is not None:
            bundles.close()
