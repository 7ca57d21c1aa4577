"""``authz-sidecar approvals list|show|approve|reject``: the approver API for operators (requests)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import requests

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
        what = a["summary"].get("tool") or f"{a['summary']['method']} {a['summary']['path']}"
        print(f"{a['id']}  {a['agent']}  {what}  data class {a['data_class']}  expires {a['expires_at']}")
        for reason in a["reasons"]:
            print(f"    {reason}")
    return 0


def _show(args: argparse.Namespace) -> int:
    response = _call(args, "GET", f"/v1/approvals/{args.approval_id}")
    if response is None:
        return 1
    print(json.dumps(response, indent=2))
    return 0


def _approve(args: argparse.Namespace) -> int:
    return _decide(args, "approve")


def _reject(args: argparse.Namespace) -> int:
    return _decide(args, "reject")


def _decide(args: argparse.Namespace, action: str) -> int:
    response = _call(args, "POST", f"/v1/approvals/{args.approval_id}/{action}", {"reason": args.reason})
    if response is None:
        return 1
    print(f"approval {response['id']}: {response['status']}")
    return 0


def _call(args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
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
        print(f"authz-sidecar approvals: {response.status_code}: {detail}", file=sys.stderr)
        return None
    return response.json()
