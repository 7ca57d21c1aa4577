r"""An audit as a terminal table, JSON, or one self-contained HTML file (no scripts, no external assets).

Everything shown comes from logs that agents fill (paths, tool names, reasons): the table escapes
control characters, so a tool named ``"\x1b[3A\x1b[J"`` cannot move the cursor and erase rows;
JSON escapes them itself, and HTML escapes markup and control characters alike.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import re
from typing import Any

from sidecar.audit.chain import Audit, Chain, group_counts

VERDICT_MARK = {"allow": "ALLOW", "deny": "DENY", "step_up": "STEP-UP", "error": "ERROR"}
# C0 and C1 controls, DEL, and the format characters that reorder or hide text (bidi overrides and
# isolates, line and paragraph separators, zero-width and byte-order marks).
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")


def printable(text: str) -> str:
    r"""``text`` with every control character written as an escape (``\x1b``, ``\u202e``)."""
    return CONTROL.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _e(text: str) -> str:
    """HTML-escaped and printable: markup and control characters never reach the page raw."""
    return html.escape(printable(text))


def as_json(audit: Audit) -> str:
    return json.dumps(audit.as_json(), indent=2, sort_keys=False)


def _when(at: float | None) -> str:
    if not at:
        return "?"
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def _short(text: str | None, width: int) -> str:
    text = printable(text or "-")  # escaped before measuring, so columns stay aligned
    return text if len(text) <= width else text[: width - 1] + "…"


def _agent(spiffe_id: str | None) -> str:
    return (spiffe_id or "-").removeprefix("spiffe://")


def as_table(audit: Audit) -> str:
    lines: list[str] = []
    for chain in audit.chains:
        lines += _chain_table(chain)
        lines.append("")
    unattributed = [g for g in audit.gaps if all(g not in c.gaps for c in audit.chains)]
    if unattributed:
        lines.append(f"GAPS no chain accounts for ({len(unattributed)})")
        lines += [f"  {_when(g.at)}  {printable(g.kind):<18} {printable(g.detail)}" for g in unattributed]
        lines.append("")
    if audit.unmatched:
        lines.append(f"OPA DECISIONS NO SIDECAR RECORD ACCOUNTS FOR ({len(audit.unmatched)}): not calls of the sidecar")
        lines += [f"  {_when(u.at)}  {printable(u.detail)}" for u in audit.unmatched]
        lines.append("")
    if audit.authzen:
        lines += _authzen_table(audit)
    totals = group_counts(audit.chains)
    lines.append(
        f"{len(audit.chains)} chain(s): {totals.get('calls', 0)} calls, {totals.get('allowed', 0)} allowed, "
        f"{totals.get('denied', 0)} denied, {totals.get('step_up', 0)} step-up, {totals.get('errors', 0)} errors, "
        f"{totals.get('credentials_minted', 0)} credentials minted, {len(audit.gaps)} gap(s)"
        + (f", {len(audit.unmatched)} OPA decision(s) without a sidecar record" if audit.unmatched else "")
    )
    # Each line is ours; anything a field smuggled into one (a newline too) is escaped here.
    return "\n".join(printable(line) for line in lines)


def _authzen_table(audit: Audit) -> list[str]:
    lines = [
        f"AUTHZEN EVALUATIONS ({len(audit.authzen)}): questions PEPs asked, not calls",
        f"  {'time':<24} {'caller':<24} {'subject':<32} {'action':<20} {'resource':<32} {'verdict':<7} reason / id",
    ]
    for a in audit.authzen:
        detail = a.error or (a.reasons[0] if a.reasons else "")
        lines.append(
            f"  {_when(a.at):<24} {_short(_agent(a.caller), 24):<24} {_short(a.subject, 32):<32} "
            f"{_short(a.action, 20):<20} {_short(a.resource, 32):<32} {_short(a.verdict, 7):<7} "
            f"{_short(detail, 100)}  [{printable(a.decision_id)}]"
        )
    return [*lines, ""]


def _chain_table(chain: Chain) -> list[str]:
    summary = chain.summary()
    title = f"{chain.kind.upper()} {printable(chain.subject)}"
    head = [
        title,
        f"  agents: {printable(', '.join(_agent(a) for a in summary['agents'])) or '-'}   "
        f"span: {_when(summary['first_at'])} .. {_when(summary['last_at'])}",
        f"  {summary['calls']} calls ({summary['allowed']} allowed, {summary['denied']} denied, "
        f"{summary['step_up']} step-up, {summary['errors']} errors), {summary['delegations']} delegation(s), "
        f"{summary['approvals_requested']} approval(s) requested / {summary['approvals_approved']} approved / "
        f"{summary['approvals_used']} used, {summary['credentials_minted']} credential(s) minted, "
        f"{summary['gaps']} gap(s)",
        f"  {'#':>3} {'time':<24} {'agent':<24} {'event':<15} {'what':<44} reason / ids",
    ]
    rows = []
    for number, entry in enumerate(chain.timeline(), 1):
        kind = VERDICT_MARK.get(entry.get("verdict", ""), "") if entry["kind"] == "call" else entry["kind"]
        detail = entry["reasons"][0] if entry.get("reasons") else ""
        if entry.get("decision_id"):
            detail = f"{detail}  [{entry['decision_id']}]" if detail else f"[{entry['decision_id']}]"
        rows.append(
            f"  {number:>3} {_when(entry['at']):<24} {_short(_agent(entry.get('agent')), 24):<24} "
            f"{_short(kind, 15):<15} {_short(entry['summary'], 44):<44} {_short(detail, 160)}"
        )
    return head + rows


CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2rem;color:#1d232a}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:2rem;border-bottom:1px solid #ccd}
table{border-collapse:collapse;width:100%;margin:.5rem 0}td,th{border:1px solid #dde;padding:.25rem .45rem;
vertical-align:top;text-align:left}th{background:#f3f4f8}code{font-size:12px}
.allow{color:#11693a;font-weight:600}.deny{color:#a3161b;font-weight:600}.step_up{color:#8a5a00;font-weight:600}
.error{color:#6b1fa3;font-weight:600}.gap{background:#fff1f1}.muted{color:#667}.card{display:inline-block;
margin:.2rem .8rem .2rem 0;padding:.3rem .6rem;background:#f3f4f8;border-radius:4px}
"""


