"""The input examples in sidecar/schema/examples/ are what the sidecar builds, never hand-written.

Each example is a described request: what the agent sent (only the headers envoy/envoy.yaml
forwards to the sidecar), the calls it made before in the same session, and what the sidecar
verifies (identity, task grant, approval). The request goes through the sidecar's own pipeline
(sidecar/pipeline.py and its phases: body parser, identity, task, intent, approval redemption, the session
tracker on the memory store, ``build_input`` of sidecar/input.py) against a stand-in OPA that
records the input document it is asked about. Only the JWT-SVID and task-token signatures are
stood in for (the input never shows a signature). The committed file must equal what the
pipeline sends to OPA, so a change to the input document shows up here and in the Rego tests
that judge these examples (tests/rego/input_examples_test.rego, run by ``./taskw rego``).

After an intended change to the input document, rewrite the examples with
``UPDATE_INPUT_EXAMPLES=1 pytest tests/unit/test_input_examples.py`` and review the diff.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from string import Template
from typing import Any

import jsonschema
import pytest
import yaml
from spiffe import SpiffeId

from devstack.envoy_config import TEMPLATE, render_envoy_config
from sidecar.approvals import ApprovalService
from sidecar.config import IdentityConfig, load_config
from sidecar.fingerprint import request_fingerprint
from sidecar.identity import Identity, IdentityResolver
from sidecar.opa_fake import FakeOpa, Query
from sidecar.request import CheckRequest
from sidecar.sessions import SessionTracker
from sidecar.state import ApprovalRecord, TaskRecord
from sidecar.state.memory import MemoryStore
from sidecar.tasks import TaskService, task_token_claims
from sidecar.tokens import TASK_TYP
from tests.pipelines import QUIET, make_pipeline

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "sidecar" / "schema"
EXAMPLES = SCHEMA_DIR / "examples"
VALIDATOR = jsonschema.Draft202012Validator(json.loads((SCHEMA_DIR / "input.schema.json").read_text()))
DEFAULTS = load_config(None, {})

# Every example is decided at this instant (2026-01-01T00:00:00Z); the Rego tests pin
# time.now_ns to it, so the grants in the examples stay active.
NOW = 1_767_225_600

READER = "spiffe://demo.local/agent/reader"
WRITER = "spiffe://demo.local/agent/writer"
TOOLS = "tools.demo.local"
# An earlier GET in a session whose current request has a body: without the body headers.
NO_BODY: dict[str, str | None] = {
    "content-type": None,
    "content-length": None,
    "x-envoy-auth-partial-body": None,
    "x-agent-purpose": None,
    "x-agent-confidence": None,
}
XFCC_SECRET = "per-deployment-secret"  # added by Envoy's mTLS listener; hidden from the policy


# -- what the sidecar receives from Envoy -----------------------------------------------------
def _envoy_forwarded_header_names() -> tuple[set[str], tuple[str, ...]]:
    """The header names the tested Envoy config sends to the sidecar: allowed_headers
    (exact names, prefixes), plus what Envoy always sets on a check request."""
    names = Template(TEMPLATE.read_text(encoding="utf-8")).get_identifiers()
    config = yaml.safe_load(render_envoy_config({n: "0" for n in names}))
    listener = config["static_resources"]["listeners"][0]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    ext_authz = next(f for f in manager["http_filters"] if f["name"] == "envoy.filters.http.ext_authz")
    patterns = ext_authz["typed_config"]["allowed_headers"]["patterns"]
    exact = {p["exact"] for p in patterns if "exact" in p} | {"host", "content-length", "x-envoy-auth-partial-body"}
    return exact, tuple(p["prefix"] for p in patterns if "prefix" in p)


def unsigned_jwt(header: dict[str, Any], claims: dict[str, Any]) -> str:
    """A compact JWT; the signature is a stand-in (the input never shows it)."""

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value, separators=(",", ":")).encode()).rstrip(b"=").decode()

    return f"{part(header)}.{part(claims)}.c2lnbmF0dXJl"


def jwt_svid(spiffe_id: str) -> tuple[str, dict[str, Any]]:
    """An agent's JWT-SVID (as SPIRE issues it) and the claims the sidecar verified."""
    claims = {"sub": spiffe_id, "aud": ["authz-sidecar"], "exp": NOW + 300, "iat": NOW - 10}
    return unsigned_jwt({"alg": "ES256", "kid": "spire-jwt-key-1", "typ": "JWT"}, claims), claims


