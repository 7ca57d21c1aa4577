"""Fuzz targets: the parsers that read attacker-controlled bytes, and the decision mapper.

Each target takes raw bytes and must either return or raise the error type its caller turns
into a deny (or a 503). Anything else escaping is a bug: ``./taskw fuzz`` (atheris) reports it as
a crash, and the property tests (tests/fuzz, hypothesis) fail. Targets also check invariants:
an allow only ever comes from an explicit allow, a built input always describes a normalised
path, headers going to Envoy never carry CR, LF or NUL.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from devstack.trust_domain import DevTrustDomain
from sidecar import outcome, wire_http
from sidecar.body import EMPTY, parse_body
from sidecar.config import IdentityConfig
from sidecar.decision import DecisionError, Verdict, to_verdict
from sidecar.identity import IdentityError, IdentityResolver
from sidecar.identity.bundles import FileBundleSource
from sidecar.identity.chain import DelegationError, actor_chain
from sidecar.identity.jwt_svid import JwtSvidError, JwtSvidVerifier
from sidecar.identity.xfcc import XfccError, peer_spiffe_id
from sidecar.input import build_input
from sidecar.intent import declared_intent
from sidecar.keys import KeySet
from sidecar.mcp import BodyError
from sidecar.request import CheckRequest
from sidecar.tokens import TASK_TYP, TokenError, sign, verify

SECRET = "fuzz-xfcc-secret-0123456789"
CONTENT_TYPES = ("application/json", "text/plain", "", "application/x+json", "application/json; charset=utf-16")
MCP_HEADERS: tuple[dict[str, str], ...] = (
    {},
    {"mcp-method": "tools/call"},
    {"mcp-name": "search_docs"},
    {"mcp-method": "tools/list"},
)


class Invariant(AssertionError):
    """A target's invariant does not hold: a real finding, never an expected deny."""


@cache
def _identity() -> tuple[DevTrustDomain, IdentityResolver, JwtSvidVerifier, KeySet]:
    root = Path(tempfile.mkdtemp(prefix="authz-fuzz-"))
    td = DevTrustDomain(root).ensure()
    bundles = FileBundleSource({td.name: td.jwt_bundle})
    verifier = JwtSvidVerifier(bundles, ["authz-sidecar"], ["ES256"], [td.name], 8192, cache_entries=0)
    config = IdentityConfig.model_validate({"sources": ["xfcc", "jwt_svid"], "trust_domains": [td.name]})
    resolver = IdentityResolver(config, verifier, SECRET)
    return td, resolver, verifier, KeySet(None, "ES256", 3600)


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="surrogateescape")


def _headers_safe(headers: tuple[tuple[str, str], ...]) -> None:
    for name, value in headers:
        if any(c in name + value for c in "\r\n\0"):
            raise Invariant(f"header {name!r} carries CR, LF or NUL")


# -- targets ---------------------------------------------------------------------------------


def xfcc(data: bytes) -> None:
    """The XFCC parser alone, then XFCC through the identity resolver (with the trusted secret)."""
    text = _text(data)
    with contextlib.suppress(XfccError):
        peer_spiffe_id(text)
    _, resolver, _, _ = _identity()
    with contextlib.suppress(IdentityError):
        resolver.resolve({"x-forwarded-client-cert": text, "x-authz-xfcc-secret": SECRET})


def mcp_body(data: bytes) -> None:
    """JSON-RPC / MCP body parsing, under each content type and Mcp-* header combination, then intent."""
    if not data:
        return
    selector, body = data[0], data[1:]
    headers = {"content-type": CONTENT_TYPES[selector % len(CONTENT_TYPES)], **MCP_HEADERS[(selector >> 4) % 4]}
    try:
        parsed = parse_body(body, headers, truncated=bool(selector & 8))
    except BodyError:
        return
    if parsed.mcp is not None:
        if not isinstance(parsed.mcp.arguments, dict) or not isinstance(parsed.mcp.method, str):
            raise Invariant("an accepted MCP request has no method or non-object arguments")
        with contextlib.suppress(BodyError):
            declared_intent({}, parsed.mcp)
    if selector & 8 and (parsed.mcp is not None or parsed.parsed_body is not None):
        raise Invariant("a truncated body was parsed")


def request_target(data: bytes) -> None:
    """Path and query as Envoy passes them: the input document is always built and self-consistent."""
    text = _text(data)
    target = text if text.startswith("/") else "/" + text
    request = CheckRequest("GET", target, {"host": "demo.local"}, b"")
    document = build_input(request, identity=None, body=EMPTY, intent=None)
    parsed = document["parsed_path"]
    if document["action"]["path"] != "/" + "/".join(parsed):
        raise Invariant("action.path is not '/' + parsed_path")
    routed = "/" + unquote(target.partition("?")[0]).lstrip("/")
    if document["action"]["path"] != routed:
        raise Invariant(f"judged path {document['action']['path']!r} is not the routed path {routed!r}")
    if not isinstance(document["parsed_query"], dict):
        raise Invariant("parsed_query is not an object")
    json.dumps(document)  # what OPA receives must serialise


