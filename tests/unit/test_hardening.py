"""Unit tests for the hardening found by the adversarial suite and the fuzzers."""

from __future__ import annotations

import io
import json
import logging
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.body import EMPTY, parse_body, reads_as_json
from sidecar.input import build_input, split_target
from sidecar.logs import _CREDENTIAL, REDACTED, RedactingJsonFormatter, _replacement, scrub_text
from sidecar.mcp import BodyError
from sidecar.request import CheckRequest

FORBIDDEN = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "delete_record"}})


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(FORBIDDEN.encode("utf-16"), id="utf-16-with-bom"),
        pytest.param(FORBIDDEN.encode("utf-16-be"), id="utf-16-be"),
        pytest.param(FORBIDDEN.encode("utf-32-le"), id="utf-32-le"),
        pytest.param(b"\xef\xbb\xbf" + FORBIDDEN.encode(), id="utf-8-bom"),
        pytest.param(b'{"jsonrpc":"2.0","id":1,"method":"a","method":"tools/call"}', id="duplicate-keys"),
        pytest.param(b'{"jsonrpc":"2.0","id":1,"method":"tools/call","x":NaN}', id="nan"),
        pytest.param(b"[" * 3000 + b"]" * 3000, id="deep"),
    ],
)
def test_json_a_lenient_reader_accepts_is_never_opaque(body: bytes) -> None:
    """What a permissive upstream would read as JSON-RPC, the sidecar refuses instead of judging as text."""
    assert reads_as_json(body)
    with pytest.raises(BodyError):
        parse_body(body, {"content-type": "text/plain"}, truncated=False)


@pytest.mark.parametrize("body", [b"[INFO] started", b"{not json at all", b"\x00\x01\x02binary", b"hello"])
def test_text_that_is_not_json_stays_opaque(body: bytes) -> None:
    assert not reads_as_json(body)
    assert parse_body(body, {"content-type": "text/plain"}, truncated=False) == EMPTY


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        ("//evil.example/api/docs", "//evil.example/api/docs", ""),
        ("/api/docs?x=1?y", "/api/docs", "x=1?y"),
        ("/a#frag?b", "/a#frag", "b"),
        ("/", "/", ""),
    ],
)
def test_split_target_is_what_envoy_routes(target: str, path: str, query: str) -> None:
    assert split_target(target) == (path, query)


def test_a_leading_double_slash_is_not_an_authority() -> None:
    """urlsplit would judge //api/tickets as the path /tickets on host 'api'."""
    request = CheckRequest("GET", "//api/tickets?a=1", {"host": "demo.local"}, b"")
    document = build_input(request, identity=None, body=EMPTY, intent=None)
    assert document["action"]["path"] == "/api/tickets" and document["action"]["host"] == "demo.local"
    assert document["parsed_query"] == {"a": ["1"]}


def _formatted(redact: list[str], message: str, **extra: object) -> dict[str, object]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(RedactingJsonFormatter("{levelname}{name}{message}", style="{", redact=redact))
    logger = logging.getLogger("test.redaction")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.warning(message, extra=extra)
    document: dict[str, object] = json.loads(stream.getvalue())
    return document


JWT = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJzcGlmZmU6Ly9kZW1vIn0.c2lnbmF0dXJlLXNpZ25hdHVyZS1zaWduYXR1cmU"


def test_log_redact_names_fields_at_any_depth() -> None:
    line = _formatted(["reason", "Arguments"], "approval decided", reason="ticket 7", detail={"arguments": {"a": 1}})
    assert line["reason"] == REDACTED
    assert line["detail"] == {"arguments": REDACTED}
    assert line["message"] == "approval decided"


def test_credentials_are_scrubbed_from_every_string() -> None:
    line = _formatted([], f"token {JWT} rejected", reasons=[f"Bearer {JWT}", "Bearer abc123def456ghi789jkl0"])
    assert JWT not in json.dumps(line)
    assert line["message"] == "token [redacted jwt] rejected"
    assert line["reasons"] == [f"Bearer {REDACTED}", f"Bearer {REDACTED}"]


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "BeArEr", "bEARER", "beaRer"])
def test_bearer_in_any_case_is_scrubbed(scheme: str) -> None:
    assert scrub_text(f"header {scheme} abc123def456ghi789jkl0 sent") == f"header {scheme} {REDACTED} sent"


