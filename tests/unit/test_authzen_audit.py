"""AuthZEN evaluations reach the decision log as the sidecar writes it, and the audit shows them."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

from spiffe import SpiffeId

from sidecar.audit.chain import reconstruct
from sidecar.audit.render import as_html, as_json, as_table
from sidecar.audit.sources import read_logs
from sidecar.authzen.evaluate import Outcome
from sidecar.authzen.log import log_outcome
from sidecar.authzen.model import Evaluation
from sidecar.events import AUTHZEN_LOGGER
from sidecar.identity import Identity
from sidecar.logs import json_formatter

PEP = "spiffe://demo.local/pep/gateway"
READER = "spiffe://demo.local/agent/reader"


def _logged(tmp_path: Path) -> Path:
    """Two evaluations logged through the sidecar's own formatter, plus OPA's event for one of them."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(json_formatter(()))  # the formatter setup_logging installs
    logger = logging.getLogger(AUTHZEN_LOGGER)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    caller = Identity(SpiffeId(PEP), "jwt_svid")
    question = Evaluation(
        {"type": "agent", "id": READER, "properties": {"email": "secret@example.com"}},
        {"name": "GET"},
        {"type": "route", "id": "/api/docs/handbook"},
        {"token": "do-not-log"},
    )
    try:
        log_outcome(
            Outcome(question, True, {"reasons": ["route allows"]}, "d-1"), caller, "evaluation", "r-1", None, None
        )
        denied = Evaluation(question.subject, {"name": "POST"}, {"type": "route", "id": "/api/tickets"}, {})
        log_outcome(Outcome(denied, False, {"reasons": ["needs a task"]}, "d-2"), caller, "evaluations", None, "b", 0)
    finally:
        logger.removeHandler(handler)
    opa_event = {"decision_id": "d-1", "path": "authzen/decision", "input": {}, "result": {"decision": True}}
    log = tmp_path / "sidecar.log"
    log.write_text(stream.getvalue() + json.dumps(opa_event) + "\n")
    return log


def test_the_log_line_names_caller_and_evaluation_but_not_properties_or_context(tmp_path: Path) -> None:
    lines = [json.loads(line) for line in _logged(tmp_path).read_text().splitlines()[:2]]
    assert lines[0]["logger"] == "authz.authzen"
    assert lines[0]["caller"] == PEP and lines[0]["decision_id"] == "d-1" and lines[0]["request_id"] == "r-1"
    assert lines[0]["subject"] == {"type": "agent", "id": READER}
    assert "secret@example.com" not in json.dumps(lines) and "do-not-log" not in json.dumps(lines)


def test_the_audit_shows_evaluations_and_accounts_for_their_opa_events(tmp_path: Path) -> None:
    sources = read_logs(mixed=[_logged(tmp_path)])
    audit = reconstruct(sources)
    assert [(a.decision_id, a.verdict, a.caller) for a in audit.authzen] == [
        ("d-1", "allow", PEP),
        ("d-2", "deny", PEP),
    ]
    assert audit.unmatched == []  # OPA's event for d-1 is the evaluation's, not a stranger's query
    table = as_table(audit)
    assert "AUTHZEN EVALUATIONS (2)" in table and "needs a task  [d-2]" in table
    assert json.loads(as_json(audit))["authzen_evaluations"][1]["resource"] == "route:/api/tickets"
    assert "<code>d-2</code>" in as_html(audit)
    assert [a.decision_id for a in reconstruct(sources, agent=READER).authzen] == ["d-1", "d-2"]  # the subject
    assert len(reconstruct(sources, agent=PEP).authzen) == 2  # the caller
    assert reconstruct(sources, agent="spiffe://demo.local/agent/writer").authzen == []
