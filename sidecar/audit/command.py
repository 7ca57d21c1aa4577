"""The ``authz-sidecar audit`` subcommand."""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Any

from sidecar.audit.chain import reconstruct
from sidecar.audit.render import as_html, as_json, as_table, printable
from sidecar.audit.sources import STDIN, logs_dir_files, read_logs
from sidecar.logformat import parse_rfc3339

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


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
    audit.add_argument(
        "--log",
        type=Path,
        action="append",
        default=[],
        help="any of these, mixed (e.g. a cluster's log export; `kubectl logs --timestamps/--prefix` lines and "
        "container-runtime JSON wrappers are unwrapped); repeatable",
    )
    audit.add_argument(
        "--since", help="only what happened from then: RFC 3339 (2026-01-02T03:04:05Z) or a duration ago (90m, 2h, 7d)"
    )
    audit.add_argument("--until", help="only what happened before then (same forms)")
    selector = audit.add_mutually_exclusive_group()
    selector.add_argument("--task", help="one task and every task delegated from it")
    selector.add_argument("--agent", help="everything one agent (SPIFFE ID) did")
    audit.add_argument("--format", choices=["table", "json", "html"], default="table")
    audit.add_argument("--out", type=Path, help="write to this file instead of stdout")
    audit.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    files: dict[str, list[Path]] = {"sidecar": list(args.sidecar_log), "opa": list(args.opa_log), "upstream": []}
    files["upstream"] = list(args.upstream_log)
    files["mixed"] = list(args.log)
    try:
        since, until = _when(args.since), _when(args.until)
    except ValueError as exc:
        print(f"authz-sidecar audit: {exc}", file=sys.stderr)
        return 2
    if since is not None and until is not None and since >= until:
        print("authz-sidecar audit: --since must be before --until", file=sys.stderr)
        return 2
    if args.logs is not None:
        if not args.logs.is_dir():
            print(f"authz-sidecar audit: {printable(str(args.logs))} is not a directory", file=sys.stderr)
            return 2
        for kind, paths in logs_dir_files(args.logs).items():
            files[kind] += paths
    # File names (a logs directory's listing too) are printed escaped, like everything else.
    missing = [printable(str(p)) for paths in files.values() for p in paths if p != STDIN and not p.is_file()]
    if missing:
        print(f"authz-sidecar audit: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    if sum(p == STDIN for paths in files.values() for p in paths) > 1:
        print("authz-sidecar audit: standard input (-) can be read once only", file=sys.stderr)
        return 2
    if not files["sidecar"] and not files["opa"] and not files["mixed"]:
        print("authz-sidecar audit: give --logs DIR, --log, --sidecar-log or --opa-log", file=sys.stderr)
        return 2
    try:
        sources = read_logs(
            sidecar=files["sidecar"], opa=files["opa"], upstream=files["upstream"], mixed=files["mixed"]
        )
    except (OSError, EOFError) as exc:  # unreadable, or a truncated or corrupt gzip file
        print(f"authz-sidecar audit: cannot read the logs: {printable(str(exc))}", file=sys.stderr)
        return 2
    if sources.unreadable_events:
        why = printable(sources.first_unreadable or "")
        print(
            f"authz-sidecar audit: warning: {sources.unreadable_events} sidecar event line(s) could not be read "
            f"and are not in this audit (the first: {why})",
            file=sys.stderr,
        )
    audit = reconstruct(sources, task=args.task, agent=args.agent, since=since, until=until)
    text = {"table": as_table, "json": as_json, "html": as_html}[args.format](audit)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
        counts = f"{len(audit.chains)} chain(s), {len(audit.gaps)} gap(s)"
        print(f"wrote {printable(str(args.out))} ({counts})", file=sys.stderr)
    else:
        print(text)
    return 0


def _when(value: str | None) -> float | None:
    """Epoch seconds of ``--since``/``--until``: RFC 3339, or a duration before now."""
    if value is None:
        return None
    duration = _DURATION.fullmatch(value.strip())
    if duration:
        return time.time() - float(duration.group(1)) * _UNIT[duration.group(2)]
    try:
        return parse_rfc3339(value)
    except ValueError:
        raise ValueError(
            f"{printable(value)!r} is neither an RFC 3339 time (2026-01-02T03:04:05Z) nor a duration (90m, 2h, 7d)"
        ) from None
