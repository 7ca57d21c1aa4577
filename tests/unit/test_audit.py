"""The audit tool on hand-written log lines: parsing, joining, gaps and escaping."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sidecar.audit import read_logs, reconstruct
from sidecar.audit.render import as_html, as_table
from sidecar.audit.sources import _time
from sidecar.events import DecisionEvent
from sidecar.logformat import parse_time

AGENT = "spiffe://demo.local/agent/writer"


def _decision(decision_id: str, verdict: str, path: str = "/api/tickets", method: str = "POST", **extra: Any) -> str:
    """A decision line as the sidecar writes it (its event's ``to_log()`` in the logger's envelope)."""
    event = DecisionEvent(
        time=parse_time("2026-01-02T03:04:05.100000Z"),
        decision_id=decision_id,
        request_id="",
        method=method,
        host="demo.local",
        path=path,
        agent=extra.pop("agent", AGENT),
        identity_source="xfcc",
        task=extra.pop("task", None),
        approval=None,
        mcp_method=None,
        tool=extra.pop("tool", None),
        verdict=verdict,
        status={"allow": 200, "deny": 403}.get(verdict, 503),
        stage=extra.pop("stage", "policy"),
        reasons=tuple(extra.pop("reasons", [f"{verdict} because"])),
        latency_ms=1.5,
        opa_ms=None,
    )
    assert not extra, extra
    return json.dumps({"level": "INFO", "logger": "authz.decision", "message": "decision"} | event.to_log())


def _opa(decision_id: str, result: Any, **input_extra: Any) -> str:
    event = {
        "decision_id": decision_id,
        "path": "agent/authz/decision",
        "timestamp": "2026-01-02T03:04:05.123456789Z",
        "result": result,
        "input": {"attributes": {}, "action": {"method": "GET", "path": "/api/docs/x"}, **input_extra},
        "bundles": {"authz": {"revision": "rev-7"}},
        "msg": "Decision Log",
    }
    return json.dumps(event)


def _upstream(decision_id: str | None, path: str = "/api/tickets", method: str = "POST", spiffe_id: str = AGENT) -> str:
    return json.dumps(
        {"time": 1767323045.5, "logger": "upstream.access", "method": method, "path": path, "status": 200}
        | {"decision_id": decision_id, "spiffe_id": spiffe_id, "credential": None}
    )


def _write(tmp_path: Path, name: str, lines: list[str]) -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def test_times_from_every_source() -> None:
    assert _time(1767323045.5) == 1767323045.5
    assert abs(_time("2026-01-02T03:04:05.123456789Z") - 1767323045.123456) < 1e-3
    assert _time("2026-01-02 03:04:05,100") == 0.0, "no zone: unknown, never read as local time"
    assert _time("yesterday") == 0.0 and _time(None) == 0.0


def test_gaps_and_joins(tmp_path: Path) -> None:
    sidecar = _write(
        tmp_path,
        "sidecar.log",
        [
            "Traceback (not JSON)",
            _decision("d-allow", "allow", task="t-1"),
            _decision("d-deny", "deny", task="t-1"),
            _decision("d-early", "deny", stage="identity", reasons=["no identity"]),
            _decision("d-no-opa", "allow", path="/api/docs/x", method="GET"),
        ],
    )
    opa = _write(
        tmp_path,
        "opa.log",
        [
            _opa("d-allow", {"verdict": "allow", "credential": {"audience": "up", "scopes": ["s"], "ttl_seconds": 5}}),
            _opa("d-deny", {"verdict": "deny", "reasons": ["no"]}),
            _opa("d-opa-only", {"verdict": "allow", "reasons": ["fine"]}, agent={"spiffe_id": AGENT}),
            json.dumps({"msg": "Server started", "level": "info"}),
        ],
    )
    upstream = _write(
        tmp_path,
        "upstream.log",
        [
            _upstream("d-allow"),
            _upstream("d-allow"),  # the same decision twice
            _upstream("d-deny"),  # served although denied
            _upstream(None, "/api/secret", "GET"),  # around Envoy
            _upstream("d-unknown"),
            _upstream("d-no-opa", "/api/docs/y", "GET"),  # another path than decided
            _upstream("d-opa-only", "/api/docs/x", "GET", spiffe_id="spiffe://demo.local/agent/reader"),
        ],
    )
    sources = read_logs(sidecar=[sidecar], opa=[opa], upstream=[upstream])
    assert sources.skipped_lines == 2
    audit = reconstruct(sources)
    kinds = sorted(g.kind for g in audit.gaps)
    assert kinds == [
        "different_request",
        "missing_opa_event",
        "no_decision",
        "not_allowed",
        "opa_only_decision",
        "replayed_decision",
        "unknown_decision",
    ]
    task_chain = next(c for c in audit.chains if c.key == "task:t-1")
    assert [c.decision_id for c in task_chain.calls] == ["d-allow", "d-deny"]
    assert task_chain.calls[0].credential == {
        "decision_id": "d-allow",
        "task_id": "t-1",
        "agent": AGENT,
        "audience": "up",
        "scopes": ["s"],
        "ttl_seconds": 5,
    }
    assert task_chain.calls[0].policy_revision == "rev-7"
    agent_chain = next(c for c in audit.chains if c.key == f"agent:{AGENT}")
    assert all(c.decision_id != "d-opa-only" for c in agent_chain.calls), "no sidecar record: not a call"
    assert [(u.decision_id, u.agent, u.verdict) for u in audit.unmatched] == [("d-opa-only", AGENT, "allow")]
    assert "something other than the sidecar asked OPA" in as_table(audit)
    early = next(c for c in agent_chain.calls if c.decision_id == "d-early")
    assert not early.opa_logged and all(g.decision_id != "d-early" for g in audit.gaps), "never asked OPA: no gap"


def test_hostile_text_is_escaped_in_html_and_kept_in_the_table(tmp_path: Path) -> None:
    hostile = "<script>alert(1)</script>"
    sidecar = _write(tmp_path, "sidecar.log", [_decision("d-1", "deny", path=f"/x/{hostile}", reasons=[hostile])])
    audit = reconstruct(read_logs(sidecar=[sidecar]))
    page = as_html(audit)
    assert hostile not in page and "&lt;script&gt;" in page
    assert "d-1" in as_table(audit)


ERASE = "\u001b[3A\u001b[J"  # cursor up three lines, erase to the end of the screen


def _hostile_audit(tmp_path: Path) -> Any:
    lines = [
        _decision("d-0", "allow", method="GET", path="/api/docs/a"),
        _decision("d-1", "deny", tool=ERASE, path="/mcp", reasons=[f"denied{ERASE}"], agent=f"{AGENT}\u202e"),
        _decision("d-2", "deny", path="/x\r\nALLOW  forged row\u0007", reasons=["fine\u0085\u2028next"]),
    ]
    opa = [_opa("d-1", {"verdict": "deny", "reasons": [f"no {ERASE}"]})]
    upstream = [_upstream(None, f"/api/{ERASE}", "GET")]  # a gap, listed with its path
    files = {"sidecar": [_write(tmp_path, "sidecar.log", lines)], "opa": [_write(tmp_path, "opa.log", opa)]}
    return reconstruct(read_logs(**files, upstream=[_write(tmp_path, "upstream.log", upstream)]))


def test_table_escapes_control_characters(tmp_path: Path) -> None:
    """A tool name (or path, reason, agent) of escape sequences cannot rewrite the terminal: every
    control character is printed as its escape, and injected line breaks add no rows."""
    audit = _hostile_audit(tmp_path)
    table = as_table(audit)
    printed = table.replace("\n", "")
    assert not [c for c in printed if ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or c in "\u202e\u2028"]
    assert "\\x1b[3A\\x1b[J" in table and "\\x0d\\x0aALLOW  forged row\\x07" in table
    assert "\\u202e" in table and "\\x85\\u2028" in table
    assert not any(line.startswith("ALLOW") for line in table.splitlines()), "no forged row"


def test_html_escapes_markup_and_control_characters(tmp_path: Path) -> None:
    audit = _hostile_audit(tmp_path)
    page = as_html(audit)
    assert "\u001b" not in page and "\u202e" not in page and "\u0007" not in page
    assert "\\x1b[3A\\x1b[J" in page
    hostile = "<script>alert(1)</script>"
    sidecar = _write(tmp_path, "markup.log", [_decision("d-3", "deny", path=f"/x/{hostile}{ERASE}")])
    page = as_html(reconstruct(read_logs(sidecar=[sidecar])))
    assert hostile not in page and "&lt;script&gt;" in page and "\u001b" not in page
