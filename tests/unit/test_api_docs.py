"""docs/openapi.yaml documents every route of the sidecar's own API, and nothing that isn't there."""

from pathlib import Path

import yaml

from sidecar.config import load_config
from sidecar.server import build_apps, build_components

REPO = Path(__file__).resolve().parents[2]


async def test_openapi_matches_the_routes() -> None:
    config = load_config(None, {})
    parts = await build_components(config)
    try:
        authz, _, _ = build_apps(config, parts)
        routes = {
            (route.method.lower(), route.resource.canonical)
            for route in authz.router.routes()
            if route.resource is not None
            and not route.resource.canonical.startswith(config.listen.path_prefix)
            and route.method != "HEAD"
        }
    finally:
        await parts.close()
    spec = yaml.safe_load((REPO / "docs" / "openapi.yaml").read_text())
    documented = {
        (method, path)
        for path, item in spec["paths"].items()
        for method in item
        if method in ("get", "post", "put", "delete", "patch")
    }
    assert routes == documented
