"""Attacks on identity: spoofed XFCC, forged and malformed JWT-SVIDs, tokens of the wrong kind.

Each case says why it must fail; all go through real Envoy (or straight at the sidecar where an
agent in the pod could reach it).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from devstack.stack import Stack
from devstack.trust_domain import DevTrustDomain
from sidecar.unix_http import UnixResponse
from tests.adversarial.conftest import READER, WRITER, Attacker, verdict

pytestmark = [pytest.mark.e2e, pytest.mark.adversarial]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(header: dict[str, Any], claims: dict[str, Any], signature: str = "") -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}.{signature}"


def _claims(sub: str = WRITER, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": sub, "aud": "authz-sidecar", "iat": now, "exp": now + 300, **extra}


def _kid(td: DevTrustDomain) -> str:
    kid: str = json.loads(td.jwt_bundle.read_text())["keys"][0]["kid"]
    return kid


def _hs256_with_public_key(td: DevTrustDomain, key_bytes: bytes) -> str:
    header = {"alg": "HS256", "typ": "JWT", "kid": _kid(td)}
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(_claims()).encode())}"
    signature = hmac.new(key_bytes, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def _public_pem(td: DevTrustDomain) -> bytes:
    key = serialization.load_pem_private_key(td.jwt_key.read_bytes(), password=None)
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _other_key(**headers: Any) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return jwt.encode(_claims(), key, algorithm="ES256", headers={"typ": "JWT", **headers})


def _embedded_jwk() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return jwt.encode(_claims(), key, algorithm="RS256", headers={"kid": "attacker", "jwk": jwk})


def _legit(td: DevTrustDomain, claims: dict[str, Any]) -> str:
    """Signed with the trust domain's real key: the issuer is right, the claims are not."""
    key = td.jwt_key.read_bytes()
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": _kid(td), "typ": "JWT"})


def _deep_act(depth: int) -> dict[str, Any]:
    act: dict[str, Any] = {"sub": "spiffe://demo.local/agent/ops/0"}
    for i in range(1, depth):
        act = {"sub": f"spiffe://demo.local/agent/ops/{i}", "act": act}
    return act


# id -> (token factory, why it must be refused)
BAD_JWTS: dict[str, tuple[Callable[[Stack, Attacker], str], str]] = {
    "alg-none": (
        lambda s, a: _unsigned({"alg": "none", "typ": "JWT"}, _claims()),
        "an unsigned token proves nothing; 'none' is never an allowed algorithm",
    ),
    "alg-none-keeping-a-real-signature": (
        lambda s, a: _unsigned({"alg": "none"}, _claims(), a.token(READER).rsplit(".", 1)[1]),
        "the signature belongs to other bytes, and 'none' is refused before any key is tried",
    ),
    "hs256-keyed-with-the-public-jwks": (
        lambda s, a: _hs256_with_public_key(s.trust_domain, s.trust_domain.jwt_bundle.read_bytes()),
        "algorithm confusion: HS* is not in the allowlist, so a public key is never used as an HMAC secret",
    ),
    "hs256-keyed-with-the-public-pem": (
        lambda s, a: _hs256_with_public_key(s.trust_domain, _public_pem(s.trust_domain)),
        "algorithm confusion with another encoding of the key: still HS256, still refused",
    ),
    "unknown-kid": (
        lambda s, a: _other_key(kid=uuid.uuid4().hex),
        "no key with that kid in the trust bundle",
    ),
    "real-kid-other-key": (
        lambda s, a: _other_key(kid=_kid(s.trust_domain)),
        "the kid names our key but the signature does not verify with it",
    ),
    "jku-and-x5u-point-elsewhere": (
        lambda s, a: _other_key(kid="k1", jku="http://127.0.0.1:1/jwks.json", x5u="http://127.0.0.1:1/c.pem"),
        "keys come only from the trust bundle, never from URLs in the token",
    ),
    "embedded-jwk": (
        lambda s, a: _embedded_jwk(),
        "a key carried in the token itself is never trusted",
    ),
    "expired": (
        lambda s, a: s.trust_domain.mint_jwt(WRITER, ttl=-60),
        "exp is in the past",
    ),
    "not-yet-valid": (
        lambda s, a: a.token(WRITER, nbf=int(time.time()) + 3600),
        "nbf is an hour from now",
    ),
    "wrong-audience": (
        lambda s, a: s.trust_domain.mint_jwt(WRITER, audience="payments-service"),
        "the token was issued for another service",
    ),
    "no-audience": (
        lambda s, a: _legit(s.trust_domain, {k: v for k, v in _claims().items() if k != "aud"}),
        "a JWT-SVID without aud could be replayed to any service",
    ),
    "other-trust-domain": (
        lambda s, a: DevTrustDomain(s.workdir / "evil-td", "evil.example").mint_jwt("spiffe://evil.example/agent/w"),
        "evil.example is not a trusted trust domain",
    ),
    "other-trust-domain-signed-by-ours": (
        lambda s, a: _legit(s.trust_domain, _claims(sub="spiffe://evil.example/agent/writer")),
        "the trust domain of sub decides which bundle verifies it, and evil.example is not trusted",
    ),
    "same-trust-domain-name-other-ca": (
        lambda s, a: DevTrustDomain(s.workdir / "impostor-td").mint_jwt(WRITER),
        "an impostor CA that calls itself demo.local signs with a key not in our bundle",
    ),
    "subject-not-a-spiffe-id": (
        lambda s, a: _legit(s.trust_domain, _claims(sub="writer")),
        "sub must be a SPIFFE ID",
    ),
    "exp-as-string": (
        lambda s, a: _legit(s.trust_domain, _claims(exp=str(int(time.time()) + 300))),
        "exp must be numeric; a string could be read as 'never expires'",
    ),
    "huge-garbage": (
        lambda s, a: "a" * 20_000,
        "longer than identity.jwt_svid.max_token_bytes: refused before parsing",
    ),
    "huge-but-validly-signed": (
        lambda s, a: a.token(WRITER, padding="x" * 10_000),
        "over the size limit even though the signature is good",
    ),
    "delegation-chain-too-deep": (
        lambda s, a: a.token(WRITER, act=_deep_act(12)),
        "an act chain deeper than identity.max_delegation_depth",
    ),
    "act-claim-not-an-object": (
        lambda s, a: a.token(WRITER, act="spiffe://demo.local/agent/admin"),
        "a malformed act claim is an invalid token, not an empty chain",
    ),
    "task-token-as-jwt-svid": (
        lambda s, a: a.open_task(WRITER, "triage", ["tickets:write"])["token"],
        "task tokens are signed by the sidecar, not the trust domain: they are not identities",
    ),
    "oidc-approver-token-as-jwt-svid": (
        lambda s, a: s.oidc.mint("alice", ["security-approvers"]),
        "a human approver's ID token is not an agent identity",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_JWTS))
