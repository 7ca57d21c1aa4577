"""``./taskw demo``: bring the stack up, play a scripted agent session through Envoy.

Prints request → expected → verdict → reason → decision id, and exits 0 only when every
answer is the expected one.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from devstack.agent_client import AgentClient, approval_id, bearer
from devstack.stack import Ports, Stack, StackError
from devstack.trust_domain import DevTrustDomain

READER = "spiffe://demo.local/agent/reader"
WRITER = "spiffe://demo.local/agent/writer"
ASSISTANT = "spiffe://demo.local/agent/assistant"
TICKET = {"title": "Printer on fire"}  # the demo's write, replayed byte for byte by the thief step


@dataclass
class Demo:
    """The running stack, its agents' client, and what they hold between steps (task grants)."""

    stack: Stack
    client: AgentClient
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    approval_id: str | None = None  # the last approval a step-up asked for

    def call(self, method: str, path: str, agent: str, task: str | None = None, **kw: Any) -> requests.Response:
        token = self.tasks[task]["token"] if task else None
        response = self.client.request(method, path, agent, kw.pop("headers", None), task=token, **kw)
        self.approval_id = approval_id(response) or self.approval_id
        return response

    def retry_approved(self, method: str, path: str, agent: str, task: str) -> requests.Response:
        assert self.approval_id is not None
        return self.call(method, path, agent, task, approval=self.approval_id)

    def approve(self, approver: str, groups: list[str]) -> requests.Response:
        """A human approver (OIDC ID token of the dev issuer) approves the pending approval."""
        assert self.approval_id is not None
        who = self.client.human(approver, tuple(groups))
        return self.client.decide_approval(self.approval_id, True, who, "checked with the customer")

    def writes_until_refused(self, task: str, limit: int) -> requests.Response:
        """``limit`` writes under one task, then one more: the last answer."""
        for n in range(limit):
            self.call("POST", "/api/tickets", WRITER, task, json={"n": n})
        return self.call("POST", "/api/tickets", WRITER, task, json={"n": limit})

    def open_task(self, name: str, agent: str, purpose: str, scopes: list[str]) -> requests.Response:
        return self._keep(name, self.client.post_task(agent, purpose, scopes, ttl=600))

    def delegate(self, name: str, parent: str, agent: str, to: str, scopes: list[str]) -> requests.Response:
        return self._keep(name, self.client.post_delegation(agent, self.tasks[parent]["id"], to, scopes, ttl=300))

    def complete(self, name: str, agent: str) -> requests.Response:
        return self.client.post_completion(agent, self.tasks[name]["id"])

    def mcp_call(self, agent: str, tool: str, arguments: dict[str, Any], task: str | None = None) -> requests.Response:
        token = self.tasks[task]["token"] if task else None
        return self.client.mcp(agent, "tools/call", tool, arguments, task=token)

    def replay_last_credential(self, body: dict[str, Any]) -> requests.Response:
        """Send the credential the upstream last accepted straight to it again, as a thief would,
        with the identical request it was bound to (any other is refused before the ``jti``)."""
        upstream = f"http://127.0.0.1:{self.stack.ports.upstream}"
        token = self.client.upstream_credential()
        return requests.post(f"{upstream}/api/tickets", headers=bearer(token), json=body, timeout=self.client.timeout)

    def _keep(self, name: str, response: requests.Response) -> requests.Response:
        if response.status_code == 201:
            self.tasks[name] = response.json()
        return response


@dataclass(frozen=True)
class Step:
    title: str
    expected_status: int
    expected_verdict: str
    send: Callable[[Demo], requests.Response]
    shows: str | None = None  # the reason must contain this (what the agent saw of an MCP response)


@dataclass(frozen=True)
class Outcome:
    step: Step
    status: int
    verdict: str
    reason: str
    decision_id: str

    @property
    def ok(self) -> bool:
        shown = self.step.shows is None or self.step.shows in self.reason
        return self.status == self.step.expected_status and self.verdict == self.step.expected_verdict and shown


