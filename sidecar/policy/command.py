"""``authz-sidecar policy bundle``, ``policy replay`` and ``policy explain``.

Exit status: bundle 0, 2 when ``opa build`` fails; replay 0 when no compared decision changed,
1 when one did; explain 0; both 2 on bad input (a missing file, no events, an unknown decision
id, a bundle OPA cannot load).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from sidecar.audit.render import printable
from sidecar.audit.sources import STDIN
from sidecar.policy.engine import Bundle, EngineError
from sidecar.policy.events import LogError, read_events

DEFAULT_SOURCE = Path("rego")


def add_command(commands: Any) -> None:
    """Register ``policy`` on the top-level subparsers."""
    policy = commands.add_parser("policy", help="replay decision logs against a candidate policy; explain a decision")
    actions = policy.add_subparsers(dest="policy_command", required=True)

    bundle = actions.add_parser("bundle", help="build a policy directory into a signed, revisioned bundle")
    bundle.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="policy directory (default ./rego)")
    bundle.add_argument("--out", type=Path, default=Path("build/bundle/authz.tar.gz"))
    bundle.add_argument("--revision", help="bundle revision (default: the source's git sha and the UTC time)")
    bundle.add_argument(
        "--key-dir", type=Path, required=True, help="where bundle-signing.key/.pub live; created if missing"
    )
    bundle.set_defaults(run=_bundle)

    replay = actions.add_parser(
        "replay",
        help="re-decide every input of a decision log with a candidate bundle and report what changed",
        description="Every input in OPA's decision log (console lines or the receiver's JSON lines; gzip or - for "
        "stdin) is decided again by a real OPA on the candidate bundle, at the time it was recorded, and compared "
        "with what OPA decided then. Exit status 0: nothing changed; 1: something changed; 2: error.",
    )
    replay.add_argument("--bundle", type=Path, required=True, help="candidate bundle: a directory or a .tar.gz")
    replay.add_argument("--log", type=Path, required=True, help="OPA decision-log file (.gz too), or - for stdin")
    replay.add_argument("--path", help="only events of this decision path (default: every path in the log)")
    replay.add_argument("--json", action="store_true", help="print a JSON object (compared, changed, masked, ...)")
    replay.set_defaults(run=_replay)

    explain = actions.add_parser(
        "explain",
        help="which rules decided a logged decision, and why (opa eval --explain=full, the policy's lines only)",
    )
    explain.add_argument("decision_id", help="the decision id (x-authz-decision-id, decision_id in the logs)")
    explain.add_argument("--log", type=Path, required=True, help="OPA decision-log file (.gz too), or - for stdin")
    explain.add_argument("--bundle", type=Path, default=DEFAULT_SOURCE, help="bundle to explain with (default ./rego)")
    explain.add_argument("--json", action="store_true", help="print a JSON object")
    explain.set_defaults(run=_explain)


def _bundle(args: argparse.Namespace) -> int:
    from sidecar.executables import ToolMissing
    from sidecar.policy.bundle import BundleBuildError, SigningKey, build_bundle, default_revision

    if not args.source.is_dir():
        return _fail("bundle", f"no such policy directory: {args.source}")
    key = SigningKey.ensure(args.key_dir)
    revision = args.revision or default_revision(args.source)
    try:
        out = build_bundle(args.source, args.out, revision, key)
    except (BundleBuildError, ToolMissing) as exc:
        return _fail("bundle", str(exc))
    print(f"built {out} (revision {revision}), signed with {key.private}; OPA verifies it with {key.public}")
    return 0


def _replay(args: argparse.Namespace) -> int:
    from sidecar.policy.replay import as_text, replay

    try:
        log, bundle = _inputs(args)
        try:
            report = replay(log, bundle, str(args.log), args.path)
        finally:
            bundle.close()
    except (LogError, EngineError) as exc:
        return _fail("replay", str(exc))
    if report.events == 0:
        return _fail("replay", f"no decision-log event at path {args.path!r} in {args.log}")
    print(json.dumps(report.as_json(), indent=2) if args.json else as_text(report))
    return 1 if report.changed else 0


def _explain(args: argparse.Namespace) -> int:
    from sidecar.policy.explain import as_text, explain_decision

    try:
        log, bundle = _inputs(args)
        try:
            event = next((e for e in log.events if e.decision_id == args.decision_id), None)
            if event is None:
                return _fail("explain", f"no decision {args.decision_id!r} in {args.log} ({len(log.events)} events)")
            explanation = explain_decision(event, bundle)
        finally:
            bundle.close()
    except (LogError, EngineError) as exc:
        return _fail("explain", str(exc))
    print(json.dumps(explanation.as_json(), indent=2) if args.json else as_text(explanation))
    return 0


def _inputs(args: argparse.Namespace) -> tuple[Any, Bundle]:
    if args.log != STDIN and not args.log.is_file():
        raise LogError(f"no such file: {args.log}")
    if not args.bundle.exists():
        raise EngineError(f"no such bundle: {args.bundle}")
    log = read_events(args.log)
    if not log.events:
        raise LogError(f"{args.log} holds no OPA decision-log event ({log.skipped_lines} other line(s))")
    return log, Bundle(args.bundle)


def _fail(command: str, message: str) -> int:
    lines = [printable(line) for line in message.splitlines()] or [""]
    print(f"authz-sidecar policy {command}: " + "\n  ".join(lines), file=sys.stderr)
    return 2
