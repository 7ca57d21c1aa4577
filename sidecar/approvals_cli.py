"""``authz-sidecar approvals list|show|approve|reject``: the approver API for operators (requests).

Everything an approval holds may come from the agent (tool names, arguments, paths, even the
policy's reasons quote them), so every text it prints is untrusted: quoted, with control and
other invisible characters shown as escapes (``"\\u001b"``), never written to the terminal raw.
``show`` prints JSON with every non-ASCII character escaped.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

TOKEN_ENV = "AUTHZ_APPROVER_TOKEN"


def add_commands(commands: Any) -> None:
    """Register ``approvals`` on the top-level subparsers."""
    approvals = commands.add_parser("approvals", help="list and decide pending step-up approvals")
    approvals.add_argument("--url", default="http://127.0.0.1:9191", help="the sidecar (default %(default)s)")
    approvals.add_argument("--token", help=f"approver JWT-SVID or OIDC ID token (default ${TOKEN_ENV})")
    sub = approvals.add_subparsers(dest="approvals_command", required=True)
    sub.add_parser("list", help="pending approvals this approver may decide").set_defaults(run=_list)
    show = sub.add_parser("show", help="one approval")
    show.add_argument("approval_id")
    show.set_defaults(run=_show)
    for name, run in (("approve", _approve), ("reject", _reject)):
        decide = sub.add_parser(name, help=f"{name} a pending approval")
        decide.add_argument("approval_id")
        decide.add_argument("--reason", help="recorded with the decision")
        decide.set_defaults(run=run)


def _list(args: argparse.Namespace) -> int:
    response = _call(args, "GET", "/v1/approvals")
    if response is None:
        return 1
    approvals = response["approvals"]
    if not approvals:
        print("no pending approvals")
    for a in approvals:
        summary = a["summary"]
        what = f"tool {quoted(summary['tool'])}" if summary.get("tool") else f"request {quoted(summary['method'])}"
        print(
            f"{quoted(a['id'])}  agent {quoted(a['agent'])}  {what}  path {quoted(summary['path'])}"
            f"  data class {quoted(a['data_class'])}  expires {quoted(a['expires_at'])}"
        )
        for reason in a["reasons"]:
            print(f"    reason {quoted(reason)}")
        _print_cuts(a)
    return 0


def quoted(value: Any) -> str:
    """A string ``value`` as a double-quoted string an agent cannot use to steer a terminal or hide text:
    quotes and backslashes escaped, every character Python does not call printable (controls,
    format characters such as bidirectional overrides, separators) shown as ``\\uXXXX``."""
    if not isinstance(value, str):
        return json.dumps(value, ensure_ascii=True)  # a number or null as it is; JSON escapes any text inside
    return '"' + "".join(_escaped(c) for c in value) + '"'


def _escaped(char: str) -> str:
    if char in '"\\':
        return "\\" + char
    if char.isprintable():
        return char
    code = ord(char)
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def _print_cuts(approval: dict[str, Any]) -> None:
    """Say what the approver's view leaves out, from the record's own list (not from the summary,
    whose text the agent chose)."""
    for cut in approval.get("summary_cuts") or []:
        print(f"    NOT SHOWN: {cut['hidden']:,} more {cut['unit']} at {quoted(cut['pointer'] or '/')}")


def _show(args: argparse.Namespace) -> int:
    response = _call(args, "GET", f"/v1/approvals/{args.approval_id}")
    if response is None:
        return 1
    # ASCII with every control character escaped (JSON leaves DEL as it is): nothing raw reaches the terminal.
    print(json.dumps(response, indent=2, ensure_ascii=True).replace("\x7f", "\\u007f"))
    if response.get("summary_cuts"):
        print("WARNING: the request summary above is cut; the request holds more than it shows:", file=sys.stderr)
        for cut in response["summary_cuts"]:
            print(f"    {cut['hidden']:,} more {cut['unit']} at {quoted(cut['pointer'] or '/')}", file=sys.stderr)
    return 0


def _approve(args: argparse.Namespace) -> int:
    return _decide(args, "approve")


def _reject(args: argparse.Namespace) -> int:
    return _decide(args, "reject")


def _decide(args: argparse.Namespace, action: str) -> int:
    response = _call(args, "POST", f"/v1/approvals/{args.approval_id}/{action}", {"reason": args.reason})
    if response is None:
        return 1
    print(f"approval {quoted(response['id'])}: {quoted(response['status'])}")
    return 0


def _call(args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    # Imported here, not at the top: cli.py imports this module to register the commands, and
    # `serve` should not carry requests (and urllib3) in every sidecar's memory.
    import requests

    token = args.token or os.environ.get(TOKEN_ENV)
    if not token:
        print(f"authz-sidecar approvals: pass --token or set {TOKEN_ENV}", file=sys.stderr)
        return None
    try:
        response = requests.request(
            method, args.url.rstrip("/") + path, json=body, headers={"authorization": f"Bearer {token}"}, timeout=10
        )
    except requests.RequestException as exc:
        print(f"authz-sidecar approvals: {args.url} unreachable: {exc}", file=sys.stderr)
        return None
    if response.status_code >= 300:
        try:
            detail = response.json().get("error", response.text)
        except ValueError:
            detail = response.text
        print(f"authz-sidecar approvals: {response.status_code}: {quoted(detail)}", file=sys.stderr)
        return None
    return response.json()