def forged(demo: Demo) -> dict[str, str]:
    """A reader token whose payload was edited to claim the writer: the signature no longer fits."""
    header, payload, signature = demo.stack.trust_domain.mint_jwt(READER).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = WRITER
    edited = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return {"authorization": f"Bearer {header}.{edited}.{signature}"}


def other_domain(demo: Demo) -> dict[str, str]:
    evil = DevTrustDomain(demo.stack.workdir / "untrusted-domain", "demo.local.evil")
    return {"authorization": "Bearer " + evil.mint_jwt("spiffe://demo.local.evil/agent/writer")}


def ingress_get(demo: Demo, spiffe_id: str, path: str) -> requests.Response:
    return demo.client.ingress(spiffe_id, "GET", path)


def stop_opa_then_get(demo: Demo) -> requests.Response:
    demo.stack.stop_opa()
    return demo.call("GET", "/api/docs/handbook", READER)


def rug_pull_then(demo: Demo, send: Callable[[Demo], requests.Response]) -> requests.Response:
    """The tool server changes search_docs's description (as a compromised one would), then ``send``."""
    url = f"http://127.0.0.1:{demo.stack.ports.upstream}/debug/rug-pull"
    requests.post(url, timeout=demo.client.timeout).raise_for_status()
    try:
        return send(demo)
    finally:
        requests.delete(url, timeout=demo.client.timeout).raise_for_status()


def raw_get(path: str, headers: Callable[[Demo], dict[str, str]]) -> Callable[[Demo], requests.Response]:
    return lambda d: d.client.request("GET", path, None, headers(d))


