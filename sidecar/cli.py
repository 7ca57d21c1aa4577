"""``authz-sidecar`` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from sidecar import __version__
from sidecar.approvals_cli import add_commands as add_approval_commands
from sidecar.audit.command import add_command as add_audit_command
from sidecar.config import ConfigError, load_config
from sidecar.dev.commands import add_commands as add_platform_commands
from sidecar.policy.command import add_command as add_policy_command

DEV_DIR = Path(".dev")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        result: int = args.run(args)
    except ConfigError as exc:
        print(f"authz-sidecar: {exc}", file=sys.stderr)
        return 2
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="authz-sidecar", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the ext_authz server (HTTP service mode)")
    serve.add_argument("--config", type=Path, help="YAML config file (default: $AUTHZ_CONFIG)")
    serve.set_defaults(run=_serve)

    check = commands.add_parser("check-config", help="validate a config file and print it with defaults")
    check.add_argument("--config", type=Path)
    check.set_defaults(run=_check_config)

    add_approval_commands(commands)
    add_audit_command(commands)
    add_policy_command(commands)

    dev = commands.add_parser("dev", help="development trust domain, demo upstream, local stack")
    dev.add_argument("--dev-dir", type=Path, default=DEV_DIR, help="where dev keys live (default .dev)")
    dev_commands = dev.add_subparsers(dest="dev_command", required=True)

    dev_commands.add_parser("init", help="create the dev trust domain").set_defaults(run=_dev_init)

    mint_jwt = dev_commands.add_parser("mint-jwt", help="print a JWT-SVID signed by the dev trust domain")
    mint_jwt.add_argument("--spiffe-id", required=True)
    mint_jwt.add_argument("--audience", default="authz-sidecar")
    mint_jwt.add_argument("--ttl", type=int, default=300, help="seconds (default 300)")
    mint_jwt.add_argument("--claim", action="append", default=[], metavar="NAME=JSON", help="extra claim")
    mint_jwt.set_defaults(run=_dev_mint_jwt)

    mint_x509 = dev_commands.add_parser("mint-x509", help="write an X.509-SVID (cert, key, bundle)")
    mint_x509.add_argument("--spiffe-id", required=True)
    mint_x509.add_argument("--out", type=Path, required=True)
    mint_x509.set_defaults(run=_dev_mint_x509)

    mint_oidc = dev_commands.add_parser("mint-oidc", help="print an ID token of the dev OIDC issuer (human approver)")
    mint_oidc.add_argument("--sub", required=True)
    mint_oidc.add_argument("--group", action="append", default=[], help="groups claim (repeatable)")
    mint_oidc.add_argument("--ttl", type=int, default=600)
    mint_oidc.set_defaults(run=_dev_mint_oidc)

    upstream = dev_commands.add_parser("upstream", help="run the demo upstream (REST API + MCP tools)")
    upstream.add_argument("--host", default="127.0.0.1")
    upstream.add_argument("--port", type=int, default=18080)
    upstream.add_argument("--jwks-url", help="the sidecar's JWKS, to verify minted credentials")
    upstream.set_defaults(run=_dev_upstream)

    up = dev_commands.add_parser("up", help="run OPA, the sidecar, Envoy and the demo upstream until Ctrl-C")
    up.add_argument("--bundle", type=Path, help="policy bundle directory (default: the shipped rego/)")
    up.add_argument("--decision-path", default="agent/authz/decision")
    up.set_defaults(run=_dev_up)

    demo = dev_commands.add_parser("demo", help="bring the stack up and play a scripted agent session")
    demo.set_defaults(run=_dev_demo)
    add_platform_commands(dev_commands)  # bundle, bundle-server, decision-log-receiver, up --spire
    return parser


def _serve(args: argparse.Namespace) -> int:
    from sidecar.logs import setup_logging
    from sidecar.server import event_loop_factory, serve

    config = load_config(args.config)
    setup_logging(config.log.level, config.log.redact)
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(serve(config))
    return 0


def _check_config(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    print(json.dumps(config.model_dump(mode="json"), indent=2))
    return 0


def _dev_init(args: argparse.Namespace) -> int:
    from sidecar.dev.trust_domain import DevTrustDomain

    td = DevTrustDomain(args.dev_dir).ensure()
    print(f"dev trust domain {td.name} in {td.root}: CA {td.ca_cert}, JWT bundle {td.jwt_bundle}")
    return 0


def _dev_mint_jwt(args: argparse.Namespace) -> int:
    from sidecar.dev.trust_domain import DevTrustDomain

    claims = {}
    for item in args.claim:
        name, _, value = item.partition("=")
        claims[name] = json.loads(value)
    print(DevTrustDomain(args.dev_dir).mint_jwt(args.spiffe_id, args.audience, args.ttl, claims))
    return 0


def _dev_mint_x509(args: argparse.Namespace) -> int:
    from sidecar.dev.trust_domain import DevTrustDomain

    files = DevTrustDomain(args.dev_dir).mint_x509(args.spiffe_id, args.out)
    print(f"wrote {files.cert}, {files.key}, {files.bundle}")
    return 0


def _dev_mint_oidc(args: argparse.Namespace) -> int:
    from sidecar.dev.oidc import DevOidcIssuer

    print(DevOidcIssuer(args.dev_dir).mint(args.sub, args.group, ttl=args.ttl))
    return 0


def _dev_upstream(args: argparse.Namespace) -> int:
    from sidecar.dev.upstream import run_upstream

    run_upstream(args.host, args.port, args.jwks_url)
    return 0


def _dev_up(args: argparse.Namespace) -> int:
    from sidecar.dev.commands import up_options
    from sidecar.dev.stack import DEFAULT_BUNDLE, Stack, StackError

    stack = Stack(
        args.dev_dir, bundle=args.bundle or DEFAULT_BUNDLE, decision_path=args.decision_path, **up_options(args)
    )
    try:
        with stack:
            print(stack.banner(), flush=True)
            stack.run_until_interrupted()
    except StackError as exc:
        print(f"authz-sidecar: {exc}", file=sys.stderr)
        return 1
    return 0


def _dev_demo(args: argparse.Namespace) -> int:
    from sidecar.dev.demo import run_demo

    return run_demo(args.dev_dir)
