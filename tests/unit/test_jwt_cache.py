"""The verified-token cache: only successes, never past ``exp``, never past a bundle rotation."""

from __future__ import annotations

import shutil
from datetime import datetime, tzinfo
from pathlib import Path

import jwt
import pytest

from devstack.trust_domain import DevTrustDomain
from sidecar.identity.bundles import FileBundleSource
from sidecar.identity.jwt_svid import JwtSvidError, JwtSvidVerifier

READER = "spiffe://demo.local/agent/reader"


def make_verifier(bundle: Path, entries: int = 16) -> JwtSvidVerifier:
    return JwtSvidVerifier(
        FileBundleSource({"demo.local": bundle}),
        audiences=["authz-sidecar"],
        algorithms=["ES256"],
        trust_domains=["demo.local"],
        max_token_bytes=8192,
        cache_entries=entries,
    )


def test_a_verified_token_is_served_from_the_cache(trust_domain: DevTrustDomain) -> None:
    verifier = make_verifier(trust_domain.jwt_bundle)
    token = trust_domain.mint_jwt(READER)
    first = verifier.verify(token)
    assert verifier.verify(token) is first, "the second check must not verify again"


def test_entries_end_at_the_token_exp(trust_domain: DevTrustDomain, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the clock ends the entry: the verifier keeps its own bundle source, and that bundle is unchanged."""
    verifier = make_verifier(trust_domain.jwt_bundle)
    token = trust_domain.mint_jwt(READER, ttl=60)
    first = verifier.verify(token)
    exp = first.claims["exp"]
    entry = verifier._cache._entries[verifier._cache.key(token)]
    assert verifier._bundles.bundle_for(entry.source_key) is entry.verifier, "the bundle must not be what ends it"

    set_clock(monkeypatch, exp - 1)
    assert verifier.verify(token) is first, "still cached one second before exp"

    set_clock(monkeypatch, exp + 1)
    with pytest.raises(JwtSvidError, match="expired"):
        verifier.verify(token)
    assert verifier._bundles.bundle_for(entry.source_key) is entry.verifier
    assert not verifier._cache._entries, "the expired entry is dropped, and the failure is not cached"


def set_clock(monkeypatch: pytest.MonkeyPatch, now: float) -> None:
    """Move the clock for jwt_svid and its cache (time.time) and for PyJWT's exp check (datetime.now),
    which spiffe uses."""

    class Clock(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> Clock:
            return cls.fromtimestamp(now, tz)

    monkeypatch.setattr("sidecar.identity.jwt_svid.time.time", lambda: now)
    monkeypatch.setattr("sidecar.verified_cache.time.time", lambda: now)
    monkeypatch.setattr(jwt.api_jwt, "datetime", Clock)


def test_expired_token_is_rejected_even_after_a_success(trust_domain: DevTrustDomain) -> None:
    verifier = make_verifier(trust_domain.jwt_bundle)
    token = trust_domain.mint_jwt(READER, ttl=-1)
    for _ in range(2):
        with pytest.raises(JwtSvidError, match="expired"):
            verifier.verify(token)
    assert not verifier._cache._entries, "failures are never cached"


def test_bundle_rotation_invalidates_cached_tokens(trust_domain: DevTrustDomain, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.json"
    shutil.copy(trust_domain.jwt_bundle, bundle)
    verifier = make_verifier(bundle)
    token = trust_domain.mint_jwt(READER)
    verifier.verify(token)
    other = DevTrustDomain(tmp_path / "rotated").ensure()  # a new key replaces the old one
    bundle.write_text(other.jwt_bundle.read_text() + "\n")
    with pytest.raises(JwtSvidError):
        verifier.verify(token)
    assert verifier.verify(other.mint_jwt(READER)).spiffe_id


def test_missing_bundle_then_present_is_rechecked(trust_domain: DevTrustDomain, tmp_path: Path) -> None:
    bundle = tmp_path / "late.json"
    verifier = make_verifier(bundle)
    token = trust_domain.mint_jwt(READER)
    with pytest.raises(JwtSvidError, match="no JWT bundle"):
        verifier.verify(token)
    shutil.copy(trust_domain.jwt_bundle, bundle)
    assert str(verifier.verify(token).spiffe_id) == READER


def test_cache_is_bounded(trust_domain: DevTrustDomain) -> None:
    verifier = make_verifier(trust_domain.jwt_bundle, entries=2)
    tokens = [trust_domain.mint_jwt(READER, extra_claims={"n": n}) for n in range(3)]
    for token in tokens:
        verifier.verify(token)
    keys = list(verifier._cache._entries)
    assert keys == [verifier._cache.key(t) for t in tokens[1:]]


def test_disabled_cache_verifies_every_time(trust_domain: DevTrustDomain) -> None:
    verifier = make_verifier(trust_domain.jwt_bundle, entries=0)
    token = trust_domain.mint_jwt(READER)
    assert verifier.verify(token) is not verifier.verify(token)
