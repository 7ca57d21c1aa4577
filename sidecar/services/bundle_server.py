"""A bundle service: serves signed policy bundles to OPA over HTTP, with ETags for cheap polling.

Any static file server works for OPA (nginx, S3, an OCI registry); this one adds the bearer
token OPA presents (``--token-file``) without a templated web-server config, and is what
the Helm chart (``services.enabled``), the compose file, the local stack and the tests run
(``authz-bundle-server``). OPA asks ``GET /bundles/<name>.tar.gz`` with ``If-None-Match`` and
gets 304 while the file is unchanged, so publishing a revision is an atomic file replace.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from aiohttp import web

from sidecar.logs import setup_logging
from sidecar.services.service_token import read_token, require_bearer


async def healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def make_app(root: Path, token: str | None = None) -> web.Application:
    """``token``: OPA's bearer token; without it the bundles are served to anyone (tests only)."""
    app = web.Application(middlewares=[require_bearer(token)])
    app.router.add_get("/healthz", healthz)
    # aiohttp's static handler answers If-None-Match with 304 and refuses paths outside root.
    app.router.add_static("/bundles/", root / "bundles", follow_symlinks=False, show_index=False)
    return app


def publish(bundle: Path, root: Path, name: str) -> Path:
    """Atomically replace ``root/bundles/<name>.tar.gz`` so OPA never reads half a file."""
    target = root / "bundles" / f"{name}.tar.gz"
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{name}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as out:
        out.write(bundle.read_bytes())
    os.replace(tmp, target)
    return target


def run_bundle_server(root: Path, host: str, port: int, token_file: Path | None = None) -> None:
    (root / "bundles").mkdir(parents=True, exist_ok=True)
    web.run_app(make_app(root, read_token(token_file)), host=host, port=port, access_log=None, print=None)


def main(argv: list[str] | None = None) -> int:
    """``authz-bundle-server``: serve ``DIR/bundles/*.tar.gz`` until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog="authz-bundle-server", description="serve DIR/bundles/*.tar.gz to OPA")
    parser.add_argument("--dir", type=Path, required=True, help="serves DIR/bundles/")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8182)
    parser.add_argument("--token-file", type=Path, help="require OPA's bearer token from this file (all but /healthz)")
    args = parser.parse_args(argv)
    setup_logging("INFO")  # JSON lines with RFC 3339 UTC times, like the sidecar's
    run_bundle_server(args.dir, args.host, args.port, args.token_file)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