def task_token(task: TaskRecord) -> str:
    """The task grant token as the sidecar issues it (its claims from sidecar/tasks.py), unsigned."""
    claims = task_token_claims(task, DEFAULTS.tasks.issuer)
    return unsigned_jwt({"alg": "ES256", "kid": "sidecar-key-1", "typ": TASK_TYP}, claims)


def task(task_id: str, purpose: str, scopes: list[str]) -> TaskRecord:
    return TaskRecord(
        id=task_id,
        sub=WRITER,
        purpose=purpose,
        scopes=scopes,
        issued_at=NOW - 300,
        expires_at=NOW + 1500,
        root_id=task_id,
    )


@dataclass
class Earlier:
    """An earlier call of the same session, allowed by the policy: the same headers but for
    ``headers`` (None removes one) and without the approval id."""

    at: int
    method: str
    path: str
    body: bytes = b""
    headers: dict[str, str | None] = field(default_factory=dict)
    remember: list[str] = field(default_factory=list)


@dataclass
class Described:
    """One request an agent sent through Envoy and what the sidecar verifies for it."""

    summary: str
    method: str
    path: str
    headers: dict[str, str]
    identity: Identity
    body: bytes = b""
    task: TaskRecord | None = None
    earlier: list[Earlier] = field(default_factory=list)
    # The approval a human gave for exactly this request (it is in the store before the retry).
    approval: Callable[[Described], ApprovalRecord] | None = None


class _Clock:
    def __init__(self) -> None:
        self.now = float(NOW)

    def __call__(self) -> float:
        return self.now


def _scripted(answers: list[dict[str, Any]]) -> FakeOpa:
    """Stands in for OPA: records every input document (FakeOpa does), answers from a script."""

    def answer(query: Query) -> dict[str, Any]:
        assert query.path == DEFAULTS.opa.decision_path, f"unexpected query of {query.path}"
        return answers.pop(0)

    return FakeOpa(answer, decision_path=DEFAULTS.opa.decision_path)


class _Agent:
    """The identity the sidecar verified from the JWT-SVID (signature checks are not the point here)."""

    def __init__(self, identity: Identity, token: str) -> None:
        self.identity, self.token = identity, token

    def resolve(self, headers: dict[str, str], peer_principal: str | None = None) -> Identity:
        assert headers["authorization"] == f"Bearer {self.token}"
        return self.identity


class _Tasks(TaskService):
    """The task service's verdict on the presented grant: verified, active, bound to the caller."""

    def __init__(self, grant: TaskRecord | None) -> None:
        self.grant = grant

    async def verify_presented(self, token: str, identity: Identity | None) -> TaskRecord:
        assert self.grant is not None and token == task_token(self.grant)
        assert identity is not None and str(identity.spiffe_id) == self.grant.sub
        return replace(self.grant)


def _resolver(described: Described) -> Any:
    if described.identity.source == "xfcc":  # the real XFCC source, with the per-deployment secret
        config = IdentityConfig.model_validate({"sources": ["xfcc"], "trust_domains": ["demo.local"]})
        return IdentityResolver(config, None, XFCC_SECRET)
    return _Agent(described.identity, described.headers["authorization"].removeprefix("Bearer "))


