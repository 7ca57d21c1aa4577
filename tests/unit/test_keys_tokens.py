import os
import time
from pathlib import Path
from typing import Any

import jwt
import pytest

from sidecar import tokens
from sidecar.keys import KeySet, SigningKey, generate_key, signing_key, write_key
from sidecar.tokens import CREDENTIAL_TYP, TASK_TYP, TokenError, VerifiedTokens, act_claim, sign, verify


def claims(**extra: object) -> dict[str, object]:
    now = int(time.time())
    return {
        "iss": "authz-sidecar",
        "aud": "authz-sidecar",
        "sub": "spiffe://d/a",
        "jti": "t1",
        "iat": now,
        "exp": now + 60,
        **extra,
    }


def test_generated_key_signs_and_publishes() -> None:
    keys = KeySet(None, "ES256", 10)
    token = sign(keys, claims(), TASK_TYP)
    assert verify(keys, token, typ=TASK_TYP, issuer="authz-sidecar", audience="authz-sidecar")["sub"] == "spiffe://d/a"
    [jwk] = keys.jwks()["keys"]
    assert jwk["kid"] == keys.active().kid and jwk["alg"] == "ES256" and "d" not in jwk


@pytest.mark.parametrize("algorithm", ["ES256", "ES384", "RS256"])
def test_algorithms(tmp_path: Path, algorithm: str) -> None:
    write_key(tmp_path / "k.pem", generate_key(algorithm))
    keys = KeySet(tmp_path, "ES256", 10)
    assert keys.active().algorithm == algorithm
    verify(
        keys, sign(keys, claims(), CREDENTIAL_TYP), typ=CREDENTIAL_TYP, issuer="authz-sidecar", audience="authz-sidecar"
    )


def test_rotation_with_overlap(tmp_path: Path) -> None:
    write_key(tmp_path / "old.pem", generate_key("ES256"))
    os.utime(tmp_path / "old.pem", (time.time() - 100, time.time() - 100))
    keys = KeySet(tmp_path, "ES256", reload_seconds=0.01)
    old_kid = keys.active().kid
    old_token = sign(keys, claims(), TASK_TYP)
    write_key(tmp_path / "new.pem", generate_key("ES256"))
    time.sleep(0.02)
    assert keys.active().kid != old_kid, "the newest key signs"
    assert {k["kid"] for k in keys.jwks()["keys"]} == {old_kid, keys.active().kid}
    verify(keys, old_token, typ=TASK_TYP, issuer="authz-sidecar", audience="authz-sidecar")  # overlap window
    (tmp_path / "old.pem").unlink()
    time.sleep(0.02)
    with pytest.raises(TokenError, match="not signed by a key of this sidecar"):
        verify(keys, old_token, typ=TASK_TYP, issuer="authz-sidecar", audience="authz-sidecar")


