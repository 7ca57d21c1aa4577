"""JWT-SVID verification and the identity resolver, with keys from a real dev trust domain."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from pathlib import Path
from types import MethodType
from typing import cast

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from devstack.trust_domain import DevTrustDomain
from sidecar.config import IdentityConfig
from sidecar.identity import IdentityError, IdentityResolver, bearer_token
from sidecar.identity.bundles import FileBundleSource
from sidecar.identity.jwt_svid import JwtSvidError, JwtSvidVerifier

READER = "spiffe://demo.local/agent/reader"
SECRET = "s" * 32


def verifier(td: DevTrustDomain, **overrides: object) -> JwtSvidVerifier:
    args: dict[str, object] = {
        "audiences": ["authz-sidecar"],
        "algorithms": ["ES256", "RS256"],
        "trust_domains": ["demo.local"],
        "max_token_bytes": 8192,
    }
    args.update(overrides)
    return JwtSvidVerifier(FileBundleSource({"demo.local": td.jwt_bundle}), **args)  # type: ignore[arg-type]


def b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_valid_token(trust_domain: DevTrustDomain) -> None:
    token = trust_domain.mint_jwt(READER, extra_claims={"act": {"sub": "spiffe://demo.local/agent/boss"}})
    verified = verifier(trust_domain).verify(token)
    assert str(verified.spiffe_id) == READER
    assert verified.claims["act"]["sub"] == "spiffe://demo.local/agent/boss"


def _kid(td: DevTrustDomain) -> str:
    return str(json.loads(td.jwt_bundle.read_text())["keys"][0]["kid"])


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda td: td.mint_jwt(READER, ttl=-60), "expired"),
        (lambda td: td.mint_jwt(READER, audience="someone-else"), "audience"),
        (
            lambda td: td.mint_jwt(READER, extra_claims={"nbf": int(time.time()) + 600}),
            "not yet valid",
        ),
        (lambda td: td.mint_jwt("spiffe://demo.local.evil/agent/x"), "not trusted"),
        (lambda td: td.mint_jwt(READER, extra_claims={"iat": int(time.time()) + 3600}), "future"),
        (lambda td: td.mint_jwt("https://demo.local/agent/x"), "not a SPIFFE ID"),
        (
            lambda td: (
                b64({"alg": "none", "typ": "JWT"})
                + "."
                + b64({"sub": READER, "aud": "authz-sidecar", "exp": time.time() + 60})
                + "."
            ),
            "algorithm",
        ),
        (lambda td: "not-a-jwt", "well-formed"),
        (lambda td: "a.b.c", "well-formed"),
        (lambda td: td.mint_jwt(READER) + "x" * 9000, "larger"),
    ],
)
def test_rejected_tokens(trust_domain: DevTrustDomain, make: Callable[[DevTrustDomain], str], reason: str) -> None:
    with pytest.raises(JwtSvidError, match=reason):
        verifier(trust_domain).verify(make(trust_domain))


def test_hs256_signed_with_the_public_key_is_rejected(trust_domain: DevTrustDomain) -> None:
    public_jwk = json.loads(trust_domain.jwt_bundle.read_text())["keys"][0]
    signing_input = (
        b64({"alg": "HS256", "typ": "JWT", "kid": public_jwk["kid"]})
        + "."
        + b64({"sub": READER, "aud": "authz-sidecar", "exp": int(time.time()) + 60})
    )
    mac = hmac.new(json.dumps(public_jwk).encode(), signing_input.encode(), hashlib.sha256).digest()
    token = signing_input + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    with pytest.raises(JwtSvidError, match="algorithm 'HS256'"):
        verifier(trust_domain).verify(token)


def test_foreign_key_with_known_kid_fails_signature(trust_domain: DevTrustDomain) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode(
        {"sub": READER, "aud": "authz-sidecar", "exp": int(time.time()) + 60},
        key,
        algorithm="ES256",
        headers={"kid": _kid(trust_domain)},
    )
    with pytest.raises(JwtSvidError, match="signature"):
        verifier(trust_domain).verify(token)


def test_unknown_kid_and_missing_exp(trust_domain: DevTrustDomain) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    unknown = jwt.encode(
        {"sub": READER, "aud": "authz-sidecar", "exp": int(time.time()) + 60},
        key,
        "ES256",
        headers={"kid": "nope"},
    )
    with pytest.raises(JwtSvidError, match="key id"):
        verifier(trust_domain).verify(unknown)
    no_exp = jwt.encode({"sub": READER, "aud": "authz-sidecar"}, key, "ES256", headers={"kid": _kid(trust_domain)})
    with pytest.raises(JwtSvidError, match="exp"):
        verifier(trust_domain).verify(no_exp)


def test_algorithm_allowlist_is_enforced(trust_domain: DevTrustDomain) -> None:
    with pytest.raises(JwtSvidError, match="algorithm 'ES256' is not allowed"):
        verifier(trust_domain, algorithms=["RS256"]).verify(trust_domain.mint_jwt(READER))


def test_bundle_rotation_is_picked_up(tmp_path: Path) -> None:
    td = DevTrustDomain(tmp_path).ensure()
    v = verifier(td)
    old_token = td.mint_jwt(READER)
    v.verify(old_token)
    td.jwt_key.unlink()
    td.jwt_bundle.unlink()
    td.ensure()  # new key, new bundle file
    with pytest.raises(JwtSvidError):
        v.verify(old_token)
    v.verify(td.mint_jwt(READER))


def test_broken_bundle_file_trusts_nothing(tmp_path: Path) -> None:
    td = DevTrustDomain(tmp_path).ensure()
    token = td.mint_jwt(READER)
    td.jwt_bundle.write_text("{not json")
    with pytest.raises(JwtSvidError, match="no JWT bundle"):
        verifier(td).verify(token)


# -- resolver ---------------------------------------------------------------------------------


def resolver(td: DevTrustDomain, **config: object) -> IdentityResolver:
    return IdentityResolver(IdentityConfig.model_validate(config), verifier(td), SECRET)


def test_jwt_identity_with_delegation_chain(trust_domain: DevTrustDomain) -> None:
    act = {"sub": "spiffe://demo.local/agent/a", "act": {"sub": "spiffe://demo.local/agent/b"}}
    token = trust_domain.mint_jwt(READER, extra_claims={"act": act})
    identity = resolver(trust_domain).resolve({"authorization": f"Bearer {token}"})
    assert identity is not None
    assert identity.source == "jwt_svid"
    assert identity.delegation_chain == (
        "spiffe://demo.local/agent/a",
        "spiffe://demo.local/agent/b",
    )


def test_xfcc_needs_the_envoy_secret(trust_domain: DevTrustDomain) -> None:
    headers = {"x-forwarded-client-cert": "URI=spiffe://demo.local/agent/writer"}
    with pytest.raises(IdentityError, match="not trusted on this listener"):
        resolver(trust_domain).resolve(headers)
    with pytest.raises(IdentityError, match="not trusted on this listener"):
        resolver(trust_domain).resolve({**headers, "x-authz-xfcc-secret": "wrong"})
    identity = resolver(trust_domain).resolve({**headers, "x-authz-xfcc-secret": SECRET})
    assert identity is not None and identity.source == "xfcc"


def test_presented_invalid_credential_never_falls_through(trust_domain: DevTrustDomain) -> None:
    headers = {
        "x-forwarded-client-cert": "URI=spiffe://demo.local/agent/writer",
        "x-authz-xfcc-secret": SECRET,
        "authorization": "Bearer garbage",
    }
    with pytest.raises(IdentityError, match="JWT-SVID rejected") as info:
        resolver(trust_domain).resolve(headers)
    assert info.value.invalid_token


def test_credentials_naming_different_agents(trust_domain: DevTrustDomain) -> None:
    headers = {
        "x-forwarded-client-cert": "URI=spiffe://demo.local/agent/writer",
        "x-authz-xfcc-secret": SECRET,
        "authorization": "Bearer " + trust_domain.mint_jwt(READER),
    }
    with pytest.raises(IdentityError, match="different SPIFFE IDs"):
        resolver(trust_domain).resolve(headers)


def test_missing_identity(trust_domain: DevTrustDomain) -> None:
    with pytest.raises(IdentityError, match="no agent identity"):
        resolver(trust_domain).resolve({})
    assert resolver(trust_domain, required=False).resolve({}) is None
    assert cast(MethodType, resolver(trust_domain).resolve).__self__ is not None


def test_xfcc_from_untrusted_domain(trust_domain: DevTrustDomain) -> None:
    headers = {
        "x-forwarded-client-cert": "URI=spiffe://other.example/agent/x",
        "x-authz-xfcc-secret": SECRET,
    }
    with pytest.raises(IdentityError, match=r"trust domain other\.example"):
        resolver(trust_domain).resolve(headers)


def test_pod_identity(trust_domain: DevTrustDomain) -> None:
    r = resolver(trust_domain, sources=["jwt_svid", "pod"], pod={"spiffe_id": READER})
    identity = r.resolve({})
    assert identity is not None and identity.source == "pod"
    writer = trust_domain.mint_jwt("spiffe://demo.local/agent/writer")
    with pytest.raises(IdentityError, match="different"):
        r.resolve({"authorization": f"Bearer {writer}"})


def test_delegation_too_deep(trust_domain: DevTrustDomain) -> None:
    act: dict[str, object] = {"sub": "spiffe://demo.local/a"}
    for _ in range(10):
        act = {"sub": "spiffe://demo.local/a", "act": act}
    token = trust_domain.mint_jwt(READER, extra_claims={"act": act})
    with pytest.raises(IdentityError, match="deeper"):
        resolver(trust_domain, max_delegation_depth=3).resolve({"authorization": f"Bearer {token}"})


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        (None, None),
    ],
)
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token
