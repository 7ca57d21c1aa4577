"""aiohttp apps: the ext_authz check endpoint and the admin endpoints.

Routes hand a framework-free :class:`CheckRequest` to the pipeline; nothing else in the
package knows aiohttp's request type.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sidecar import agent_api, status_metrics, wire_http
from sidecar.approvals import ApprovalService
from sidecar.authzen.evaluate import Evaluator
from sidecar.authzen.routes import add_authzen_routes
from sidecar.config import Config, TracingConfig
from sidecar.credentials import CredentialMinter
from sidecar.heap import settle_heap
from sidecar.identity import IdentityResolver
from sidecar.identity.approvers import ApproverAuthenticator, OidcVerifier
from sidecar.identity.bundles import (
    BundleSource,
    FileBundleSource,
    WorkloadApiBundleSource,
    workload_api_socket,
)
from sidecar.identity.jwt_svid import JwtSvidVerifier
from sidecar.keys import KeySet
from sidecar.mcp_response.pending import PendingResponses
from sidecar.mcp_response.serve import make_pending, start_response_path
from sidecar.opa import HttpOpaClient, OpaClient
from sidecar.pipeline import Pipeline, Services, build_pipeline
from sidecar.refusals import RefusalReporter
from sidecar.request import CheckRequest
from sidecar.sessions import SessionTracker
from sidecar.shadow import Shadow, make_shadow
from sidecar.signals import announce_drain, until_signalled
from sidecar.sockets import restrict_socket
from sidecar.state import Store
from sidecar.state.instrumented import InstrumentedStore
from sidecar.state.memory import MemoryStore
from sidecar.tasks import TaskService
from sidecar.tracing import Tracing
from sidecar.webhook import Webhook

log = logging.getLogger(__name__)

PIPELINE = web.AppKey("pipeline", Pipeline)
OPA = web.AppKey("opa", OpaClient)
PREFIX = web.AppKey("prefix", str)
JWT_BUNDLES: web.AppKey[BundleSource] = web.AppKey("jwt_bundles")
DRAINING = web.AppKey("draining", asyncio.Event)  # set on SIGTERM: /readyz fails from then on
APPROVAL_STORE: web.AppKey[Store] = web.AppKey("approval_store")  # pending approvals at scrape time


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
    answer = wire_http.encode(await request.app[PIPELINE].check(check))
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
    if request.app[DRAINING].is_set():  # stopping: take this replica out before its listeners close
        return web.json_response({"ready": False, "draining": True}, status=503)
    opa = request.app[OPA]
    ready, detail = await opa.health()
    # Which policy is deciding: the active revision of each bundle (None when OPA cannot say).
    revisions = await opa.bundle_revisions()
    body: dict[str, object] = {"ready": ready, "opa": detail, "bundles": revisions}
    jwt_bundles = request.app.get(JWT_BUNDLES)
    if jwt_bundles is not None:  # e.g. the Workload API has not delivered JWT bundles yet
        jwt_ready = jwt_bundles.ready()
        body["jwt_bundles"] = "ok" if jwt_ready else "no JWT bundles from the SPIFFE Workload API yet"
        body["ready"] = ready = ready and jwt_ready
    return web.json_response(body, status=200 if ready else 503)


async def metrics_handler(request: web.Request) -> web.Response:
    await status_metrics.refresh(request.app[OPA], request.app.get(APPROVAL_STORE))
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


def make_store(config: Config) -> Store:
    """The configured backend, timed and its failures counted (``authz_state_store_*``)."""
    if config.state.backend == "redis":
        # Imported only when chosen: redis-py costs about 6 MB of RSS a memory-store sidecar never uses.
        from sidecar.state.redis import RedisStore

        return InstrumentedStore(RedisStore.from_config(config.state))
    return InstrumentedStore(MemoryStore())


@dataclass
class Components:
    """Everything a running sidecar is made of, built once from the config."""

    opa: OpaClient
    bundles: BundleSource | None
    store: Store
    keys: KeySet
    tasks: TaskService | None
    approvals: ApprovalService | None
    approvers: ApproverAuthenticator
    pipeline: Pipeline
    api_resolver: IdentityResolver
    shadow: Shadow | None = None
    refusals: RefusalReporter | None = None
    tracing: Tracing = field(default_factory=lambda: Tracing(TracingConfig()))
    responses: PendingResponses | None = None  # the MCP response path's waiting calls (mcp_responses.enabled)

    async def close(self) -> None:
        if self.shadow is not None:
            await self.shadow.close()
        if self.refusals is not None:
            await self.refusals.close()
        await self.opa.close()
        await self.store.close()
        if self.bundles is not None:
            self.bundles.close()
        await asyncio.to_thread(self.tracing.shutdown)  # flushes buffered spans: not on the loop


async def build_components(config: Config) -> Components:
    tracing = Tracing(config.tracing)
    settings = config.opa
    opa = HttpOpaClient(
        settings.url,
        settings.decision_path,
        settings.timeout_ms,
        settings.max_connections,
        trace_configs=tracing.client_trace_configs(),
    )
    await opa.start()
    bundles = await asyncio.to_thread(make_bundle_source, config)
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
    # The sidecar's own API authenticates callers itself (an agent reaches it directly): by JWT-SVID,
    # or, where every caller of the loopback-only API is the pod (source `pod`), as the pod.
    api_sources = ["jwt_svid", *(["pod"] if "pod" in identity.sources else [])]
    api_identity = identity.model_copy(update={"sources": api_sources, "required": True})
    api_resolver = IdentityResolver(api_identity, verifier, None)
    store = make_store(config)
    keys = KeySet(config.credentials.keys_dir, config.credentials.algorithm, config.credentials.reload_seconds)
    tasks = TaskService(config.tasks, store, keys, opa, identity.trust_domains) if config.tasks.enabled else None
    approvals = (
        ApprovalService(config.approvals, store, opa, make_webhook(config)) if config.approvals.enabled else None
    )
    approvers = ApproverAuthenticator(api_resolver, make_oidc_verifier(config))
    shadow = make_shadow(config)
    if shadow is not None:
        await shadow.start()
    refusals = make_refusal_reporter(config)
    if refusals is not None:
        await refusals.start()
    responses = make_pending(config.mcp_responses)
    services = Services(
        resolver,
        opa,
        tasks=tasks,
        sessions=SessionTracker(store, config.sessions) if config.sessions.enabled else None,
        approvals=approvals,
        minter=CredentialMinter(keys, config.tasks.issuer, config.credentials.max_ttl_seconds),
        shadow=shadow,
        refusals=refusals,
        responses=responses,
        store=store,
    )
    pipeline = build_pipeline(config, services)
    return Components(
        opa,
        bundles,
        store,
        keys,
        tasks,
        approvals,
        approvers,
        pipeline,
        api_resolver,
        shadow,
        refusals,
        tracing,
        responses,
    )


def make_refusal_reporter(config: Config) -> RefusalReporter | None:
    """Reports refusals made before OPA was asked to OPA's decision log, unless turned off."""
    settings = config.opa
    if settings.refusals_path is None:
        return None
    client = HttpOpaClient(
        settings.url, settings.refusals_path, settings.timeout_ms, max_connections=settings.refusals_max_in_flight
    )
    return RefusalReporter(client, settings.refusals_path, settings.refusals_max_in_flight)


