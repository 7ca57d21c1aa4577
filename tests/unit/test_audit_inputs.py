"""The audit reads what reviewers actually have: stdin, gzip, cluster log exports, time windows; and
it keeps OPA decisions no sidecar record accounts for apart from the calls. RFC 3339 UTC everywhere."""

from __future__ import annotations

import datetime as dt
import gzip
import io
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from sidecar.audit import read_logs, reconstruct
from sidecar.cli import main
from sidecar.events import DecisionEvent
from sidecar.logformat import parse_rfc3339, parse_time
from sidecar.logs import RedactingJsonFormatter, rfc3339

AGENT = "spiffe://demo.local/agent/reader"
T0 = "2026-03-04T10:00:00.000000Z"
T1 = "2026-03-04T11:00:00.000000Z"
T2 = "2026-03-04T12:00:00.000000Z"


def _decision(decision_id: str, at: str, path: str = "/api/docs/a") -> dict[str, Any]:
    event = DecisionEvent(
        time=parse_time(at),
        decision_id=decision_id,
        request_id="",
        method="GET",
        host="demo.local",
        path=path,
        agent=AGENT,
        identity_source="xfcc",
        task=None,
        approval=None,
        mcp_method=None,
        tool=None,
        verdict="allow",
        status=200,
        stage="policy",
        reasons=("read docs",),
        latency_ms=1.5,
        opa_ms=0.5,
    )
    return {"level": "INFO", "logger": "authz.decision", "message": "decision"} | event.to_log()


def _event(decision_id: str, at: str, path: str = "agent/authz/decision", **input_doc: Any) -> dict[str, Any]:
    return {
        "decision_id": decision_id,
        "path": path,
        "timestamp": at,
        "input": input_doc
        or {"attributes": {}, "agent": {"spiffe_id": AGENT}, "action": {"method": "GET", "path": "/x"}},
        "result": {"verdict": "allow", "reasons": ["fine"]},
        "labels": {"id": "opa-1", "pod": "agent-7d9f", "namespace": "agents"},
        "msg": "Decision Log",
    }


def _lines(*values: dict[str, Any]) -> str:
    return "".join(json.dumps(v) + "\n" for v in values)


def test_formatter_writes_rfc3339_utc() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(RedactingJsonFormatter("{asctime}{message}", style="{", rename_fields={"asctime": "time"}))
    logger = logging.getLogger("test.rfc3339")
    logger.addHandler(handler)
    try:
        logger.warning("hello")
    finally:
        logger.removeHandler(handler)
    written = json.loads(stream.getvalue())["time"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", written), written
    assert abs(parse_rfc3339(written) - dt.datetime.now(dt.UTC).timestamp()) < 5
    assert rfc3339(0) == "1970-01-01T00:00:00.000000Z"


def test_rfc3339_offsets_fractions_and_zone_less_times() -> None:
    assert parse_rfc3339("2026-01-02T03:04:05.123456789Z") == pytest.approx(1767323045.123456)
    assert parse_rfc3339("2026-01-02T04:04:05.5+01:00") == pytest.approx(1767323045.5)
    for bad in ("2026-01-02T03:04:05", "2026-01-02 03:04:05,100", "soon"):
        with pytest.raises(ValueError):
            parse_rfc3339(bad)


def test_stdin_gzip_and_cluster_exports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A cluster export: kubectl --prefix lines, a container runtime's JSON wrapper, gzip-compressed.
    export = tmp_path / "export.jsonl.gz"
    sidecar_line = json.dumps(_decision("d-1", T1))
    opa_line = json.dumps(_event("d-1", T1))
    wrapped = json.dumps({"log": json.dumps(_decision("d-2", T1, "/api/docs/b")) + "\n", "stream": "stdout"})
    text = f"[pod/agent-7d9f/authz-sidecar] {sidecar_line}\n{T1} {opa_line}\n{wrapped}\nplain text line\n"
    export.write_bytes(gzip.compress(text.encode()))
    out = tmp_path / "audit.json"
    assert main(["audit", "--log", str(export), "--format", "json", "--out", str(out)]) == 0
    audit = json.loads(out.read_text())
    calls = audit["chains"][0]["calls"]
    assert [(c["decision_id"], c["opa_logged"]) for c in calls] == [("d-1", True), ("d-2", False)]
    assert audit["sources"]["skipped_lines"] == 1

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(_lines(_decision("d-3", T1)).encode())))
    assert main(["audit", "--sidecar-log", "-", "--format", "json"]) == 0
    assert [c["decision_id"] for c in json.loads(capsys.readouterr().out)["chains"][0]["calls"]] == ["d-3"]