def as_html(audit: Audit) -> str:
    e = _e
    totals = group_counts(audit.chains)
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        f"<title>authz-sidecar audit</title><style>{CSS}</style></head><body>",
        "<h1>authz-sidecar audit: what each agent did, and why each step was allowed</h1>",
        f"<p class='muted'>Generated {e(_when(dt.datetime.now(dt.UTC).timestamp()))} from "
        + ", ".join(f"<code>{e(path)}</code> ({e(kind)})" for path, kind in audit.sources.files.items())
        + f"; {audit.sources.skipped_lines} unrelated line(s) skipped. Tokens are never shown: "
        "credentials appear by the decision and task they were minted for.</p>",
        "<div>"
        + "".join(
            f"<span class='card'>{e(label)}: <b>{totals.get(key, 0)}</b></span>"
            for key, label in (
                ("calls", "calls"),
                ("allowed", "allowed"),
                ("denied", "denied"),
                ("step_up", "step-up"),
                ("errors", "errors"),
                ("credentials_minted", "credentials minted"),
            )
        )
        + f"<span class='card'>gaps: <b>{len(audit.gaps)}</b></span></div>",
    ]
    if audit.gaps:
        parts.append("<h2>Gaps: requests the upstream served that no allowed decision accounts for</h2><table>")
        parts.append("<tr><th>time</th><th>kind</th><th>detail</th></tr>")
        for gap in sorted(audit.gaps, key=lambda g: g.at):
            parts.append(
                f"<tr class='gap'><td>{e(_when(gap.at))}</td><td>{e(gap.kind)}</td><td>{e(gap.detail)}</td></tr>"
            )
        parts.append("</table>")
    if audit.unmatched:
        parts.append(
            "<h2>OPA decisions no sidecar record accounts for: something other than the sidecar asked OPA</h2>"
        )
        parts.append("<table><tr><th>time</th><th>decision id</th><th>detail</th></tr>")
        for unmatched in audit.unmatched:
            parts.append(
                f"<tr class='gap'><td>{e(_when(unmatched.at))}</td><td><code>{e(unmatched.decision_id)}</code></td>"
                f"<td>{e(unmatched.detail)}</td></tr>"
            )
        parts.append("</table>")
    if audit.authzen:
        parts.append("<h2>AuthZEN evaluations: questions PEPs asked, not calls</h2><table>")
        parts.append(
            "<tr><th>time</th><th>caller</th><th>subject</th><th>action</th><th>resource</th><th>verdict</th>"
            "<th>reasons</th><th>decision id</th></tr>"
        )
        for a in audit.authzen:
            reasons = "; ".join(a.reasons) or (a.error or "")
            parts.append(
                f"<tr><td>{e(_when(a.at))}</td><td>{e(a.caller or '-')}</td><td>{e(a.subject)}</td>"
                f"<td>{e(a.action or '-')}</td><td>{e(a.resource)}</td><td class='{e(a.verdict)}'>{e(a.verdict)}</td>"
                f"<td>{e(reasons)}</td><td><code>{e(a.decision_id)}</code></td></tr>"
            )
        parts.append("</table>")
    for chain in audit.chains:
        parts.append(_chain_html(chain))
    parts.append("</body></html>")
    return "\n".join(parts)