def test_bad_jwt_svid_is_401(stack: Stack, attacker: Attacker, case: str) -> None:
    make, why = BAD_JWTS[case]
    token = make(stack, attacker)
    response = attacker.send("POST", "/api/tickets", {"authorization": f"Bearer {token}"}, json={"title": "x"})
    assert response.status_code == 401, f"{case}: {why}; got {response.status_code} {response.text[:200]}"
    assert verdict(response)["verdict"] == "deny", why
    assert 'error="invalid_token"' in response.headers["www-authenticate"], why


def test_two_authorization_headers_are_refused(attacker: Attacker) -> None:
    """Which of two bearer tokens counts would depend on the parser: neither does."""
    status, _, body = attacker.raw_request(
        "GET /api/docs/x HTTP/1.1",
        ["Host: a", *(f"Authorization: Bearer {attacker.token(agent)}" for agent in (READER, WRITER))],
    )
    assert status == 401, body


# -- XFCC -------------------------------------------------------------------------------


def test_xfcc_alone_on_the_plaintext_listener_is_no_identity(attacker: Attacker) -> None:
    """Egress is plaintext: Envoy removes any client XFCC (SANITIZE), so there is no identity at all."""
    response = attacker.send(
        "GET", "/api/docs/x", {"x-forwarded-client-cert": f"By=spiffe://demo.local/envoy;URI={WRITER}"}
    )
    assert response.status_code == 401
    assert verdict(response)["reasons"] == ["no agent identity was presented"]


@pytest.mark.parametrize(
    "xfcc",
    [
        pytest.param([f"URI={WRITER}"], id="one-element"),
        pytest.param([f"URI={WRITER}", f"URI={WRITER}"], id="duplicated-header"),
        pytest.param([f'URI={WRITER},URI="{WRITER}"'], id="two-elements"),
        pytest.param([f'Hash=abc;URI="{WRITER}";Subject="CN=writer"'], id="quoted-with-subject"),
    ],
)
def test_spoofed_xfcc_beside_a_reader_token_stays_the_reader(attacker: Attacker, xfcc: list[str]) -> None:
    """A reader adds an XFCC naming the writer: removed on the plaintext listener, judged as the reader's write."""
    lines = ["Host: a", f"Authorization: Bearer {attacker.token(READER)}", "Content-Type: application/json"]
    lines += [f"X-Forwarded-Client-Cert: {value}" for value in xfcc]
    status, headers, body = attacker.raw_request("POST /api/tickets HTTP/1.1", [*lines, "Content-Length: 2"], b"{}")
    assert status == 403, body
    event = attacker.opa_event(headers["x-authz-decision-id"])
    assert event["input"]["agent"]["spiffe_id"] == READER
    assert "x-forwarded-client-cert" not in event["input"]["attributes"]["request"]["http"]["headers"]


