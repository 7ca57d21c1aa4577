"""Just-in-time credentials are bound to the request they were minted for (docs/tokens.md).

The claims the sidecar builds, the pipeline binding exactly what Envoy asked about, the refusal
to mint for a body Envoy only partly buffered, and the demo upstream's check of the binding.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from typing import Any

import jwt
import pytest

from devstack.upstream import ReceivedRequest, binding_mismatch
from sidecar import wire_http
from sidecar.config import IdentityConfig
from sidecar.credentials import CredentialMinter, CredentialSpec, RequestBinding, body_sha256
from sidecar.identity import IdentityResolver
from sidecar.keys import KeySet
from sidecar.opa_fake import FakeOpa, always
from sidecar.pipeline import Pipeline
from sidecar.request import PARTIAL_BODY_HEADER, CheckRequest
from sidecar.tokens import CREDENTIAL_TYP, verify
from tests.pipelines import make_pipeline

AGENT = "spiffe://demo.local/agent/writer"
SPEC = CredentialSpec("demo-upstream", ("tickets:write",), 60)
ALLOW_WITH_CREDENTIAL = {
    "verdict": "allow",
    "credential": {"audience": "demo-upstream", "scopes": ["tickets:write"], "ttl_seconds": 60},
}


@pytest.fixture(scope="module")
def keys() -> KeySet:
    return KeySet(None, "ES256", 10)


def mint(keys: KeySet, binding: RequestBinding) -> dict[str, Any]:
    token = CredentialMinter(keys, "authz-sidecar", 300).mint(
        SPEC, request=binding, agent=AGENT, chain=(), decision_id="d-1", task_id=None
    )
    return verify(keys, token, typ=CREDENTIAL_TYP, issuer="authz-sidecar", audience="demo-upstream")


def test_body_hash_is_unpadded_base64url_sha256_of_the_exact_bytes() -> None:
    assert body_sha256(b"") == "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU"  # SHA-256 of nothing
    body = b'{"title": "x"}'
    expected = base64.urlsafe_b64encode(hashlib.sha256(body).digest()).rstrip(b"=").decode()
    assert body_sha256(body) == expected and "=" not in expected
    assert body_sha256(b'{"title":"x"}') != expected, "whitespace is part of the bytes the upstream gets"


def test_minted_credential_carries_the_request_it_is_for(keys: KeySet) -> None:
    claims = mint(keys, RequestBinding("POST", "/api/tickets?draft=1&x=%2F", b'{"title": "x"}'))
    assert claims["req_method"] == "POST"
    assert claims["req_target"] == "/api/tickets?draft=1&x=%2F", "path and query, never decoded"
    assert claims["req_body_sha256"] == body_sha256(b'{"title": "x"}')
    assert claims["aud"] == "demo-upstream" and claims["sub"] == AGENT


@pytest.mark.parametrize(
    "other",
    [
        RequestBinding("DELETE", "/api/tickets", b"{}"),
        RequestBinding("POST", "/api/payments", b"{}"),
        RequestBinding("POST", "/api/tickets?x=1", b"{}"),
        RequestBinding("POST", "/api/tickets", b'{"amount": 1000}'),
    ],
    ids=["method", "path", "query", "body"],
)
def test_each_part_of_the_request_changes_the_binding(keys: KeySet, other: RequestBinding) -> None:
    bound = ("req_method", "req_target", "req_body_sha256")
    mine = mint(keys, RequestBinding("POST", "/api/tickets", b"{}"))
    theirs = mint(keys, other)
    assert [mine[k] for k in bound] != [theirs[k] for k in bound]


def _pipeline(keys: KeySet, *, allow_partial_body: bool) -> Pipeline:
    identity = IdentityConfig.model_validate({"sources": ["pod"], "pod": {"spiffe_id": AGENT}})
    return make_pipeline(
        IdentityResolver(identity, None, None),
        FakeOpa(always(ALLOW_WITH_CREDENTIAL)),
        {"request_body": {"allow_partial": allow_partial_body}},
        minter=CredentialMinter(keys, "authz-sidecar", 300),
    )


def test_pipeline_binds_the_request_envoy_asked_about(keys: KeySet) -> None:
    body = b'{"title":  "printer"}\n'
    request = CheckRequest("POST", "/api/tickets?b=2&a=1", {"host": "api.demo.local"}, body)
    answer = asyncio.run(_pipeline(keys, allow_partial_body=False).check(request))
    assert answer.status == 200, answer.body
    bearer = dict(answer.upstream_headers)["authorization"].removeprefix("Bearer ")
    claims = jwt.decode(bearer, options={"verify_signature": False})
    assert (claims["req_method"], claims["req_target"]) == ("POST", "/api/tickets?b=2&a=1")
    assert claims["req_body_sha256"] == body_sha256(body)


def test_no_credential_for_a_body_envoy_sent_only_part_of(keys: KeySet) -> None:
    """With request_body.allow_partial the policy may allow, but a hash of the first part would
    let the rest of the body ride along unchecked: refuse to mint, and so refuse the call."""
    headers = {"host": "api.demo.local", PARTIAL_BODY_HEADER: "true"}
    request = CheckRequest("POST", "/api/tickets", headers, b'{"title": "the first part of a lon')
    answer = asyncio.run(_pipeline(keys, allow_partial_body=True).check(request))
    assert answer.status == 413, answer.body
    assert b"larger than a credential can be bound to" in answer.body
    assert "authorization" not in dict(wire_http.encode(answer).headers)


# -- the demo upstream's check, the reference for upstream authors -------------------------------


def _received(
    method: str = "POST", target: str = "/api/tickets", body: bytes = b"{}", headers: dict[str, str] | None = None
) -> ReceivedRequest:
    return ReceivedRequest(method, target, body, headers or {})


def _claims(method: str = "POST", target: str = "/api/tickets", body: bytes = b"{}") -> dict[str, Any]:
    return RequestBinding(method, target, body).claims()


def test_upstream_accepts_the_request_the_credential_was_minted_for() -> None:
    assert binding_mismatch(_claims(), _received()) is None


@pytest.mark.parametrize(
    ("received", "reason"),
    [
        (_received(method="DELETE"), "method 'DELETE', minted for 'POST'"),
        (_received(method="post"), "method 'post', minted for 'POST'"),
        (_received(target="/api/payments"), "request target"),
        (_received(target="/api/tickets?"), "request target"),
        (_received(target="/api/tickets?x=1"), "request target"),
        (_received(target="/api/%74ickets"), "request target"),
        (_received(body=b'{"amount": 1}'), "body differs"),
        (_received(body=b"{} "), "body differs"),
        (_received(headers={"x-http-method-override": "DELETE"}), "override header x-http-method-override"),
        (_received(headers={"x-original-url": "/api/payments"}), "override header x-original-url"),
    ],
)
def test_upstream_refuses_any_other_request(received: ReceivedRequest, reason: str) -> None:
    mismatch = binding_mismatch(_claims(), received)
    assert mismatch is not None and reason in mismatch


@pytest.mark.parametrize("missing", ["req_method", "req_target", "req_body_sha256"])
def test_upstream_refuses_an_unbound_credential(missing: str) -> None:
    claims = {k: v for k, v in _claims().items() if k != missing}
    assert binding_mismatch(claims, _received()) == "the credential is not bound to a request"