def _chain_html(chain: Chain) -> str:
    e = _e
    s = chain.summary()
    out = [f"<h2>{e(chain.kind)} <code>{e(chain.subject)}</code></h2>"]
    out.append(
        "<p>"
        + " ".join(
            f"<span class='card'>{e(str(k).replace('_', ' '))}: <b>{e(str(v))}</b></span>"
            for k, v in s.items()
            if k not in ("agents", "tools", "first_at", "last_at")
        )
        + f"<br><span class='muted'>agents: {e(', '.join(s['agents']) or '-')}; tools in order: "
        + f"{e(' → '.join(s['tools']) or '-')}; span {e(_when(s['first_at']))} to {e(_when(s['last_at']))}</span></p>"
    )
    tasks = sorted(chain.tasks, key=lambda t: t.opened_at or 0.0)
    if tasks:
        out.append("<table><tr><th>task</th><th>agent</th><th>delegated from</th><th>purpose</th><th>scopes</th>")
        out.append("<th>opened</th><th>ended</th></tr>")
        for task in tasks:
            out.append(
                f"<tr><td><code>{e(task.id)}</code></td><td>{e(task.agent or '-')}</td>"
                f"<td><code>{e(task.parent or '-')}</code></td><td>{e(task.purpose or '-')}</td>"
                f"<td>{e(', '.join(task.scopes) or '-')}</td><td>{e(_when(task.opened_at))}</td>"
                f"<td>{e(_when(task.ended_at) + ' ' + (task.end or '') if task.ended_at else '-')}</td></tr>"
            )
        out.append("</table>")
    out.append("<table><tr><th>#</th><th>time</th><th>agent</th><th>event</th><th>what</th><th>reasons</th>")
    out.append("<th>decision id</th></tr>")
    for number, entry in enumerate(chain.timeline(), 1):
        verdict = entry.get("verdict") or ""
        css = "gap" if entry["kind"] == "gap" else ""
        label = f"<span class='{e(verdict)}'>{e(verdict)}</span>" if entry["kind"] == "call" else e(entry["kind"])
        reasons = "<br>".join(e(r) for r in entry.get("reasons") or [])
        out.append(
            f"<tr class='{css}'><td>{number}</td><td>{e(_when(entry['at']))}</td>"
            f"<td>{e(entry.get('agent') or '-')}</td>"
            f"<td>{label}</td><td>{e(entry['summary'])}</td><td>{reasons}</td>"
            f"<td><code>{e(entry.get('decision_id') or '')}</code></td></tr>"
        )
    out.append("</table>")
    approvals = chain.approvals()
    if approvals:
        out.append("<table><tr><th>approval</th><th>requested by</th><th>decision</th><th>presented</th></tr>")
        for approval in approvals:
            out.append(
                f"<tr><td><code>{e(approval['id'])}</code></td><td>{e(_describe(approval.get('requested_by')))}</td>"
                f"<td>{e(_describe(approval.get('decision')))}</td>"
                f"<td>{'<br>'.join(e(_describe(p)) for p in approval.get('presented', [])) or '-'}</td></tr>"
            )
        out.append("</table>")
    return "\n".join(out)


def _describe(value: dict[str, Any] | None) -> str:
    if not value:
        return "-"
    return ", ".join(f"{k}={_when(v) if k == 'at' else v}" for k, v in value.items())
