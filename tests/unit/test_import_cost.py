"""What ``authz-sidecar serve`` loads: libraries only a mode that is off needs stay unimported (RSS)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

# Loaded only when their mode is on: redis-py for the Redis store, requests for the approvals CLI.
NOT_FOR_SERVE = ("redis", "requests", "urllib3")
# grpc's core and the protobuf runtime (~11 MB RSS with Envoy's protos) only for gRPC mode
# (grpc.enabled), the MCP response path's ext_proc server (mcp_responses.enabled) or the Workload
# API bundle source; the rest of spiffe's package __init__ (pyasn1, pem, pyOpenSSL, its X.509
# half) never for serve: sidecar/spiffe_types.py imports the types the sidecar uses on their own.
NOT_FOR_HTTP_MODE = ("grpc", "google", "envoy", "xds", "udpa", "validate", "pyasn1", "pyasn1_modules", "pem", "OpenSSL")
NOT_FOR_HTTP_MODE_SUBMODULES = ("spiffe.workloadapi", "spiffe._proto", "spiffe.svid.x509_svid")

# A fresh interpreter each time: this test process has imported everything already. The probe
# imports what ``python -m sidecar serve`` imports and builds what it builds before it listens
# (default config: HTTP mode, the memory store, no response path, no tracing), then lists sys.modules.
SERVE_PROBE = """
import asyncio, json, sys
import sidecar.cli, sidecar.logs
from sidecar.config import load_config
from sidecar.server import build_apps, build_components, event_loop_factory

async def start() -> None:
    config = load_config(None)
    parts = await build_components(config)
    build_apps(config, parts)
    await parts.close()

event_loop_factory()
asyncio.run(start())
print(json.dumps(sorted(sys.modules)))
"""


def _modules_after(code: str) -> set[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTHZ_", "SPIFFE_"))}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120, env=env
    ).stdout
    return set(json.loads(out.splitlines()[-1]))


def _packages(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


def test_serve_with_the_memory_store_imports_no_redis_and_no_requests() -> None:
    code = "import json, sys; import sidecar.cli, sidecar.server, sidecar.logs; print(json.dumps(sorted(sys.modules)))"
    loaded = _packages(_modules_after(code))
    assert "aiohttp" in loaded  # the probe did import the server
    assert loaded.isdisjoint(NOT_FOR_SERVE), sorted(loaded & set(NOT_FOR_SERVE))


def test_serve_in_http_mode_imports_no_grpc_no_protobuf_and_no_workload_api_client() -> None:
    modules = _modules_after(SERVE_PROBE)
    loaded = _packages(modules)
    assert {"aiohttp", "spiffe", "jwt"} <= loaded  # the probe did build the server and its JWT-SVID verifier
    assert loaded.isdisjoint(NOT_FOR_HTTP_MODE), sorted(loaded & set(NOT_FOR_HTTP_MODE))
    heavy = {m for m in modules if m.startswith(NOT_FOR_HTTP_MODE_SUBMODULES)}
    assert not heavy, sorted(heavy)


def test_the_spiffe_package_is_whole_for_code_that_imports_it_after_the_sidecar() -> None:
    code = (
        "import json, sys; import sidecar.spiffe_types as t; import spiffe; "
        "from spiffe import SpiffeId, X509Source, JwtSource; "
        "assert SpiffeId is t.SpiffeId and spiffe.JwtSvid is t.JwtSvid and spiffe.JwtBundle is t.JwtBundle; "
        "print(json.dumps(sorted(sys.modules)))"
    )
    assert "spiffe.workloadapi.jwt_source" in _modules_after(code)


def test_grpc_loads_with_the_features_that_need_it() -> None:
    code = (
        "import json, sys; import sidecar.server; import sidecar.grpc_server, sidecar.mcp_response.ext_proc; "
        "from sidecar.identity.bundles import WorkloadApiBundleSource; "
        "print(json.dumps(sorted(sys.modules)))"
    )
    assert {"grpc", "envoy"} <= _packages(_modules_after(code))


def test_the_redis_store_is_still_built_when_chosen() -> None:
    from sidecar.config import load_config
    from sidecar.server import make_store

    config = load_config(None)
    config = config.model_copy(update={"state": config.state.model_copy(update={"backend": "redis"})})
    from sidecar.state.instrumented import InstrumentedStore

    store = make_store(config)
    assert isinstance(store, InstrumentedStore)  # measured (authz_state_store_*), around:
    assert type(store.inner).__name__ == "RedisStore"