SCRIPT = [
    # Identity and plain policy.
    Step("reader GET /api/docs/handbook", 200, "allow", lambda d: d.call("GET", "/api/docs/handbook", READER)),
    Step("reader POST /api/tickets", 403, "deny", lambda d: d.call("POST", "/api/tickets", READER, json={})),
    Step("writer POST /api/tickets, no task", 403, "deny", lambda d: d.call("POST", "/api/tickets", WRITER, json={})),
    Step("reader MCP tools/call search_docs", 200, "allow", lambda d: d.mcp_call(READER, "search_docs", {"q": "vpn"})),
    Step("reader MCP tools/call delete_record", 403, "deny", lambda d: d.mcp_call(READER, "delete_record", {"id": 1})),
    Step("forged token (edited payload)", 401, "deny", raw_get("/api/docs/handbook", forged)),
    Step("token from trust domain demo.local.evil", 401, "deny", raw_get("/api/docs/handbook", other_domain)),
    Step("no token at all", 401, "deny", raw_get("/api/docs/handbook", lambda d: {})),
    Step(
        "client-supplied XFCC on the egress listener",
        401,
        "deny",
        raw_get("/api/docs/handbook", lambda d: {"x-forwarded-client-cert": f"URI={WRITER}"}),
    ),
    Step(
        "writer over mTLS ingress GET /api/docs/runbook",
        200,
        "allow",
        lambda d: ingress_get(d, WRITER, "/api/docs/runbook"),
    ),
    # Task grants, just-in-time credentials, delegation.
    Step(
        "writer opens task triage [docs:read tickets:write]",
        201,
        "allow",
        lambda d: d.open_task("triage", WRITER, "triage", ["docs:read", "tickets:read", "tickets:write"]),
    ),
    Step(
        "writer POST /api/tickets under the task",
        201,
        "allow",
        lambda d: d.call("POST", "/api/tickets", WRITER, "triage", json=TICKET),
    ),
    Step("replay of that credential at the upstream", 401, "deny", lambda d: d.replay_last_credential(TICKET)),
    Step(
        "writer DELETE /api/records/42 under the task",
        403,
        "deny",
        lambda d: d.call("DELETE", "/api/records/42", WRITER, "triage"),
    ),
    Step(
        "writer delegates [tickets:write] to assistant",
        201,
        "allow",
        lambda d: d.delegate("sub", "triage", WRITER, ASSISTANT, ["tickets:write"]),
    ),
    Step(
        "assistant POST /api/tickets under the sub-task",
        201,
        "allow",
        lambda d: d.call("POST", "/api/tickets", ASSISTANT, "sub", json={"title": "delegated"}),
    ),
    Step(
        "assistant tries to widen to records:delete",
        403,
        "deny",
        lambda d: d.delegate("sub2", "sub", ASSISTANT, READER, ["records:delete"]),
    ),
    Step(
        "reader uses the assistant's task token",
        403,
        "deny",
        lambda d: d.call("GET", "/api/docs/a", READER, "sub"),
    ),
    # Step-up.
    Step(
        "writer opens task cleanup [records:delete]",
        201,
        "allow",
        lambda d: d.open_task("cleanup", WRITER, "cleanup", ["records:read", "records:delete"]),
    ),
    Step(
        "writer DELETE /api/records/42 under cleanup",
        401,
        "step_up",
        lambda d: d.call("DELETE", "/api/records/42", WRITER, "cleanup"),
    ),
    Step(
        "approver alice (OIDC, security-approvers) approves",
        200,
        "allow",
        lambda d: d.approve("alice", ["security-approvers"]),
    ),
    Step(
        "writer retries the DELETE with the approval",
        200,
        "allow",
        lambda d: d.retry_approved("DELETE", "/api/records/42", WRITER, "cleanup"),
    ),
    Step(
        "writer replays the used approval",
        403,
        "deny",
        lambda d: d.retry_approved("DELETE", "/api/records/42", WRITER, "cleanup"),
    ),
    Step(
        "writer opens task billing [payments:write]",
        201,
        "allow",
        lambda d: d.open_task("billing", WRITER, "billing", ["payments:write"]),
    ),
    Step(
        "writer POST /api/payments without MFA",
        401,
        "step_up",
        lambda d: d.call("POST", "/api/payments", WRITER, "billing", json={"amount": 5}),
    ),
    # Session chain limits: what the agent already did in this task feeds the next decision.
    Step(
        "writer opens task outreach [records:read email:send]",
        201,
        "allow",
        lambda d: d.open_task("outreach", WRITER, "outreach", ["records:read", "email:send"]),
    ),
    Step(
        "writer MCP send_email inside demo.local",
        200,
        "allow",
        lambda d: d.mcp_call(WRITER, "send_email", {"to": "ops@demo.local", "body": "hi"}, "outreach"),
    ),
    Step(
        "writer MCP get_record (restricted data)",
        200,
        "allow",
        lambda d: d.mcp_call(WRITER, "get_record", {"id": "42"}, "outreach"),
    ),
    Step(
        "writer MCP send_email after that read",
        401,
        "step_up",
        lambda d: d.mcp_call(WRITER, "send_email", {"to": "ops@demo.local", "body": "hi"}, "outreach"),
    ),
    Step(
        "writer opens task bulk [tickets:write]",
        201,
        "allow",
        lambda d: d.open_task("bulk", WRITER, "triage", ["tickets:write"]),
    ),
    Step("writer's 11th write in one task (limit 10)", 403, "deny", lambda d: d.writes_until_refused("bulk", 10)),
    # Ending a task revokes it and everything delegated from it.
    Step("writer completes task triage", 200, "allow", lambda d: d.complete("triage", WRITER)),
    Step(
        "writer POST /api/tickets with the ended task",
        403,
        "deny",
        lambda d: d.call("POST", "/api/tickets", WRITER, "triage", json={}),
    ),
    Step(
        "assistant POST /api/tickets with the sub-task",
        403,
        "deny",
        lambda d: d.call("POST", "/api/tickets", ASSISTANT, "sub", json={}),
    ),
    # The MCP response path: what the agent sees of the tool server's answers.
    Step(
        "reader MCP tools/list: write tools filtered out",
        200,
        "allow",
        lambda d: d.client.mcp(READER, "tools/list"),
        shows="tools/list shows search_docs, get_record",
    ),
    Step(
        "reader MCP get_record: pii redacted in the output",
        200,
        "allow",
        lambda d: d.mcp_call(READER, "get_record", {"id": "42"}),
        shows="owner [redacted:pii]",
    ),
    Step(
        "writer MCP get_record: cleared for pii",
        200,
        "allow",
        lambda d: d.mcp_call(WRITER, "get_record", {"id": "42"}),
        shows="owner alice@demo.local",
    ),
    Step(
        "tool server changes search_docs; reader lists",
        200,
        "allow",
        lambda d: rug_pull_then(d, lambda d: d.client.mcp(READER, "tools/list")),
        shows="tools/list shows get_record",
    ),
    Step(
        "tool server changes search_docs; reader calls it",
        401,
        "step_up",
        lambda d: rug_pull_then(d, lambda d: d.mcp_call(READER, "search_docs", {"q": "vpn"})),
        shows="definition of tool search_docs changed",
    ),
    # Fail closed.
    Step("OPA killed, reader GET /api/docs/handbook", 503, "error", stop_opa_then_get),
]