_FRAGMENTS = st.sampled_from(["bearer", "eyJ", JWT, "abc123def456ghi789jkl0", " ", "\t", ".", "x", "é"])


@given(st.lists(st.one_of(_FRAGMENTS, st.text(max_size=4)), max_size=12), st.randoms())
def test_the_quick_guard_never_skips_what_the_pattern_would_replace(parts: list[str], rnd: random.Random) -> None:
    text = "".join(parts)
    mixed = "".join(c.upper() if rnd.random() < 0.5 else c for c in text)
    for candidate in (text, mixed):
        assert scrub_text(candidate) == _CREDENTIAL.sub(_replacement, candidate)


_VALUES = st.lists(
    st.one_of(
        _FRAGMENTS,
        st.sampled_from(["BeArEr abc123def456ghi789jkl0", "bearer\tabc123def456ghi789jkl0"]),
        st.text(max_size=4),
    ),
    max_size=8,
).map("".join)


@given(
    st.dictionaries(
        st.sampled_from(["reason", "path", "tool", "agent"]), st.one_of(_VALUES, st.lists(_VALUES)), max_size=4
    ),
    st.sampled_from([0, 1.5, None, True]),
)
def test_a_flat_line_is_scrubbed_as_if_every_string_were(extra: dict[str, str | list[str]], scalar: object) -> None:
    """Flat lines skip the walk over their values unless their text may hold a credential: the line
    must still read as if scrub_text had been applied to every string, and match the pattern nowhere."""
    line = _formatted([], "decision", scalar=scalar, **extra)
    for key, value in extra.items():
        assert line[key] == ([scrub_text(v) for v in value] if isinstance(value, list) else scrub_text(value))
    assert line["scalar"] == scalar
    assert _CREDENTIAL.search(json.dumps(line)) is None


def test_a_credential_in_a_key_or_an_object_is_scrubbed() -> None:
    """What no walk over the values sees: a key, and an object the encoder writes with str()."""

    class Opaque:
        def __str__(self) -> str:
            return f"opaque {JWT}"

    line = _formatted([], "odd line", detail={JWT: 1}, thing=Opaque())
    assert JWT not in json.dumps(line)
    assert line["detail"] == {"[redacted jwt]": 1} and line["thing"] == "opaque [redacted jwt]"


def test_deep_values_are_still_cut() -> None:
    deep: object = "leaf"
    for _ in range(12):
        deep = {"d": deep}
    assert REDACTED in json.dumps(_formatted([], "deep", detail=deep))


def test_exception_text_is_scrubbed_too() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(RedactingJsonFormatter("{message}", style="{"))
    logger = logging.getLogger("test.redaction.exc")
    logger.handlers[:] = [handler]
    logger.propagate = False
    try:
        raise ValueError(f"bad token {JWT}")
    except ValueError:
        logger.exception("check failed")
    assert JWT not in stream.getvalue() and "[redacted jwt]" in stream.getvalue()


@pytest.mark.parametrize(
    "text",
    ["not a bearer credential", "JWT-SVID rejected: token is not a well-formed JWT", "eyJ alone", "a bearer of news"],
)
def test_prose_survives_scrubbing(text: str) -> None:
    assert scrub_text(text) == text


def test_credentials_reach_the_policy_without_their_signature() -> None:
    """OPA logs its input unmasked when no policy with a mask is loaded: it never gets a usable credential."""
    headers = {
        "authorization": "Bearer eyJh.eyJz.c2lnbmF0dXJl",
        "x-agent-task-token": "eyJh.eyJ0.dGFzay1zaWc",
        "x-api-key": "k-123456",
        "content-type": "application/json",
    }
    request = CheckRequest("GET", "/api/docs", headers, b"")
    seen = build_input(request, identity=None, body=EMPTY, intent=None)["attributes"]["request"]["http"]["headers"]
    assert seen == {
        "authorization": "Bearer eyJh.eyJz.",
        "x-agent-task-token": "eyJh.eyJ0.",
        "x-api-key": "[withheld]",
        "content-type": "application/json",
    }
