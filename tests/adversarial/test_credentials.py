"""Attacks with minted credentials: one captured for a request, spent on another (docs/tokens.md).

A credential the sidecar minted for ``POST /api/tickets`` (no step-up) must not buy a
``DELETE /api/records/…`` (needs a human approval) or a ``POST /api/payments`` (needs MFA), nor
another body, query or tool. The demo upstream, the reference for upstream authors, recomputes
the binding (``req_method``, ``req_target``, ``req_body_sha256``) from what it received and
refuses any other request before it spends the ``jti``.

A credential travels to the upstream and is spent there at once; one captured on its way (a
log, a proxy, a slow upstream) is still unspent. The cases get such a credential the way Envoy
does, from the sidecar's answer to a check request, and replay it straight to the upstream.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from typing import Any

import jwt
import pytest

from tests.adversarial.conftest import WRITER, Attacker

pytestmark = [pytest.mark.e2e, pytest.mark.adversarial]

TASK = "x-agent-task-token"
TICKET = b'{"title": "printer on fire"}'


def _sha256(body: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(body).digest()).rstrip(b"=").decode()


def _mcp(tool: str, arguments: dict[str, Any]) -> bytes:
    message = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": tool, "arguments": arguments}}
    return json.dumps(message).encode()


@pytest.fixture
def task(attacker: Attacker) -> dict[str, Any]:
    """A fresh task per case: the shipped policy allows 10 writes per task."""
    return attacker.open_task(WRITER, "triage", ["tickets:write", "docs:read"])


def _headers(attacker: Attacker, task: dict[str, Any], path: str) -> dict[str, str]:
    headers = {**attacker.bearer(WRITER), TASK: task["token"], "content-type": "application/json"}
    if path == "/mcp":
        headers["mcp-method"] = "tools/call"
    return headers


def captured(attacker: Attacker, task: dict[str, Any], method: str, path: str, body: bytes) -> str:
    """An unspent credential for ``method path body``: the sidecar's answer to the check Envoy makes."""
    headers = {**_headers(attacker, task, path), "host": f"127.0.0.1:{attacker.stack.ports.egress}"}
    answer = attacker.stack.check(method, path, headers, body)
    assert answer.status_code == 200, answer.text
    token: str = answer.headers["authorization"].removeprefix("Bearer ")
    assert jwt.get_unverified_header(token)["typ"] == "at+jwt"
    return token


class Answer:
    def __init__(self, status: int, body: bytes) -> None:
        self.status_code, self.text = status, body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.text)


def at_upstream(attacker: Attacker, method: str, path: str, token: str, body: bytes = b"", **headers: str) -> Answer:
    """Straight to the upstream, around Envoy, as the agent holding a captured credential would;
    bytes as they are (requests would decode ``%74`` in a path)."""
    sent = {"authorization": f"Bearer {token}", "content-type": "application/json", **headers}
    head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in sent.items())]
    head += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    status, _, answer = attacker.raw("\r\n".join(head).encode("latin-1") + body, attacker.stack.ports.upstream)
    return Answer(status, answer)


def test_the_bound_request_is_served(attacker: Attacker, task: dict[str, Any]) -> None:
    """Baseline: through Envoy the credential carries the request, and the upstream accepts it."""
    response = attacker.send("POST", "/api/tickets?priority=high&b=%2F", _headers(attacker, task, ""), data=TICKET)
    assert response.status_code == 201, response.text
    credential = response.json()["upstream_saw"]["credential"]
    assert credential["req_method"] == "POST"
    assert credential["req_target"] == "/api/tickets?priority=high&b=%2F"
    assert credential["req_body_sha256"] == _sha256(TICKET)


def _chunks() -> Iterator[bytes]:
    yield TICKET[:9]
    yield TICKET[9:]


@pytest.mark.parametrize(
    ("line", "body", "why"),
    [
        pytest.param(
            "POST //api/./tickets", TICKET, "Envoy normalises the path before the check", id="normalised-path"
        ),
        pytest.param("POST /api/tickets", b"", "an empty body is bound too", id="empty-body"),
    ],
)
def test_the_binding_is_what_the_upstream_receives(
    attacker: Attacker, task: dict[str, Any], line: str, body: bytes, why: str
) -> None:
    """The sidecar binds the form the upstream receives, so legitimate calls are not refused."""
    headers = [f"{k}: {v}" for k, v in _headers(attacker, task, "").items()]
    headers += ["Host: tools.example", f"Content-Length: {len(body)}"]
    status, _, answer = attacker.raw_request(f"{line} HTTP/1.1", headers, body)
    assert status == 201, f"{why}: {answer[:300]!r}"
    saw = json.loads(answer)["upstream_saw"]
    assert saw["credential"]["req_target"] == saw["target"] == "/api/tickets"