def build(described: Described, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The input document the sidecar's pipeline sends to OPA for ``described``."""
    clock = _Clock()
    monkeypatch.setattr(time, "time", clock)
    answers: list[dict[str, Any]] = []
    store, opa = MemoryStore(), _scripted(answers)
    pipeline = make_pipeline(
        _resolver(described),
        opa,
        QUIET,
        tasks=_Tasks(described.task),
        sessions=SessionTracker(store, DEFAULTS.sessions),
        approvals=ApprovalService(DEFAULTS.approvals, store, opa, None),
    )

    async def run() -> dict[str, Any]:
        for call in described.earlier:  # each allowed by the stand-in policy, remembering its labels
            clock.now = float(call.at)
            merged = {**described.headers, **call.headers, DEFAULTS.approvals.header: None}
            headers = {k: v for k, v in merged.items() if v is not None}
            if call.body:
                headers["content-length"] = str(len(call.body))
            request = CheckRequest(call.method, call.path, headers, call.body)
            answers.append({"verdict": "allow", "reasons": ["earlier call"], "remember": call.remember})
            assert (await pipeline.check(request)).status == 200
        clock.now = float(NOW)
        if described.approval is not None:
            await store.create_approval(described.approval(described), DEFAULTS.approvals.max_pending_per_agent, NOW)
        answers.append({"verdict": "deny", "reasons": ["only the input is recorded"]})
        request = CheckRequest(described.method, described.path, described.headers, described.body)
        response = await pipeline.check(request)
        assert response.status == 403 and not answers, f"the pipeline stopped before OPA: {response}"
        return opa.inputs[-1]

    return asyncio.run(run())


# -- the described requests -------------------------------------------------------------------
def rest_read_jwt() -> Described:
    token, claims = jwt_svid(READER)
    return Described(
        "the reader agent reads a handbook page over the egress listener with its JWT-SVID",
        "GET",
        "/api/docs/handbook?section=2",
        {
            "host": TOOLS,
            "authorization": f"Bearer {token}",
            "x-forwarded-proto": "http",
            "x-request-id": "3f0c2a9e-8d2b-4a57-9d7e-2b1f0f5f9a11",
        },
        Identity(SpiffeId(READER), "jwt_svid", claims),
    )


def mcp_tools_call_xfcc() -> Described:
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 7,
            "method": "tools/call",
            "params": {
                "name": "create_ticket",
                "arguments": {"title": "Printer on fire"},
                "_meta": {"intent": {"purpose": "triage", "confidence": 0.9}},
            },
        },
        separators=(",", ":"),
    ).encode()
    return Described(
        "the writer agent calls the MCP tool create_ticket over mTLS (ingress listener), without a task grant",
        "POST",
        "/mcp",
        {
            "host": TOOLS,
            "content-type": "application/json",
            "content-length": str(len(body)),
            "mcp-method": "tools/call",
            "mcp-name": "create_ticket",
            "x-forwarded-client-cert": f"By=spiffe://demo.local/envoy/ingress;Hash=4f3c2b1a;URI={WRITER}",
            "x-authz-xfcc-secret": XFCC_SECRET,
            "x-envoy-auth-partial-body": "false",
            "x-forwarded-proto": "https",
            "x-request-id": "9b7a4c3d-1e2f-4a5b-8c9d-0e1f2a3b4c5d",
        },
        Identity(SpiffeId(WRITER), "xfcc"),
        body,
    )


def rest_write_under_task_jwt() -> Described:
    token, claims = jwt_svid(WRITER)
    grant = task("7d1c5a0e-2b9f-4c3e-9a51-6f0e8d2c4b17", "triage", ["docs:read", "tickets:read", "tickets:write"])
    body = json.dumps({"title": "VPN drops every hour", "priority": "high"}, separators=(",", ":")).encode()
    return Described(
        "the writer agent opens a ticket under its triage task, after listing tickets",
        "POST",
        "/api/tickets",
        {
            "host": TOOLS,
            "authorization": f"Bearer {token}",
            "content-type": "application/json",
            "content-length": str(len(body)),
            "x-agent-task-token": task_token(grant),
            "x-agent-purpose": "open a ticket for the VPN outage",
            "x-agent-confidence": "0.8",
            "x-envoy-auth-partial-body": "false",
            "x-forwarded-proto": "http",
            "x-request-id": "0c6f1e2d-5a4b-4c3d-8e2f-1a0b9c8d7e6f",
        },
        Identity(SpiffeId(WRITER), "jwt_svid", claims),
        body,
        task=grant,
        earlier=[Earlier(NOW - 40, "GET", "/api/tickets", headers=NO_BODY)],
    )


def mcp_send_email_after_pii_read_jwt() -> Described:
    token, claims = jwt_svid(WRITER)
    grant = task("a4e2c8b6-1f3d-4e5a-b7c9-0d2f4a6c8e01", "outreach", ["email:send", "records:read", "docs:read"])
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 12,
            "method": "tools/call",
            "params": {
                "name": "send_email",
                "arguments": {"to": "bob@demo.local", "subject": "Your record", "body": "Here is what we hold."},
            },
        },
        separators=(",", ":"),
    ).encode()
    return Described(
        "the writer agent sends an internal email under its outreach task after reading a record (pii_read)",
        "POST",
        "/mcp",
        {
            "host": TOOLS,
            "authorization": f"Bearer {token}",
            "content-type": "application/json",
            "content-length": str(len(body)),
            "mcp-method": "tools/call",
            "mcp-name": "send_email",
            "mcp-session-id": "5e1d7c3b-9a8f-4b2c-a1d0-e9f8c7b6a5d4",
            "x-agent-task-token": task_token(grant),
            "x-envoy-auth-partial-body": "false",
            "x-forwarded-proto": "http",
            "x-request-id": "6d5c4b3a-2f1e-4d0c-9b8a-7f6e5d4c3b2a",
        },
        Identity(SpiffeId(WRITER), "jwt_svid", claims),
        body,
        task=grant,
        earlier=[
            Earlier(
                NOW - 90,
                "POST",
                "/mcp",
                rpc(10, "search_docs", {"q": "retention policy"}),
                headers={"mcp-name": "search_docs"},
            ),
            Earlier(
                NOW - 30,
                "POST",
                "/mcp",
                rpc(11, "get_record", {"id": "42"}),
                headers={"mcp-name": "get_record"},
                remember=["pii_read"],
            ),
        ],
    )


