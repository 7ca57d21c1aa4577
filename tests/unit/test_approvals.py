"""Approvals on the check path (the pipeline on a stand-in OPA and the memory store) and what
approvers are shown: one pending approval per request, a cap per agent, the view that says what it
cut, and text outputs that never pass an agent's control characters to a terminal."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest

from sidecar import cli
from sidecar.approvals import ApprovalService
from sidecar.config import ApprovalsConfig, IdentityConfig
from sidecar.identity import IdentityResolver
from sidecar.opa_fake import FakeOpa, always
from sidecar.request import CheckRequest
from sidecar.state.memory import MemoryStore
from sidecar.webhook import Webhook
from tests.pipelines import make_pipeline

WRITER = "spiffe://demo.local/agent/writer"
STEP_UP = {
    "verdict": "step_up",
    "reasons": ["a human must approve"],
    "step_up": {"kind": "approval", "ttl_seconds": 900, "approvers": {"data_class": "restricted"}, "redact": []},
}


class _Announced(Webhook):
    def __init__(self) -> None:
        super().__init__("http://127.0.0.1:1/unused", b"secret")
        self.sent: list[dict[str, Any]] = []

    def notify(self, event: str, payload: dict[str, Any]) -> None:
        self.sent.append(payload)


class _Sidecar:
    def __init__(self, max_pending: int = 20, allow_partial_body: bool = False) -> None:
        identity = IdentityConfig.model_validate({"sources": ["pod"], "pod": {"spiffe_id": WRITER}})
        self.opa = FakeOpa(always(STEP_UP))
        self.store = MemoryStore()
        self.webhook = _Announced()
        config = ApprovalsConfig(max_pending_per_agent=max_pending)
        self.pipeline = make_pipeline(
            IdentityResolver(identity, None, None),
            self.opa,
            {"request_body": {"allow_partial": allow_partial_body}},
            approvals=ApprovalService(config, self.store, self.opa, self.webhook),
        )

    def delete(self, ids: Any, rpc_id: int = 1, **headers: str) -> tuple[int, dict[str, Any]]:
        params = {"name": "delete_record", "arguments": {"id": ids}}
        body = json.dumps({"jsonrpc": "2.0", "id": rpc_id, "method": "tools/call", "params": params}).encode()
        sent = {"host": "tools.demo.local", "content-type": "application/json", **headers}
        answer = asyncio.run(self.pipeline.check(CheckRequest("POST", "/mcp", sent, body)))
        document = json.loads(answer.body)
        return answer.status, document["error"]["data"] if "jsonrpc" in document else document


def test_asking_again_returns_the_pending_approval() -> None:
    """Before, every retry of a refused request queued one more approval for a human."""
    sidecar = _Sidecar()
    status, first = sidecar.delete("7", rpc_id=1)
    assert status == 401 and first["step_up"]["status"] == "pending"
    status, again = sidecar.delete("7", rpc_id=2)
    assert status == 401 and again["step_up"]["approval_id"] == first["step_up"]["approval_id"]
    assert again["step_up"]["expires_at"] == first["step_up"]["expires_at"]
    assert len(sidecar.webhook.sent) == 1, "approvers are asked once"
    _, other = sidecar.delete("8")
    assert other["step_up"]["approval_id"] != first["step_up"]["approval_id"]


def test_pending_approvals_per_agent_are_capped() -> None:
    sidecar = _Sidecar(max_pending=2)
    held = [sidecar.delete(str(i))[1]["step_up"]["approval_id"] for i in range(2)]
    status, refused = sidecar.delete("2")
    assert status == 429 and refused["verdict"] == "deny"
    assert refused["reasons"] == [
        f"agent {WRITER} already has 2 pending approvals (at most 2); wait until approvers decide them or they expire"
    ]
    assert "step_up" not in refused
    assert sidecar.delete("0")[1]["step_up"]["approval_id"] == held[0], "the same request is still answered"
    assert len(asyncio.run(sidecar.store.list_approvals("pending"))) == 2


def test_the_policy_is_told_what_the_approver_would_not_see() -> None:
    sidecar = _Sidecar()
    sidecar.delete("7")
    assert sidecar.opa.inputs[-1]["approval_view"] is None
    sidecar.delete([f"harmless-{i}" for i in range(86)] + ["the-dangerous-one"])
    assert sidecar.opa.inputs[-1]["approval_view"] == {
        "cut": ["/arguments/id"],
        "cut_count": 1,
        "max_items": 50,
        "max_string": 200,
    }


def test_the_approver_view_flags_what_it_cut() -> None:
    sidecar = _Sidecar()
    sidecar.delete([f"harmless-{i}" for i in range(86)] + ["the-dangerous-one"])
    shown = sidecar.webhook.sent[0]
    assert shown["summary_truncated"] is True
    assert shown["summary_cuts"] == [{"pointer": "/arguments/id", "unit": "items", "hidden": 37}]
    assert shown["summary"]["arguments"]["id"][-1] == "… 37 more items not shown"
    assert shown["summary"]["mcp_method"] == "tools/call"
    sidecar.delete("7")
    assert sidecar.webhook.sent[1]["summary_truncated"] is False


def test_a_partial_body_is_never_bound_to_an_approval() -> None:
    """The fingerprint would cover only the part Envoy buffered: another tail, the same approval."""
    sidecar = _Sidecar(allow_partial_body=True)
    status, refused = sidecar.delete("7", rpc_id=1, **{"x-envoy-auth-partial-body": "true"})
    assert status == 413 and "only partly inspected" in refused["reasons"][0]
    assert asyncio.run(sidecar.store.list_approvals("pending")) == []


# -- text for humans -------------------------------------------------------------------------------

HOSTILE = "rm\x1b[2J\x1b]0;approved\x07\x7f \u202egnp.exe\u200b"
SHOWN = '"rm\\u001b[2J\\u001b]0;approved\\u0007\\u007f \\u202egnp.exe\\u200b"'


class _ApprovalsApi(BaseHTTPRequestHandler):
    answers: ClassVar[dict[str, tuple[int, Any]]] = {}

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self._answer()

    def _answer(self) -> None:
        status, document = self.answers[self.path]
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture
def api() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ApprovalsApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _approval() -> dict[str, Any]:
    return {
        "id": "a-1",
        "agent": WRITER,
        "summary": {"tool": HOSTILE, "method": "POST", "path": "/mcp\x1b[1A"},
        "data_class": "restricted",
        "expires_at": 1764000900,
        "reasons": [f"agent wants to send to {HOSTILE}"],
        "summary_cuts": [{"pointer": "/arguments/ids", "unit": "items", "hidden": 37}],
        "summary_truncated": True,
        "status": "pending",
    }


def _run(url: str, *command: str) -> None:
    assert cli.main(["approvals", "--url", url, "--token", "t", *command]) in (0, 1)


def test_cli_list_quotes_and_escapes_agent_text(api: str, capsys: pytest.CaptureFixture[str]) -> None:
    _ApprovalsApi.answers = {"/v1/approvals": (200, {"approvals": [_approval()]})}
    _run(api, "list")
    out = capsys.readouterr().out
    assert not any(c in out for c in "\x1b\x07\x7f\u202e\u200b"), out
    assert f"tool {SHOWN}" in out and 'path "/mcp\\u001b[1A"' in out
    assert f'reason "agent wants to send to {SHOWN[1:]}' in out
    assert 'NOT SHOWN: 37 more items at "/arguments/ids"' in out


def test_cli_show_and_decide_never_print_raw_control_characters(api: str, capsys: pytest.CaptureFixture[str]) -> None:
    _ApprovalsApi.answers = {
        "/v1/approvals/a-1": (200, _approval()),
        "/v1/approvals/a-1/approve": (200, {**_approval(), "status": "approved\x1b[0m"}),
        "/v1/approvals/a-2/approve": (403, {"error": f"no: {HOSTILE}"}),
    }
    _run(api, "show", "a-1")
    shown = capsys.readouterr()
    assert shown.out.isascii() and "\x7f" not in shown.out and "\x1b" not in shown.out
    assert json.loads(shown.out)["summary"]["tool"] == HOSTILE
    assert "37 more items" in shown.err and "cut" in shown.err
    _run(api, "approve", "a-1")
    assert capsys.readouterr().out == 'approval "a-1": "approved\\u001b[0m"\n'
    _run(api, "approve", "a-2")
    assert capsys.readouterr().err == f'authz-sidecar approvals: 403: "no: {SHOWN[1:]}\n'


def test_webhook_body_is_ascii_json() -> None:
    """A chat or ticket system showing the payload gets escapes, never the agent's raw bytes."""
    received: list[bytes] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(self.rfile.read(int(self.headers["content-length"])))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    async def send() -> None:
        hook = Webhook(f"http://127.0.0.1:{server.server_address[1]}/hook", b"secret")
        hook.notify("approval.pending", _approval())
        await asyncio.gather(*hook._tasks)

    try:
        asyncio.run(send())
    finally:
        server.shutdown()
    assert received and received[0].isascii() and b"\\u001b[2J" in received[0]
    assert json.loads(received[0])["approval"]["summary"]["tool"] == HOSTILE