def make_webhook(config: Config) -> Webhook | None:
    settings = config.approvals
    if settings.webhook_url is None:
        return None
    if settings.webhook_secret_file is None:
        raise ValueError("approvals.webhook_url needs approvals.webhook_secret_file to sign its payloads")
    return Webhook(settings.webhook_url, settings.webhook_secret_file.read_bytes().strip())


def make_oidc_verifier(config: Config) -> OidcVerifier | None:
    settings = config.approvals
    if settings.oidc_issuer is None:
        return None
    return OidcVerifier(settings.oidc_issuer, settings.oidc_audience, settings.oidc_jwks_file, settings.oidc_jwks_url)


def add_check_routes(app: web.Application, config: Config, parts: Components) -> None:
    """The check endpoint Envoy calls: ``{path_prefix}/<original path>``."""
    app[PIPELINE] = parts.pipeline
    app[PREFIX] = config.listen.path_prefix
    app.router.add_route("*", config.listen.path_prefix + "/{tail:.*}", check_handler)
    if config.listen.path_prefix:
        app.router.add_route("*", config.listen.path_prefix, check_handler)


def build_apps(config: Config, parts: Components) -> tuple[web.Application, web.Application, web.Application | None]:
    """The agent/approver API, admin, and the check endpoint's own app when it has a unix socket.

    Without ``listen.socket`` the check endpoint shares host:port with the API (then only
    loopback and the per-deployment XFCC secret keep others from asking for decisions).
    """
    # The trace context of every check and API call (and its span, with tracing on).
    middlewares = [parts.tracing.middleware()]
    authz = web.Application(client_max_size=config.request_body.max_bytes + 65_536, middlewares=middlewares)
    check = None
    if config.listen.socket is None:
        add_check_routes(authz, config, parts)
    else:
        check = web.Application(client_max_size=config.request_body.max_bytes + 65_536, middlewares=middlewares)
        add_check_routes(check, config, parts)
    authz[agent_api.KEYS] = parts.keys
    authz[agent_api.API_RESOLVER] = parts.api_resolver
    authz.router.add_get("/.well-known/jwks.json", agent_api.jwks)
    if parts.tasks is not None:
        authz[agent_api.TASKS] = parts.tasks
        agent_api.add_task_routes(authz)
    if parts.approvals is not None:
        authz[agent_api.APPROVALS] = parts.approvals
        authz[agent_api.APPROVERS] = parts.approvers
        agent_api.add_approval_routes(authz)
    if config.authzen.enabled:
        settings = config.authzen
        evaluator = Evaluator(parts.opa, settings.decision_path, settings.actions_path, settings.concurrency)
        add_authzen_routes(authz, evaluator, settings)

    admin = web.Application()
    admin[OPA] = parts.opa
    admin[DRAINING] = asyncio.Event()
    if parts.bundles is not None:
        admin[JWT_BUNDLES] = parts.bundles
    if parts.approvals is not None:
        admin[APPROVAL_STORE] = parts.store
    admin.router.add_get("/healthz", healthz)
    admin.router.add_get("/readyz", readyz)
    admin.router.add_get("/metrics", metrics_handler)
    return authz, admin, check


