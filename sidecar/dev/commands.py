"""``authz-sidecar dev`` subcommands for deploying like a platform team: signed bundles, the
bundle service, the decision-log receiver, real SPIRE for the local stack."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sidecar.dev.envoy_config import REPO_ROOT


def add_commands(dev_commands: Any) -> None:
    """Register the subcommands on ``authz-sidecar dev`` (``dev_commands`` is its subparsers)."""
    bundle = dev_commands.add_parser("bundle", help="build a policy directory into a signed, revisioned bundle")
    bundle.add_argument("--source", type=Path, default=REPO_ROOT / "rego", help="policy directory (default rego/)")
    bundle.add_argument("--out", type=Path, default=Path("build/bundle/authz.tar.gz"))
    bundle.add_argument("--revision", help="bundle revision (default: git sha and UTC time)")
    bundle.add_argument(
        "--key-dir",
        type=Path,
        help="where bundle-signing.key/.pub live; created if missing (default: the --dev-dir)",
    )
    bundle.set_defaults(run=_bundle)

    server = dev_commands.add_parser("bundle-server", help="serve DIR/bundles/*.tar.gz to OPA (ETag polling)")
    server.add_argument("--dir", type=Path, required=True)
    server.add_argument("--host", default="127.0.0.1")
    server.add_argument("--port", type=int, default=8182)
    server.add_argument("--token-file", type=Path, help="require OPA's bearer token from this file (all but /healthz)")
    server.set_defaults(run=_bundle_server)

    receiver = dev_commands.add_parser(
        "decision-log-receiver", help="receive OPA decision logs (POST /logs) into a JSON-lines file"
    )
    receiver.add_argument("--out", type=Path, required=True)
    receiver.add_argument("--host", default="127.0.0.1")
    receiver.add_argument("--port", type=int, default=8183)
    receiver.add_argument(
        "--token-file", type=Path, help="require OPA's bearer token from this file (all but /healthz)"
    )
    receiver.set_defaults(run=_decision_log_receiver)

    svid_files = dev_commands.add_parser(
        "svid-files", help="keep an X.509-SVID from the Workload API in files Envoy reloads (file-based SDS)"
    )
    svid_files.add_argument("--socket", help="Workload API socket, unix:///path (default: $SPIFFE_ENDPOINT_SOCKET)")
    svid_files.add_argument("--spiffe-id", required=True, help="which of the workload's SVIDs to write")
    svid_files.add_argument("--out", type=Path, required=True)
    svid_files.set_defaults(run=_svid_files)

    up = dev_commands.choices.get("up")
    if up is not None:
        up.add_argument("--spire", action="store_true", help="real SPIRE server and agent instead of the dev CA")
        up.add_argument(
            "--shadow", type=Path, help="candidate policy directory: a second OPA the sidecar asks too, never enforced"
        )


def up_options(args: argparse.Namespace) -> dict[str, Any]:
    """Stack options for ``dev up``: the shipped policy comes signed from the bundle service;
    ``--bundle DIR`` keeps OPA reading the directory (a policy author's own bundle)."""
    return {
        "bundle_service": args.bundle is None,
        "decision_log_service": True,
        "spire": bool(getattr(args, "spire", False)),
        "shadow": getattr(args, "shadow", None),
    }


def _bundle(args: argparse.Namespace) -> int:
    from sidecar.dev.bundles import SigningKey, build_bundle, default_revision

    key = SigningKey.ensure(args.key_dir or args.dev_dir)
    revision = args.revision or default_revision()
    out = build_bundle(args.source, args.out, revision, key)
    print(f"built {out} (revision {revision}), signed with {key.private}; OPA verifies it with {key.public}")
    return 0


def _bundle_server(args: argparse.Namespace) -> int:
    from sidecar.dev.bundle_server import run_bundle_server
    from sidecar.logs import setup_logging

    setup_logging("INFO")  # JSON lines with RFC 3339 UTC times, like the sidecar's
    run_bundle_server(args.dir, args.host, args.port, args.token_file)
    return 0


def _decision_log_receiver(args: argparse.Namespace) -> int:
    from sidecar.dev.decision_log_receiver import run_receiver
    from sidecar.logs import setup_logging

    setup_logging("INFO")
    run_receiver(args.out, args.host, args.port, args.token_file)
    return 0


def _svid_files(args: argparse.Namespace) -> int:
    import os

    from sidecar.dev.svid_files import run_svid_files
    from sidecar.logs import setup_logging

    setup_logging("INFO")
    socket = args.socket or os.environ.get("SPIFFE_ENDPOINT_SOCKET")
    if not socket:
        print("authz-sidecar: --socket or SPIFFE_ENDPOINT_SOCKET is required")
        return 2
    run_svid_files(socket, args.spiffe_id, args.out)
    return 0
