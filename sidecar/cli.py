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
from sidecar.policy.command import add_command as add_policy_command


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
