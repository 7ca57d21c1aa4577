"""``authz-dev``: the development trust domain, the demo upstream, the local stack and the demo."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

DEV_DIR = Path(".dev")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    result: int = args.run(args)
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="authz-dev", description=__doc__)
    parser.add_argument("--dev-dir", type=Path, default=DEV_DIR, help="where dev keys live (default .dev)")
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("init", help="create the dev trust domain").set_defaults(run=_init)

    mint_jwt = commands.add_parser("mint-jwt", help="print a JWT-SVID signed by the dev trust domain")
    mint_jwt.add_argument("--spiffe-id", required=True)
    mint_jwt.add_argument("--audience", default="authz-sidecar")
    mint_jwt.add_argument("--ttl", type=int, default=300, help="seconds (default 300)")
    mint_jwt.add_argument("--claim", action="append", default=[], metavar="NAME=JSON", help="extra claim")
    mint_jwt.set_defaults(run=_mint_jwt)

    mint_x509 = commands.add_parser("mint-x509", help="write an X.509-SVID (cert, key, bundle)")
    mint_x509.add_argument("--spiffe-id", required=True)
    mint_x509.add_argument("--out", type=Path, required=True)
    mint_x509.set_defaults(run=_mint_x509)

    mint_oidc = commands.add_parser("mint-oidc", help="print an ID token of the dev OIDC issuer (human approver)")
    mint_oidc.add_argument("--sub", required=True)
    mint_oidc.add_argument("--group", action="append", default=[], help="groups claim (repeatable)")
    mint_oidc.add_argument("--ttl", type=int, default=600)
    mint_oidc.set_defaults(run=_mint_oidc)

    upstream = commands.add_parser("upstream", help="run the demo upstream (REST API + MCP tools)")
    upstream.add_argument("--host", default="127.0.0.1")
    upstream.add_argument("--port", type=int, default=18080)
    upstream.add_argument("--jwks-url", help="the sidecar's JWKS, to verify minted credentials")
    upstream.set_defaults(run=_upstream)

    up = commands.add_parser("up", help="run OPA, the sidecar, Envoy and the demo upstream until Ctrl-C")
    up.add_argument("--bundle", type=Path, help="policy bundle directory (default: the shipped rego/)")
    up.add_argument("--decision-path", default="agent/authz/decision")
    up.add_argument("--spire", action="store_true", help="real SPIRE server and agent instead of the dev CA")
    up.add_argument(
        "--profile",
        choices=("agent", "opa-envoy-plugin"),
        default="agent",
        help="the sidecar's profile; opa-envoy-plugin runs Envoy in gRPC mode, as the plugin is asked",
    )
    up.add_argument(
        "--shadow", type=Path, help="candidate policy directory: a second OPA the sidecar asks too, never enforced"
    )
    up.set_defaults(run=_up)

    commands.add_parser("demo", help="bring the stack up and play a scripted agent session").set_defaults(run=_demo)

    svid_files = commands.add_parser(
        "svid-files", help="keep an X.509-SVID from the Workload API in files Envoy reloads (file-based SDS)"
    )
    svid_files.add_argument("--socket", help="Workload API socket, unix:///path (default: $SPIFFE_ENDPOINT_SOCKET)")
    svid_files.add_argument("--spiffe-id", required=True, help="which of the workload's SVIDs to write")
    svid_files.add_argument("--out", type=Path, required=True)
    svid_files.set_defaults(run=_svid_files)
    return parser


def _init(args: argparse.Namespace) -> int:
    from devstack.trust_domain import DevTrustDomain

    td = DevTrustDomain(args.dev_dir).ensure()
    print(f"dev trust domain {td.name} in {td.root}: CA {td.ca_cert}, JWT bundle {td.jwt_bundle}")
    return 0


def _mint_jwt(args: argparse.Namespace) -> int:
    from devstack.trust_domain import DevTrustDomain

    claims = {}
    for item in args.claim:
        name, _, value = item.partition("=")
        claims[name] = json.loads(value)
    print(DevTrustDomain(args.dev_dir).mint_jwt(args.spiffe_id, args.audience, args.ttl, claims))
    return 0


def _mint_x509(args: argparse.Namespace) -> int:
    from devstack.trust_domain import DevTrustDomain

    files = DevTrustDomain(args.dev_dir).mint_x509(args.spiffe_id, args.out)
    print(f"wrote {files.cert}, {files.key}, {files.bundle}")
    return 0


def _mint_oidc(args: argparse.Namespace) -> int:
    from devstack.oidc import DevOidcIssuer

    print(DevOidcIssuer(args.dev_dir).mint(args.sub, args.group, ttl=args.ttl))
    return 0


def _upstream(args: argparse.Namespace) -> int:
    from devstack.upstream import run_upstream

    run_upstream(args.host, args.port, args.jwks_url)
    return 0


def _up(args: argparse.Namespace) -> int:
    from devstack.stack import DEFAULT_BUNDLE, Stack, StackError

    # The shipped policy comes signed from the bundle service; --bundle DIR keeps OPA reading the
    # directory (a policy author's own bundle).
    stack = Stack(
        args.dev_dir,
        bundle=args.bundle or DEFAULT_BUNDLE,
        decision_path=args.decision_path,
        bundle_service=args.bundle is None,
        decision_log_service=True,
        spire=args.spire,
        shadow=args.shadow,
        mode="grpc" if args.profile == "opa-envoy-plugin" else "http",
        profile=args.profile,
    )
    try:
        with stack:
            print(stack.banner(), flush=True)
            stack.run_until_interrupted()
    except StackError as exc:
        print(f"authz-dev: {exc}", file=sys.stderr)
        return 1
    return 0


def _demo(args: argparse.Namespace) -> int:
    from devstack.demo import run_demo

    return run_demo(args.dev_dir)


def _svid_files(args: argparse.Namespace) -> int:
    from devstack.svid_files import run_svid_files
    from sidecar.logs import setup_logging

    setup_logging("INFO")
    socket = args.socket or os.environ.get("SPIFFE_ENDPOINT_SOCKET")
    if not socket:
        print("authz-dev: --socket or SPIFFE_ENDPOINT_SOCKET is required", file=sys.stderr)
        return 2
    run_svid_files(socket, args.spiffe_id, args.out)
    return 0