@pytest.mark.parametrize("listed_first", ["key-2026-06.pem", "key-2026-12.pem"])
def test_keys_with_the_same_mtime_sign_by_name(
    tmp_path: Path, listed_first: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Kubernetes Secret volume writes every file at once: the same mtime for the old key and the
    new. The last name signs, in whatever order the directory lists them, on every replica alike."""
    kids = {}
    stamp = time.time() - 10
    for name in ("key-2026-06.pem", "key-2026-12.pem"):
        key = generate_key("ES256")
        write_key(tmp_path / name, key)
        os.utime(tmp_path / name, (stamp, stamp))
        kids[name] = signing_key(key).kid
    listed = sorted(tmp_path.glob("*.pem"), key=lambda path: path.name != listed_first)
    monkeypatch.setattr(Path, "glob", lambda self, pattern: iter(listed))  # the directory's own order
    assert KeySet(tmp_path, "ES256", 10).active().kid == kids["key-2026-12.pem"]


def test_empty_key_dir_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "bad.pem").write_text("not a key")
    with pytest.raises(Exception, match="no usable signing key"):
        KeySet(tmp_path, "ES256", 10)


@pytest.fixture
def keys() -> KeySet:
    return KeySet(None, "ES256", 10)


def test_type_confusion_is_refused(keys: KeySet) -> None:
    credential = sign(keys, claims(), CREDENTIAL_TYP)
    with pytest.raises(TokenError, match="type"):
        verify(keys, credential, typ=TASK_TYP, issuer="authz-sidecar", audience="authz-sidecar")


@pytest.mark.parametrize(
    ("override", "message"),
    [({"exp": -5}, "expired"), ({"aud": "elsewhere"}, "invalid"), ({"iss": "someone"}, "invalid")],
)
def test_invalid_claims(keys: KeySet, override: dict[str, object], message: str) -> None:
    if "exp" in override:
        override = {"exp": int(time.time()) - 5}
    token = sign(keys, claims(**override), TASK_TYP)
    with pytest.raises(TokenError, match=message):
        verify(keys, token, typ=TASK_TYP, issuer="authz-sidecar", audience="authz-sidecar")


def test_missing_claims_tampering_and_foreign_keys(keys: KeySet) -> None:
    no_jti = {k: v for k, v in claims().items() if k != "jti"}
    with pytest.raises(TokenError):
        verify(keys, sign(keys, no_jti, TASK_TYP), typ=TASK_TYP, issuer="authz-sidecar", audience="authz-sidecar")
    header, _payload, signature = sign(keys, claims(), TASK_TYP).split(".")
    tampered = f"{header}.{sign(keys, claims(sub='spiffe://d/b'), TASK_TYP).split('.')[1]}.{signature}"
    with pytest.raises(TokenError, match="signature"):
        verify(keys, tampered, typ=TASK_TYP, issuer="authz-sidecar", audience="authz-sidecar")
    other = KeySet(None, "ES256", 10)
    with pytest.raises(TokenError, match="not signed by a key"):
        verify(keys, sign(other, claims(), TASK_TYP), typ=TASK_TYP, issuer="authz-sidecar", audience="authz-sidecar")
    forged = jwt.encode(claims(), "s" * 32, algorithm="HS256", headers={"kid": keys.active().kid, "typ": TASK_TYP})
    with pytest.raises(TokenError):
        verify(keys, forged, typ=TASK_TYP, issuer="authz-sidecar", audience="authz-sidecar")


def test_act_claim_nesting() -> None:
    assert act_claim([]) is None
    assert act_claim(["a", "b"]) == {"sub": "a", "act": {"sub": "b"}}


# -- VerifiedTokens: a task token verified once per key and lifetime -------------------------------
def remembered(keys: KeySet) -> VerifiedTokens:
    return VerifiedTokens(keys, typ=TASK_TYP, issuer="authz-sidecar", audience="authz-sidecar")


def test_a_verified_token_is_not_verified_again(keys: KeySet, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = tokens._verify

    def counted(*args: Any, **kwargs: Any) -> tuple[dict[str, Any], SigningKey]:
        calls.append("v")
        return real(*args, **kwargs)

    monkeypatch.setattr(tokens, "_verify", counted)
    cache, token = remembered(keys), sign(keys, claims(), TASK_TYP)
    first, second = cache.verify(token), cache.verify(token)
    assert first == second and first["jti"] == "t1" and calls == ["v"]
    second["sub"] = "changed by a caller"
    assert cache.verify(token)["sub"] == "spiffe://d/a", "callers get a copy"


def test_rejected_tokens_are_checked_every_time(keys: KeySet) -> None:
    cache = remembered(keys)
    for token in (sign(keys, claims(), CREDENTIAL_TYP), sign(keys, claims(aud="elsewhere"), TASK_TYP), "x.y.z"):
        for _ in range(2):
            with pytest.raises(TokenError):
                cache.verify(token)


def test_a_remembered_token_still_expires(keys: KeySet) -> None:
    expires = int(time.time()) + 1
    cache, token = remembered(keys), sign(keys, claims(exp=expires), TASK_TYP)
    cache.verify(token)
    time.sleep(max(0.0, expires - time.time()) + 1.05)  # JWT exp is whole seconds; PyJWT expires after it
    with pytest.raises(TokenError, match="expired"):
        cache.verify(token)


def test_a_remembered_token_of_a_removed_key_is_refused(tmp_path: Path) -> None:
    write_key(tmp_path / "old.pem", generate_key("ES256"))
    os.utime(tmp_path / "old.pem", (time.time() - 100, time.time() - 100))
    keys = KeySet(tmp_path, "ES256", reload_seconds=0.01)
    cache, token = remembered(keys), sign(keys, claims(), TASK_TYP)
    cache.verify(token)
    write_key(tmp_path / "new.pem", generate_key("ES256"))
    (tmp_path / "old.pem").unlink()
    time.sleep(0.02)
    with pytest.raises(TokenError, match="not signed by a key of this sidecar"):
        cache.verify(token)
