"""The ``authz-sidecar audit`` subcommand."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from sidecar.audit.chain import reconstruct
from sidecar.audit.render import as_html, as_json, as_table, printable
from sidecar.audit.sources import logs_dir_files, read_logs


def add_command(commands: Any) -> None:
    """Register ``audit`` on the top-level subparsers."""
    audit = commands.add_parser(
        "audit",
        help="reconstruct agents' tool chains from decision logs (table, JSON or HTML)",
        description="Join the sidecar's JSON log, OPA's decision logs and the upstream's access log by "
        "decision id, and show per task (with its delegations) or per agent every call in order: verdict, "
        "reasons, approvals, delegation hops, credentials minted (ids only), and gaps.",
    )
    audit.add_argument("--logs", type=Path, help="a logs directory of the local stack (e.g. .dev/logs)")
    audit.add_argument("--sidecar-log", type=Path, action="append", default=[], help="sidecar JSON log (repeatable)")
    audit.add_argument(
        "--opa-log",
        type=Path,
        action="append",
        default=[],
        help="OPA console log or the decision-log receiver's JSON lines (repeatable)",
    )
    audit.add_argument("--upstream-log", type=Path, action="append", default=[], help="upstream JSON access log")
    selector = audit.add_mutually_exclusive_group()
    selector.add_argument("--task", help="one task and every task delegated from it")
    selector.add_argument("--agent", help="everything one agent (SPIFFE ID) did")
    audit.add_argument("--format", choices=["table", "json", "html"], default="table")
    audit.add_argument("--out", type=Path, help="write to this file instead of stdout")
    audit.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    files: dict[str, list[Path]] = {"sidecar": list(args.sidecar_log), "opa": list(args.opa_log), "upstream": []}
    files["upstream"] = list(args.upstream_log)
    if args.logs is not None:
        if not args.logs.is_dir():
            print(f"authz-sidecar audit: {printable(str(args.logs))} is not a directory", file=sys.stderr)
            return 2
        for kind, paths in logs_dir_files(args.logs).items():
            files[kind] += paths
    # File names (a logs directory's listing too) are printed escaped, like everything else.
    missing = [printable(str(p)) for paths in files.values() for p in paths if not p.is_file()]
    if missing:
        print(f"authz-sidecar audit: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    if not files["sidecar"] and not files["opa"]:
        print("authz-sidecar audit: give --logs DIR, --sidecar-log or --opa-log", file=sys.stderr)
        return 2
    sources = read_logs(sidecar=files["sidecar"], opa=files["opa"], upstream=files["upstream"])
    audit = reconstruct(sources, task=args.task, agent=args.agent)
    text = {"table": as_table, "json": as_json, "html": as_html}[args.format](audit)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
        counts = f"{len(audit.chains)} chain(s), {len(audit.gaps)} gap(s)"
        print(f"wrote {printable(str(args.out))} ({counts})", file=sys.stderr)
    else:
        print(text)
    return 0