def jwt_svid(data: bytes) -> None:
    """Bearer token text through the JWT-SVID verifier and the act-chain walk."""
    _, resolver, verifier, _ = _identity()
    token = _text(data)
    try:
        verified = verifier.verify(token)
    except JwtSvidError:
        verified = None
    if verified is not None:
        with contextlib.suppress(DelegationError):
            actor_chain(verified.claims, 8)
    with contextlib.suppress(IdentityError):
        resolver.resolve({"authorization": "Bearer " + token})


def task_token(data: bytes) -> None:
    """Token text through the sidecar's own JWT verification (task tokens)."""
    _, _, _, keys = _identity()
    try:
        claims = verify(keys, _text(data), typ=TASK_TYP, issuer="authz-sidecar", audience="authz-sidecar")
    except TokenError:
        return
    if not isinstance(claims.get("sub"), str):
        raise Invariant("a verified task token without a string sub")


def decision(data: bytes) -> None:
    """Any JSON document as OPA's result: a Verdict or a DecisionError; an allow only when explicit;
    and whatever is produced goes on the wire without CR/LF/NUL in a header."""
    try:
        document = json.loads(data)
    except (ValueError, RecursionError):
        return
    check_decision(document)


def check_decision(document: Any) -> Verdict | None:
    try:
        verdict = to_verdict(document)
    except DecisionError:
        return None
    if verdict.kind == "allow" and not explicit_allow(document):
        raise Invariant(f"{document!r} mapped to an allow")
    rpc = outcome.RpcContext(1)
    if verdict.kind == "allow":
        answer = wire_http.encode(
            outcome.allow(verdict, decision_id="d", identity=None, request_headers={"x-authz-a": "b"})
        )
        if answer.status != 200:
            raise Invariant("an allow that is not a 200")
    elif verdict.kind == "deny":
        answer = wire_http.encode(outcome.deny(verdict, decision_id="d", rpc=rpc))
        if 200 <= answer.status < 300 or answer.status >= 500:
            raise Invariant(f"a deny answered {answer.status}")
    else:
        answer = wire_http.encode(outcome.step_up(verdict, decision_id="d", rpc=None))
        if answer.status != 401:
            raise Invariant("a step-up that is not a 401")
    _headers_safe(answer.headers)
    return verdict


def explicit_allow(document: Any) -> bool:
    """The only documents that may allow: ``true``, ``{"allowed": true, ...}``, ``{"verdict": "allow", ...}``."""
    if document is True:
        return True
    if not isinstance(document, dict):
        return False
    return document.get("allowed") is True or document.get("verdict") == "allow"


TARGETS: dict[str, Callable[[bytes], None]] = {
    "xfcc": xfcc,
    "mcp-body": mcp_body,
    "request-target": request_target,
    "jwt-svid": jwt_svid,
    "task-token": task_token,
    "decision": decision,
}


def seeds(name: str) -> list[bytes]:
    """Valid and nearly valid examples the fuzzers start from."""
    td, _, _, keys = _identity()
    params = {"name": "search_docs", "arguments": {"q": "x"}}
    rpc = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}
    now = int(time.time())
    task = {"iss": "authz-sidecar", "aud": "authz-sidecar", "sub": "spiffe://demo.local/agent/writer"}
    task.update({"jti": "t-1", "iat": now, "exp": now + 600})  # type: ignore[dict-item]
    corpus: dict[str, list[bytes]] = {
        "xfcc": [
            b"URI=spiffe://demo.local/agent/writer",
            b'By=spiffe://demo.local/envoy;Hash=ab;URI="spiffe://demo.local/agent/writer";Subject="CN=a,O=b"',
            b"URI=spiffe://demo.local/a,URI=spiffe://demo.local/b",
        ],
        "mcp-body": [bytes([s]) + json.dumps(rpc).encode() for s in (0, 1, 16, 33)]
        + [b"\x00" + b'{"jsonrpc":"2.0","id":1,"method":"a","method":"b"}', b"\x01[" + json.dumps(rpc).encode() + b"]"],
        "request-target": [b"/api/docs/x?a=1&b=%20", b"/api/docs/%2e%2e/tickets", b"//evil.example/x;y?z#f"],
        "jwt-svid": [
            td.mint_jwt("spiffe://demo.local/agent/reader").encode(),
            td.mint_jwt(
                "spiffe://demo.local/agent/reader", extra_claims={"act": {"sub": "spiffe://demo.local/a"}}
            ).encode(),
        ],
        "task-token": [sign(keys, task, TASK_TYP).encode()],
        "decision": [
            b"true",
            b'{"allowed": false, "http_status": 418, "headers": {"x": "y"}}',
            b'{"verdict": "allow", "headers": {"x-authz-a": "b"}, "credential": {"audience": "a", "scopes": ["s"], '
            b'"ttl_seconds": 5}}',
            b'{"verdict": "step_up", "step_up": {"kind": "acr", "acr_values": ["mfa"]}}',
            b'{"verdict": "deny", "status": 403, "reasons": ["no"]}',
        ],
    }
    return corpus[name]
