"""``./taskw demo``: bring the stack up, play a scripted agent session through Envoy.

Prints request → expected → verdict → reason → decision id, and exits 0 only when every
answer is the expected one.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from sidecar.dev.stack import Ports, Stack, StackError
from sidecar.dev.trust_domain import DevTrustDomain

READER = "spiffe://demo.local/agent/reader"
WRITER = "spiffe://demo.local/agent/writer"


@dataclass(frozen=True)
class Step:
    title: str
    expected_status: int
    expected_verdict: str
    send: Callable[[Stack], requests.Response]


@dataclass(frozen=True)
class Outcome:
    step: Step
    status: int
    verdict: str
    reason: str
    decision_id: str

    @property
    def ok(self) -> bool:
        return self.status == self.step.expected_status and self.verdict == self.step.expected_verdict


def bearer(stack: Stack, spiffe_id: str, **claims: Any) -> dict[str, str]:
    return {"authorization": "Bearer " + stack.trust_domain.mint_jwt(spiffe_id, extra_claims=claims)}


def mcp_call(stack: Stack, headers: dict[str, str], tool: str, arguments: dict[str, Any]) -> requests.Response:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments},
    }
    headers = {**headers, "mcp-method": "tools/call", "mcp-name": tool}
    return requests.post(f"{stack.egress_url}/mcp", json=body, headers=headers, timeout=10)


def forged(stack: Stack) -> dict[str, str]:
    """A reader token whose payload was edited to claim the writer: the signature no longer fits."""
    header, payload, signature = stack.trust_domain.mint_jwt(READER).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = WRITER
    edited = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return {"authorization": f"Bearer {header}.{edited}.{signature}"}


def other_domain(stack: Stack) -> dict[str, str]:
    evil = DevTrustDomain(stack.workdir / "untrusted-domain", "demo.local.evil")
    return {"authorization": "Bearer " + evil.mint_jwt("spiffe://demo.local.evil/agent/writer")}


def ingress_get(stack: Stack, spiffe_id: str, path: str) -> requests.Response:
    svid = stack.trust_domain.mint_x509(spiffe_id, stack.workdir / "demo-svids" / spiffe_id.rsplit("/", 1)[-1])
    return requests.get(
        stack.ingress_url + path,
        cert=(str(svid.cert), str(svid.key)),
        verify=str(svid.bundle),
        timeout=10,
    )


def stop_opa_then_get(stack: Stack) -> requests.Response:
    stack.stop_opa()
    return requests.get(f"{stack.egress_url}/api/docs/handbook", headers=bearer(stack, READER), timeout=10)


def get(path: str, headers: Callable[[Stack], dict[str, str]]) -> Callable[[Stack], requests.Response]:
    return lambda s: requests.get(s.egress_url + path, headers=headers(s), timeout=10)


def send(method: str, path: str, spiffe_id: str, **kw: Any) -> Callable[[Stack], requests.Response]:
    return lambda s: requests.request(method, s.egress_url + path, headers=bearer(s, spiffe_id), timeout=10, **kw)


SCRIPT = [
    Step(
        "reader GET /api/docs/handbook",
        200,
        "allow",
        get("/api/docs/handbook", lambda s: bearer(s, READER)),
    ),
    Step(
        "reader POST /api/tickets",
        403,
        "deny",
        send("POST", "/api/tickets", READER, json={"title": "x"}),
    ),
    Step(
        "writer POST /api/tickets",
        201,
        "allow",
        send("POST", "/api/tickets", WRITER, json={"title": "Printer on fire"}),
    ),
    Step("writer DELETE /api/records/42", 401, "step_up", send("DELETE", "/api/records/42", WRITER)),
    Step(
        "writer POST /api/payments (no MFA)",
        401,
        "step_up",
        send("POST", "/api/payments", WRITER, json={"amount": 5}),
    ),
    Step(
        "reader MCP tools/call search_docs",
        200,
        "allow",
        lambda s: mcp_call(s, bearer(s, READER), "search_docs", {"q": "vpn"}),
    ),
    Step(
        "reader MCP tools/call delete_record",
        403,
        "deny",
        lambda s: mcp_call(s, bearer(s, READER), "delete_record", {"id": "42"}),
    ),
    Step("forged token (edited payload)", 401, "deny", get("/api/docs/handbook", forged)),
    Step(
        "token from trust domain demo.local.evil",
        401,
        "deny",
        get("/api/docs/handbook", other_domain),
    ),
    Step("no token at all", 401, "deny", get("/api/docs/handbook", lambda s: {})),
    Step(
        "client-supplied XFCC on the egress listener",
        401,
        "deny",
        get("/api/docs/handbook", lambda s: {"x-forwarded-client-cert": f"URI={WRITER}"}),
    ),
    Step(
        "writer over mTLS ingress GET /api/docs/runbook",
        200,
        "allow",
        lambda s: ingress_get(s, WRITER, "/api/docs/runbook"),
    ),
    Step("OPA killed, reader GET /api/docs/handbook", 503, "error", stop_opa_then_get),
]


def observe(step: Step, response: requests.Response) -> Outcome:
    try:
        body = response.json()
    except ValueError:
        body = {}
    summary = body.get("error", {}).get("data", body) if isinstance(body, dict) else {}
    if response.status_code < 300:
        verdict, reason = "allow", "allowed by policy"
        saw = _upstream_saw(body)
        if saw:
            reason = f"upstream saw {saw.get('spiffe_id')} via rule {saw.get('rule')!r}"
    else:
        verdict = str(summary.get("verdict", "?"))
        reason = "; ".join(summary.get("reasons", [])) or response.reason
    decision_id = response.headers.get("x-authz-decision-id") or summary.get("decision_id") or ""
    if not decision_id and summary.get("request_id"):
        decision_id = f"(request {summary['request_id']})"
    return Outcome(step, response.status_code, verdict, reason, decision_id)


def _upstream_saw(body: Any) -> dict[str, Any] | None:
    """What the demo upstream reports it received (REST body or MCP result ``_meta``)."""
    if not isinstance(body, dict):
        return None
    saw = body.get("upstream_saw") or body.get("result", {}).get("_meta", {}).get("upstream_saw")
    return saw if isinstance(saw, dict) else None


def print_table(outcomes: list[Outcome]) -> None:
    rows = [("", "request", "expected", "got", "reason", "decision id")]
    for i, o in enumerate(outcomes, 1):
        rows.append(
            (
                f"{i:>2} {'ok ' if o.ok else 'BAD'}",
                o.step.title,
                f"{o.step.expected_status} {o.step.expected_verdict}",
                f"{o.status} {o.verdict}",
                o.reason[:90],
                o.decision_id,
            )
        )
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    for n, row in enumerate(rows):
        print("  ".join(cell.ljust(widths[c]) for c, cell in enumerate(row)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


def run_demo(dev_dir: Path, ports: Ports | None = None) -> int:
    try:
        with Stack(dev_dir, ports) as stack:
            print(
                f"stack up: Envoy egress {stack.egress_url}, mTLS ingress {stack.ingress_url}; logs in {stack.logs}\n"
            )
            outcomes = [observe(step, step.send(stack)) for step in SCRIPT]
    except StackError as exc:
        print(f"demo: {exc}")
        return 1
    print_table(outcomes)
    failed = [o for o in outcomes if not o.ok]
    print(f"\n{len(outcomes) - len(failed)}/{len(outcomes)} verdicts as expected")
    print(f"OPA decision log (same decision ids): {dev_dir / 'logs' / 'opa.log'}")
    return 1 if failed else 0