def rpc(request_id: int, tool: str, arguments: dict[str, Any]) -> bytes:
    call = {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments},
    }
    return json.dumps(call, separators=(",", ":")).encode()


def rest_delete_approved_jwt() -> Described:
    token, claims = jwt_svid(WRITER)
    grant = task("c3b2a190-8f7e-4d6c-b5a4-93827160f5e4", "cleanup", ["records:read", "records:delete"])

    def approved(described: Described) -> ApprovalRecord:
        """What alice's approval left in the store: bound to this agent, task and exact request."""
        return ApprovalRecord(
            id=described.headers[DEFAULTS.approvals.header],
            agent=WRITER,
            task_id=grant.id,
            fingerprint=request_fingerprint(
                described.method, TOOLS, described.path, described.headers, described.body, False
            ),
            created_at=NOW - 240,
            expires_at=NOW + 660,
            decision_id="4e5f6a7b-8c9d-4e0f-a1b2-c3d4e5f6a7b8",
            reasons=["a human must approve before agent spiffe://demo.local/agent/writer may delete record"],
            summary={},
            data_class="restricted",
            approvers={"data_class": "restricted"},  # what the delete rule's step-up asks approvers for
            status="approved",
            approver={"kind": "oidc", "id": "https://idp.demo.local#alice", "claims": None},
            decision_reason="record is a duplicate",
            decided_at=NOW - 60,
        )

    return Described(
        "the writer agent retries DELETE /api/records/42 under its cleanup task with the approval alice gave",
        "DELETE",
        "/api/records/42",
        {
            "host": TOOLS,
            "authorization": f"Bearer {token}",
            "x-agent-task-token": task_token(grant),
            "x-agent-approval-id": "563a76e7-0c1d-4e2f-8a9b-3c4d5e6f7a8b",
            "x-forwarded-proto": "http",
            "x-request-id": "2b3c4d5e-6f70-4a8b-9c0d-1e2f3a4b5c6d",
        },
        Identity(SpiffeId(WRITER), "jwt_svid", claims),
        task=grant,
        earlier=[Earlier(NOW - 300, "GET", "/api/records/42", remember=["pii_read"])],
        approval=approved,
    )


DESCRIBED: dict[str, Callable[[], Described]] = {
    "rest-read-jwt": rest_read_jwt,
    "mcp-tools-call-xfcc": mcp_tools_call_xfcc,
    "rest-write-under-task-jwt": rest_write_under_task_jwt,
    "mcp-send-email-after-pii-read-jwt": mcp_send_email_after_pii_read_jwt,
    "rest-delete-approved-jwt": rest_delete_approved_jwt,
}


# -- tests ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", DESCRIBED)
def test_committed_example_is_what_the_sidecar_builds(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    described = DESCRIBED[name]()
    built = build(described, monkeypatch)
    VALIDATOR.validate(built)
    path = EXAMPLES / f"{name}.json"
    if os.environ.get("UPDATE_INPUT_EXAMPLES"):
        path.write_text(json.dumps(built, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    assert path.exists(), f"{path} is missing: run with UPDATE_INPUT_EXAMPLES=1"
    committed = json.loads(path.read_text(encoding="utf-8"))
    assert committed == built, (
        f"{path.name} ({described.summary}) is not what the sidecar sends to OPA: "
        "review the change, then run with UPDATE_INPUT_EXAMPLES=1"
    )


def test_every_example_is_described() -> None:
    """No hand-written example: each file has a described request above."""
    assert {p.stem for p in EXAMPLES.glob("*.json")} == set(DESCRIBED)


@pytest.mark.parametrize("name", DESCRIBED)
def test_described_requests_carry_only_what_envoy_forwards(name: str) -> None:
    exact, prefixes = _envoy_forwarded_header_names()
    for header in DESCRIBED[name]().headers:
        assert header == header.lower()
        assert header in exact or header.startswith(prefixes), f"{name}: envoy/envoy.yaml does not forward {header}"


def test_examples_show_no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the sidecar hides or strips before OPA: the XFCC secret, JWT signatures."""
    for name, describe in DESCRIBED.items():
        text = json.dumps(build(describe(), monkeypatch))
        assert "per-deployment-secret" not in text, name
        assert "c2lnbmF0dXJl" not in text, name