EVENT_LOOP_ENV = "SIDECAR_EVENT_LOOP"  # "asyncio" opts out of uvloop (not a config key: read before the loop)


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed (a dependency): less per-request overhead in the
    loop and its transports than asyncio's default; ``None`` keeps asyncio's."""
    if os.environ.get(EVENT_LOOP_ENV, "uvloop") == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but not on every platform
        return None
    return uvloop.new_event_loop


async def serve(config: Config) -> None:
    """Run the listeners until SIGINT/SIGTERM, then drain (``shutdown``): readiness fails at once,
    the listeners close after the drain delay, checks in flight finish, the admin port goes last."""
    parts = await build_components(config)
    authz, admin, check = build_apps(config, parts)
    # Envoy accepts up to 60 KiB of headers; read them all so oversize tokens get our 401, not a 400.
    drain = config.shutdown.drain_timeout_seconds  # how long cleanup() waits for handlers in flight
    runners = [
        web.AppRunner(authz, access_log=None, max_line_size=65_536, max_field_size=65_536, shutdown_timeout=drain),
        web.AppRunner(admin, access_log=None, shutdown_timeout=1.0),
    ]
    if check is not None:
        runners.append(
            web.AppRunner(check, access_log=None, max_line_size=65_536, max_field_size=65_536, shutdown_timeout=drain)
        )
    for runner in runners:
        await runner.setup()
    await web.TCPSite(runners[0], config.listen.host, config.listen.port).start()
    await web.TCPSite(runners[1], config.admin.host, config.admin.port).start()
    check_at = f"{config.listen.host}:{config.listen.port}{config.listen.path_prefix}"
    if config.listen.socket is not None:
        await web.UnixSite(runners[2], str(config.listen.socket)).start()
        restrict_socket(config.listen.socket)
        check_at = f"unix:{config.listen.socket} {config.listen.path_prefix}"
    grpc_server = None
    if config.grpc.enabled:
        from sidecar.grpc_server import start_grpc_server

        secret_header = config.identity.xfcc.secret_header
        address = f"unix:{config.grpc.socket}" if config.grpc.socket else f"{config.grpc.host}:{config.grpc.port}"
        plugin_profile = config.profile == "opa-envoy-plugin"
        grpc_server = await start_grpc_server(
            parts.pipeline, address, secret_header, parts.tracing, attributes=plugin_profile
        )
        if config.grpc.socket is not None:
            restrict_socket(config.grpc.socket)
    ext_proc = await start_response_path(config.mcp_responses, parts.opa, parts.store, parts.responses)
    settle_heap()  # everything above lives as long as the process
    log.info(
        "authz-sidecar listening",
        extra={
            "check": check_at,
            "api": f"{config.listen.host}:{config.listen.port}",
            "authzen": f"http://{config.listen.host}:{config.listen.port}" if config.authzen.enabled else "off",
            "admin": f"{config.admin.host}:{config.admin.port}",
            "opa": f"{config.opa.url}/v1/data/{config.opa.decision_path}",
            "grpc": (
                (f"unix:{config.grpc.socket}" if config.grpc.socket else f"{config.grpc.host}:{config.grpc.port}")
                if config.grpc.enabled
                else "off"
            ),
        },
    )
    try:
        await until_signalled()
        log.info("authz-sidecar draining", extra={"delay_s": config.shutdown.drain_delay_seconds})
        await announce_drain(admin[DRAINING], config.shutdown.drain_delay_seconds)
    finally:
        # Check listeners first (each waits for its requests in flight), admin last: /readyz keeps
        # answering 503 while the checks drain.
        serving = [runner for runner in runners if runner.app is not admin]
        stops: list[Awaitable[None]] = [runner.cleanup() for runner in serving]
        if grpc_server is not None:
            stops.append(grpc_server.stop(grace=drain))
        if ext_proc is not None:  # responses in flight finish like checks in flight
            stops.append(ext_proc.stop(grace=drain))
        await asyncio.gather(*stops)
        await runners[1].cleanup()
        await parts.close()
        log.info("authz-sidecar stopped")
