"""Attacks on the request line and headers: path and host tricks, method overrides, header injection.

The invariant for path and host tricks: whatever Envoy routes is exactly what the policy judged.
So each case either is refused by Envoy before anyone judges it, or the decision's
``input.action`` (from OPA's decision log) names the very path and host the upstream served
(from the upstream's access line), and the rule that allowed it is the one for that path.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from sidecar.input import normalise_host
from tests.adversarial.conftest import READER, WRITER, Attacker, verdict

pytestmark = [pytest.mark.e2e, pytest.mark.adversarial]

TASK = "x-agent-task-token"


def _get(attacker: Attacker, target: str, *extra: str, agent: str = READER) -> tuple[int, dict[str, str], bytes]:
    headers = ["Host: demo.local", f"Authorization: Bearer {attacker.token(agent)}", *extra]
    return attacker.raw_request(f"GET {target} HTTP/1.1", headers)


# target -> (what Envoy routes it as, or None when Envoy refuses it), why
PATH_TRICKS: dict[str, tuple[str | None, str]] = {
    "/api/docs/%2e%2e/tickets": ("/api/tickets", "encoded dot segments are decoded and removed before judging"),
    "/api/docs/%2E%2E/tickets": ("/api/tickets", "upper-case percent encoding too"),
    "/api/docs/.%2e/tickets": ("/api/tickets", "half-encoded dot segment"),
    "/api/docs/x/../../tickets": ("/api/tickets", "plain dot segments"),
    "/api//docs//handbook": ("/api/docs/handbook", "merge_slashes: // is one separator for Envoy and the policy"),
    "/api/docs;/../tickets": ("/api/tickets", "';' is an ordinary character in a segment"),
    "/api/docs/..;/tickets": ("/api/tickets", "'..;' is read as a dot segment by Envoy, and judged as such"),
    "/api/docs/%252e%252e/tickets": ("/api/docs/%2e%2e/tickets", "double encoding is decoded once, like the upstream"),
    "/api/docs/x?next=../../tickets": ("/api/docs/x", "a query is not part of the path"),
    "/api/docs/%2f..%2ftickets": (None, "encoded slashes are refused (path_with_escaped_slashes_action)"),
    "/api/docs/%2F..%2Ftickets": (None, "upper-case encoded slashes too"),
    "/api/docs/%5c..%5ctickets": (None, "encoded backslashes are refused"),
    "/api/docs\\..\\tickets": ("/api/tickets", "Envoy reads a raw backslash as '/', and so is it judged"),
    "/api/docs/x%00": (None, "an encoded NUL"),
    "/api/tickets#/../docs/x": (None, "a fragment in the request target"),
    "/api/docs/x#frag": (None, "any fragment"),
    # Path parameters that survive normalisation: Tomcat, Jetty and Spring strip ";..." from a
    # segment, Envoy does not, so Envoy's route refuses them before any decision.
    "/api/docs/handbook;jsessionid=1": (None, "a path parameter on the last segment"),
    "/api/docs;v=1/handbook": (None, "a path parameter inside the path"),
    "/api/docs/..%3B/records/1": (None, "an encoded ';' after '..' (a lenient server decodes it)"),
    "/api/docs/%3b/records/1": (None, "a lower-case encoded ';'"),
    "/api/docs/.;/records/1": ("/api/docs/records/1", "'.;' is a dot segment for Envoy too"),
    "/api/docs/..;x/records/1": ("/api/records/1", "Envoy reads '..;x' as a dot segment, and so is it judged"),
}


@pytest.mark.parametrize("target", sorted(PATH_TRICKS))
def test_path_tricks_are_judged_as_routed(attacker: Attacker, target: str) -> None:
    routed, why = PATH_TRICKS[target]
    status, headers, body = _get(attacker, target)
    if routed is None:
        assert status == 400, f"{why}: got {status}"
        assert "x-authz-decision-id" not in headers, "refused by Envoy before any decision"
        return
    assert status == 200, f"{why}: {status} {body[:200]!r}"
    decision_id = headers["x-authz-decision-id"]
    judged = attacker.opa_event(decision_id)["input"]["action"]
    served = attacker.upstream_saw(decision_id)
    assert judged["path"] == served["path"] == routed, why
    rule = json.loads(body)["upstream_saw"]["rule"]
    rules = {"/api/tickets": "list tickets", "/api/records/1": "read record"}
    assert rule == rules.get(routed, "read docs"), why


def test_dot_dot_semicolon_is_judged_as_the_record_it_reaches(attacker: Attacker) -> None:
    """``/api/docs/..;/records/1``: a parameter-stripping server serves /api/records/1, so that
    is what must be judged: under the "read record" rule, with its restricted label remembered,
    never under "read docs"."""
    status, headers, body = _get(attacker, "/api/docs/..;/records/1")
    decision_id = headers["x-authz-decision-id"]
    event = attacker.opa_event(decision_id)
    assert event["input"]["action"]["path"] == attacker.upstream_saw(decision_id)["path"] == "/api/records/1"
    assert status == 200, body[:200]
    assert json.loads(body)["upstream_saw"]["rule"] == "read record"
    assert "pii_read" in event["result"]["remember"], "the restricted read is remembered for the ratchet"


@pytest.mark.parametrize("method", ["get", "Get", "pOST", "delete"])
def test_lower_case_methods_never_reach_a_decision_or_the_upstream(attacker: Attacker, method: str) -> None:
    """Servers disagree on lower-case methods (some upper-case them): refused before any decision."""
    before = len(attacker.upstream_lines())
    status, headers, _ = attacker.raw_request(
        f"{method} /api/docs/handbook HTTP/1.1", ["Host: demo.local", f"Authorization: Bearer {attacker.token(READER)}"]
    )
    assert status == 400
    assert "x-authz-decision-id" not in headers
    assert len(attacker.upstream_lines()) == before


@pytest.mark.parametrize(
    "target",
    [
        pytest.param("/api/docs/%2e%2e/tickets", id="encoded-dot-dot"),
        pytest.param("/api/docs/..;/tickets", id="dot-dot-semicolon"),
        pytest.param("/api//docs/../tickets", id="double-slash-then-dot-dot"),
    ],
)
def test_reader_cannot_write_by_walking_out_of_docs(attacker: Attacker, target: str) -> None:
    """The reader may touch /api/docs/**; a write that walks out of it is judged as POST /api/tickets."""
    token = attacker.token(READER)
    status, headers, _ = attacker.raw_request(
        f"POST {target} HTTP/1.1",
        ["Host: demo.local", f"Authorization: Bearer {token}", "Content-Type: application/json", "Content-Length: 2"],
        b"{}",
    )
    assert status == 403
    assert attacker.opa_event(headers["x-authz-decision-id"])["input"]["action"]["path"] == "/api/tickets"


@pytest.mark.parametrize(
    ("target", "why"),
    [
        pytest.param(
            "/API/docs/handbook", "paths are case-sensitive for Envoy, the policy and the upstream", id="upper"
        ),
        pytest.param("/api/Docs/handbook", "a mixed-case segment matches no rule", id="mixed"),
        pytest.param(
            "/api/tickets/.", "a trailing dot segment leaves an odd path that is never judged as allowed", id="dot"
        ),
    ],
)
def test_case_and_odd_segments_match_no_rule(attacker: Attacker, target: str, why: str) -> None:
    status, _, body = _get(attacker, target)
    assert status == 403, f"{why}: {status} {body[:200]!r}"


@pytest.mark.parametrize(
    ("request_target", "host", "why"),
    [
        pytest.param(
            "/api/docs/x", "Demo.Local.", "a trailing dot and upper case name the same host", id="trailing-dot"
        ),
        pytest.param("/api/docs/x", "demo.local.:8443", "port and trailing dot", id="trailing-dot-and-port"),
        pytest.param(
            "http://tools.example./api/docs/x", "other.example", "absolute form wins over Host", id="absolute"
        ),
    ],
)
def test_host_is_judged_as_routed(attacker: Attacker, request_target: str, host: str, why: str) -> None:
    token = attacker.token(READER)
    status, headers, _ = attacker.raw_request(
        f"GET {request_target} HTTP/1.1", [f"Host: {host}", f"Authorization: Bearer {token}"]
    )
    assert status == 200
    decision_id = headers["x-authz-decision-id"]
    judged = attacker.opa_event(decision_id)["input"]["action"]["host"]
    served = attacker.upstream_saw(decision_id)["host"]
    assert not served.split(":")[0].endswith("."), "Envoy strips the trailing dot before routing"
    assert judged == normalise_host(served), why


def test_two_host_headers_are_refused(attacker: Attacker) -> None:
    """Envoy joins two Host headers into one value; which host is meant is ambiguous (RFC 9112
    allows exactly one), so the sidecar refuses the request instead of judging a guess."""
    token = attacker.token(READER)
    status, _headers, body = attacker.raw_request(
        "GET /api/docs/x HTTP/1.1", ["Host: demo.local", "Host: evil.example", f"Authorization: Bearer {token}"]
    )
    assert status == 400, body
    assert b"more than one Host header" in body, "refused by the sidecar, with the reason"


# -- methods ----------------------------------------------------------------------------


@pytest.mark.parametrize("header", ["X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override"])
def test_method_override_headers_never_reach_the_upstream(attacker: Attacker, header: str) -> None:
    """GET is judged; a framework that honours the override would DELETE. Envoy removes the header."""
    response = attacker.send("GET", "/api/docs/x", {**attacker.bearer(READER), header: "DELETE"})
    assert response.status_code == 200
    decision_id = response.headers["x-authz-decision-id"]
    assert attacker.opa_event(decision_id)["input"]["action"]["method"] == "GET"
    saw = attacker.upstream_saw(decision_id)
    assert saw["method"] == "GET" and saw["method_override"] == []


@pytest.mark.parametrize(
    "header",
    [
        "X-Original-URL",
        "X-Rewrite-URL",
        "X-Original-URI",
        "X-Original-Path",
        "X-Forwarded-URI",
        "X-Forwarded-Path",
        "X-Forwarded-Prefix",
        "X-Envoy-Original-Path",
        "X-Envoy-Original-URL",
        "X-Original-Method",
    ],
)
def test_url_override_headers_never_reach_the_upstream(attacker: Attacker, header: str) -> None:
    """/api/docs/x is judged; IIS, Symfony, Laravel and Spring would serve the header's target
    (or method) instead. Envoy removes every such header before the upstream."""
    value = "DELETE" if header.endswith("Method") else "/api/records/1"
    response = attacker.send("GET", "/api/docs/x", {**attacker.bearer(READER), header: value})
    assert response.status_code == 200
    saw = attacker.upstream_saw(response.headers["x-authz-decision-id"])
    assert saw["path"] == "/api/docs/x"
    assert saw["target_override"] == [] and saw["method_override"] == [], f"{header} reached the upstream"


@pytest.mark.parametrize(
    ("line", "status", "why"),
    [
        pytest.param("get /api/docs/x HTTP/1.1", 400, "methods are case-sensitive tokens", id="lower-case-method"),
        pytest.param("PROPFIND /api/docs/x HTTP/1.1", 403, "no rule allows an unknown method", id="webdav-method"),
        pytest.param("TRACE /api/docs/x HTTP/1.1", 403, "TRACE is not a read the policy allows", id="trace"),
    ],
)
def test_unusual_methods(attacker: Attacker, line: str, status: int, why: str) -> None:
    got, _, _ = attacker.raw_request(line, ["Host: demo.local", f"Authorization: Bearer {attacker.token(READER)}"])
    assert got == status, why


def test_request_smuggling_te_and_cl_is_refused(attacker: Attacker) -> None:
    """Content-Length and Transfer-Encoding together: two parsers could split the stream differently."""
    status, _, _ = attacker.raw_request(
        "POST /api/tickets HTTP/1.1",
        [
            "Host: demo.local",
            f"Authorization: Bearer {attacker.token(READER)}",
            "Content-Length: 4",
            "Transfer-Encoding: chunked",
        ],
        b"0\r\n\r\n",
    )
    assert status == 400


# -- header injection into identity and upstream credentials -----------------------------


@pytest.mark.parametrize(
    "spoof",
    [
        pytest.param({"X-AuthZ-SPIFFE-ID": WRITER}, id="spiffe-id-mixed-case"),
        pytest.param({"x-authz-decision-id": "approved-by-admin"}, id="decision-id"),
        pytest.param({"x-authz-rule": "admin", "x-authz-credential": "Bearer x"}, id="rule-and-credential"),
    ],
)
def test_spoofed_authz_headers_are_replaced_or_removed(attacker: Attacker, spoof: dict[str, str]) -> None:
    response = attacker.send("GET", "/api/docs/x", {**attacker.bearer(READER), **spoof})
    assert response.status_code == 200
    saw = response.json()["upstream_saw"]
    assert saw["spiffe_id"] == READER
    assert saw["decision_id"] == response.headers["x-authz-decision-id"]
    assert saw["rule"] == "read docs"


@pytest.mark.parametrize("name", ["x_authz_spiffe_id", "x_agent_task_token", "x_http_method_override"])
def test_underscore_header_names_are_refused(attacker: Attacker, name: str) -> None:
    """CGI/WSGI upstreams read x_authz_spiffe_id as x-authz-spiffe-id; Envoy refuses such names."""
    status, _, _ = _get(attacker, "/api/docs/x", f"{name}: {WRITER}")
    assert status == 400


@pytest.mark.parametrize(
    ("lines", "why"),
    [
        pytest.param(["X-Agent-Purpose: a\rAuthorization: Bearer x"], "a bare CR inside a value", id="bare-cr"),
        pytest.param(["X-Agent-Purpose: a\x00Authorization: Bearer x"], "a NUL inside a value", id="nul"),
        pytest.param(["X-Agent-Purpose : read"], "whitespace before the colon", id="space-before-colon"),
        pytest.param(["X-Agent-Purpose: read", " Authorization: Bearer x"], "an obs-fold continuation", id="obs-fold"),
    ],
)
def test_malformed_header_lines_cannot_inject_a_header(attacker: Attacker, lines: list[str], why: str) -> None:
    """Refused by Envoy, or the injected text stays inside the first header's value: no Authorization
    header of its own reaches the sidecar (the identity stays the reader's) or the upstream."""
    status, headers, _ = _get(attacker, "/api/docs/x", *lines)
    if status == 400:
        return
    assert status == 200, why
    decision_id = headers["x-authz-decision-id"]
    assert attacker.opa_event(decision_id)["input"]["agent"]["spiffe_id"] == READER, why
    assert attacker.upstream_saw(decision_id)["authorization_present"] is False, why


def test_mtls_callers_own_authorization_never_reaches_the_upstream(attacker: Attacker) -> None:
    """Beside an mTLS identity, the caller's Basic credential (its long-lived key) is removed upstream."""
    response = attacker.ingress(READER, "GET", "/api/docs/x", headers={"authorization": "Basic YWdlbnQ6aHVudGVyMg=="})
    assert response.status_code == 200, response.text
    assert response.json()["upstream_saw"]["authorization_present"] is False


def test_mtls_write_sends_only_the_minted_credential(attacker: Attacker) -> None:
    """The caller's own Authorization is replaced by the sidecar's credential, never sent beside it."""
    task = attacker.open_task(WRITER, "triage", ["tickets:write"])
    headers = {"authorization": "Basic YWdlbnQ6aHVudGVyMg==", TASK: task["token"]}
    response = attacker.ingress(WRITER, "POST", "/api/tickets", json={"t": 1}, headers=headers)
    assert response.status_code == 201, response.text
    credential: dict[str, Any] = response.json()["upstream_saw"]["credential"]
    assert credential["sub"] == WRITER and credential["aud"] == "demo-upstream"
    assert credential["scope"] == "tickets:write"


def test_egress_write_replaces_the_jwt_svid_with_the_credential(attacker: Attacker) -> None:
    task = attacker.open_task(WRITER, "triage", ["tickets:write"])
    response = attacker.send("POST", "/api/tickets", {**attacker.bearer(WRITER), TASK: task["token"]}, json={})
    assert response.status_code == 201
    saw = response.json()["upstream_saw"]
    assert saw["credential"]["decision_id"] == response.headers["x-authz-decision-id"]
    assert saw["task_token_present"] is False, "the task token is for the sidecar only"


def test_stolen_credential_in_authorization_is_not_an_identity(attacker: Attacker) -> None:
    """A credential minted for the writer, replayed by someone as their bearer token: not a JWT-SVID."""
    task = attacker.open_task(WRITER, "triage", ["tickets:write"])
    assert attacker.send("POST", "/api/tickets", {**attacker.bearer(WRITER), TASK: task["token"]}).status_code == 201
    stolen = attacker.upstream_credential()
    response = attacker.send("GET", "/api/docs/x", {"authorization": f"Bearer {stolen}"})
    assert response.status_code == 401
    assert verdict(response)["verdict"] == "deny"