def test_a_chunked_body_is_bound_to_the_bytes_the_upstream_reads(attacker: Attacker, task: dict[str, Any]) -> None:
    response = attacker.send("POST", "/api/tickets", _headers(attacker, task, ""), data=_chunks())
    assert response.status_code == 201, response.text
    assert response.json()["upstream_saw"]["credential"]["req_body_sha256"] == _sha256(TICKET)


MISUSES = {
    # what the attacker sends instead: (method, path, body, extra headers), the part that differs
    "delete-a-record": (("DELETE", "/api/records/42", b"", {}), "method 'DELETE', minted for 'POST'"),
    "make-a-payment": (("POST", "/api/payments", b'{"amount": 10000}', {}), "request target"),
    "another-body": (("POST", "/api/tickets", b'{"title": "refund everyone"}', {}), "body differs"),
    "same-body-reformatted": (("POST", "/api/tickets", b'{"title":"printer on fire"}', {}), "body differs"),
    "query-added": (("POST", "/api/tickets?assignee=ceo", TICKET, {}), "request target"),
    "path-percent-encoded": (("POST", "/api/%74ickets", TICKET, {}), "request target"),
    "method-override-header": (
        ("POST", "/api/tickets", TICKET, {"x-http-method-override": "DELETE"}),
        "override header x-http-method-override",
    ),
    "target-override-header": (
        ("POST", "/api/tickets", TICKET, {"x-original-url": "/api/records/42"}),
        "override header x-original-url",
    ),
}


@pytest.mark.parametrize("case", sorted(MISUSES))
def test_captured_credential_is_refused_for_another_request(
    attacker: Attacker, task: dict[str, Any], case: str
) -> None:
    """Refused with the reason, before the jti is spent: the bound request still goes through after."""
    token = captured(attacker, task, "POST", "/api/tickets", TICKET)
    (method, path, body, headers), reason = MISUSES[case]
    misused = at_upstream(attacker, method, path, token, body, **headers)
    assert misused.status_code == 401, f"{case}: {misused.status_code} {misused.text[:200]}"
    assert f"minted for another request ({reason}" in misused.json()["error"]
    assert at_upstream(attacker, "POST", "/api/tickets", token, TICKET).status_code == 201, "jti still unspent"
    assert "replayed" in at_upstream(attacker, "POST", "/api/tickets", token, TICKET).json()["error"]


@pytest.mark.parametrize(
    ("tool", "arguments"),
    [
        pytest.param("delete_record", {"id": 42}, id="delete_record"),
        pytest.param("send_email", {"to": "all@example.com", "body": "hi"}, id="send_email"),
        pytest.param("create_ticket", {"title": "another"}, id="same-tool-other-arguments"),
    ],
)
def test_captured_mcp_credential_is_refused_for_another_tool_call(
    attacker: Attacker, task: dict[str, Any], tool: str, arguments: dict[str, Any]
) -> None:
    """Same method, same /mcp target: the body hash is what tells one tool call from another."""
    bound = _mcp("create_ticket", {"title": "printer"})
    token = captured(attacker, task, "POST", "/mcp", bound)
    misused = at_upstream(attacker, "POST", "/mcp", token, _mcp(tool, arguments))
    assert misused.status_code == 401, misused.text[:300]
    assert "minted for another request (body differs)" in misused.json()["error"]
    assert at_upstream(attacker, "POST", "/mcp", token, bound).status_code == 200


def test_spent_credential_is_refused_as_misbound_not_only_as_replayed(attacker: Attacker, task: dict[str, Any]) -> None:
    """The credential the upstream last accepted, tried on a delete: the binding refuses it first,
    so an upstream that forgets (or shards) its jti list still holds."""
    assert attacker.send("POST", "/api/tickets", _headers(attacker, task, ""), data=TICKET).status_code == 201
    stolen = attacker.upstream_credential()
    misused = at_upstream(attacker, "DELETE", "/api/records/42", stolen)
    assert misused.status_code == 401
    assert "minted for another request (method 'DELETE', minted for 'POST')" in misused.json()["error"]