def test_guessed_xfcc_secret_does_not_make_xfcc_trusted(attacker: Attacker) -> None:
    """The client guesses the secret header: Envoy still strips XFCC on egress, and the guess never travels upstream."""
    spoof = {"x-forwarded-client-cert": f"URI={WRITER}", "x-authz-xfcc-secret": "guess-guess-guess-guess"}
    assert attacker.send("GET", "/api/docs/x", spoof).status_code == 401
    response = attacker.send("GET", "/api/docs/x", {**spoof, **attacker.bearer(READER)})
    assert response.status_code == 200
    saw = attacker.upstream_saw(response.headers["x-authz-decision-id"])
    assert saw["spiffe_id"] == READER


def _direct(stack: Stack, headers: dict[str, str]) -> UnixResponse:
    """Something that reached the check endpoint's socket calls it without Envoy (only the trio's
    users can: tests/adversarial/test_pod_boundary.py); XFCC still needs the secret."""
    return stack.check("GET", "/api/docs/x", headers)


@pytest.mark.parametrize(
    ("secret", "why"),
    [
        pytest.param(None, "no secret: XFCC from anyone but Envoy's mTLS listener is not trusted", id="no-secret"),
        pytest.param("wrong-wrong-wrong-wrong", "a wrong secret", id="wrong-secret"),
        pytest.param("PREFIX", "the first half of the right secret is not the secret", id="secret-prefix"),
        pytest.param("", "an empty secret header", id="empty-secret"),
    ],
)
def test_xfcc_straight_to_the_sidecar_is_401(stack: Stack, secret: str | None, why: str) -> None:
    headers = {"x-forwarded-client-cert": f"URI={WRITER}"}
    if secret == "PREFIX":
        real = stack.trust_domain.xfcc_secret.read_text().strip()
        secret = real[: len(real) // 2]
    if secret is not None:
        headers["x-authz-xfcc-secret"] = secret
    response = _direct(stack, headers)
    assert response.status_code == 401, why
    assert "not trusted" in response.json()["reasons"][0], why


def test_xfcc_is_not_an_identity_on_the_task_api(stack: Stack) -> None:
    """The sidecar's own API authenticates by JWT-SVID only: a header naming a peer is never enough."""
    secret = stack.trust_domain.xfcc_secret.read_text().strip()
    response = requests.post(
        f"{stack.sidecar_url}/v1/tasks",
        json={"purpose": "triage", "scopes": ["tickets:write"], "ttl_seconds": 60},
        headers={"x-forwarded-client-cert": f"URI={WRITER}", "x-authz-xfcc-secret": secret},
        timeout=10,
    )
    assert response.status_code == 401


@pytest.mark.parametrize(
    "spoof",
    [
        pytest.param({"x-forwarded-client-cert": f"URI={WRITER}"}, id="client-xfcc"),
        pytest.param({"x-forwarded-client-cert": f"URI={WRITER},URI={WRITER}"}, id="client-xfcc-two-elements"),
        pytest.param({"x-authz-xfcc-secret": "client-chosen-value-123"}, id="client-secret-header"),
    ],
)
def test_mtls_ingress_replaces_client_xfcc_with_the_verified_peer(attacker: Attacker, spoof: dict[str, str]) -> None:
    """SANITIZE_SET: the XFCC the sidecar sees names the certificate's SPIFFE ID, whatever the client sent."""
    response = attacker.ingress(READER, "POST", "/api/tickets", json={"title": "x"}, headers=spoof)
    assert response.status_code == 403, response.text
    event = attacker.opa_event(response.headers["x-authz-decision-id"])
    assert event["input"]["agent"]["spiffe_id"] == READER
    assert event["input"]["agent"]["identity_source"] == "xfcc"


def test_mtls_peer_and_jwt_svid_naming_different_agents_is_401(attacker: Attacker) -> None:
    """Two credentials that disagree are refused: the sidecar never picks the stronger-sounding one."""
    response = attacker.ingress(READER, "GET", "/api/docs/x", headers=attacker.bearer(WRITER))
    assert response.status_code == 401
    assert "different SPIFFE IDs" in response.json()["reasons"][0]