def observe(step: Step, response: requests.Response) -> Outcome:
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    summary = body.get("error", {}).get("data", body) if isinstance(body.get("error"), dict) else body
    decision_id = response.headers.get("x-authz-decision-id") or str(summary.get("decision_id", ""))
    if response.status_code < 300:
        return Outcome(step, response.status_code, "allow", _allowed_reason(body), decision_id)
    if isinstance(summary.get("error"), str):  # the sidecar's own API, or the upstream refusing
        return Outcome(step, response.status_code, "deny", summary["error"], decision_id)
    reason = "; ".join(summary.get("reasons", [])) or response.reason
    if not decision_id and summary.get("request_id"):
        decision_id = f"(request {summary['request_id']})"
    return Outcome(step, response.status_code, str(summary.get("verdict", "?")), reason, decision_id)


def _allowed_reason(body: dict[str, Any]) -> str:
    result = body.get("result")
    if isinstance(result, dict) and isinstance(result.get("tools"), list):
        return "tools/list shows " + ", ".join(str(t.get("name")) for t in result["tools"])
    if isinstance(result, dict) and isinstance(result.get("structuredContent"), dict):
        return "tool output: " + " ".join(str(c.get("text")) for c in result.get("content", []))
    if "token" in body:
        chain = f", delegated by {', '.join(body['delegation_chain'])}" if body.get("delegation_chain") else ""
        return f"task {body['id'][:8]}… for {body['agent']}: {' '.join(body['scopes'])}{chain}"
    if "status" in body and "fingerprint" in body:
        return f"approval {body['id'][:8]}… {body['status']} by {body['approver']['id']}"
    if "ended" in body:
        return f"ended {len(body['ended'])} task(s), delegated ones included"
    saw = body.get("upstream_saw") or body.get("result", {}).get("_meta", {}).get("upstream_saw")
    if not isinstance(saw, dict):
        return "allowed by policy"
    credential = saw.get("credential")
    if credential:
        act = f", act {credential['act']['sub']}" if credential.get("act") else ""
        return f"upstream verified credential sub {credential['sub']} scope {credential['scope']}{act}"
    return f"upstream saw {saw.get('spiffe_id')} via rule {saw.get('rule')!r}"


def print_table(outcomes: list[Outcome]) -> None:
    rows = [("", "request", "expected", "got", "reason", "decision id")]
    for i, o in enumerate(outcomes, 1):
        rows.append(
            (
                f"{i:>2} {'ok ' if o.ok else 'BAD'}",
                o.step.title,
                f"{o.step.expected_status} {o.step.expected_verdict}",
                f"{o.status} {o.verdict}",
                o.reason[:100],
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
            demo = Demo(stack, AgentClient(stack))
            outcomes = [observe(step, step.send(demo)) for step in SCRIPT]
    except StackError as exc:
        print(f"demo: {exc}")
        return 1
    print_table(outcomes)
    failed = [o for o in outcomes if not o.ok]
    print(f"\n{len(outcomes) - len(failed)}/{len(outcomes)} verdicts as expected")
    print(f"OPA decision log (same decision ids): {dev_dir / 'logs' / 'opa.log'}")
    return 1 if failed else 0