def test_since_and_until(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "sidecar.log"
    log.write_text(_lines(_decision("d-early", T0), _decision("d-mid", T1), _decision("d-late", T2)))
    assert main(["audit", "--sidecar-log", str(log), "--since", T1, "--until", T2, "--format", "json"]) == 0
    calls = json.loads(capsys.readouterr().out)["chains"][0]["calls"]
    assert [c["decision_id"] for c in calls] == ["d-mid"], "from --since inclusive to --until exclusive"
    assert main(["audit", "--sidecar-log", str(log), "--since", "1h", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["chains"] == [], "all of it is older than an hour"


@pytest.mark.parametrize(
    "extra",
    [
        ["--since", "yesterday"],
        ["--until", "2026-03-04T10:00:00"],  # no zone: not RFC 3339
        ["--since", T2, "--until", T1],
        ["--log", "-", "--opa-log", "-"],  # stdin once only
    ],
)
def test_bad_audit_arguments_exit_2(tmp_path: Path, extra: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "sidecar.log"
    log.write_text(_lines(_decision("d-1", T1)))
    assert main(["audit", "--sidecar-log", str(log), *extra]) == 2
    assert "authz-sidecar audit:" in capsys.readouterr().err


def test_corrupt_gzip_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "logs.gz"
    whole = gzip.compress(_lines(*(_decision(f"d-{n}", T1) for n in range(50))).encode())
    broken.write_bytes(whole[: len(whole) // 2])  # cut short: no end-of-stream marker
    assert main(["audit", "--log", str(broken)]) == 2
    assert "cannot read the logs" in capsys.readouterr().err


def test_opa_events_without_a_sidecar_record_are_not_calls(tmp_path: Path) -> None:
    sidecar = tmp_path / "sidecar.log"
    sidecar.write_text(
        _lines(
            _decision("d-check", T1),
            # The sidecar's own other queries: the task API, and a shadow evaluation of d-check.
            {"time": T1, "logger": "authz.opa", "message": "policy query", "decision_id": "o-task", "path": "p/t"},
            {
                "time": T1,
                "logger": "authz.shadow",
                "message": "shadow decision",
                "decision_id": "d-check",
                "shadow": {"verdict": "deny", "agree": False, "decision_id": "o-shadow", "path": "cand/decision"},
            },
        )
    )
    opa = tmp_path / "opa.log"
    opa.write_text(
        _lines(
            _event("d-check", T1),
            _event("o-task", T1, "agent/tasks/decision", operation="open", agent={"spiffe_id": AGENT}),
            _event("o-shadow", T1, "cand/decision"),
            _event("o-direct", T1),  # someone asked OPA itself
        )
    )
    audit = reconstruct(read_logs(sidecar=[sidecar], opa=[opa]))
    assert [u.decision_id for u in audit.unmatched] == ["o-direct"]
    assert audit.unmatched[0].labels["pod"] == "agent-7d9f" and "agent-7d9f" in audit.unmatched[0].detail
    calls = [c for chain in audit.chains for c in chain.calls]
    assert [c.decision_id for c in calls] == ["d-check"]
    assert calls[0].shadow is not None and calls[0].shadow["verdict"] == "deny"
    assert "shadow policy: deny" in json.dumps(audit.chains[0].timeline())

    # Without the sidecar's log nothing can be matched: OPA's events are the calls, as before.
    only_opa = reconstruct(read_logs(opa=[opa]))
    assert only_opa.unmatched == []
    assert "o-direct" in {c.decision_id for chain in only_opa.chains for c in chain.calls}
