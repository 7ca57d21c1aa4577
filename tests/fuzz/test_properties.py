"""Property tests (hypothesis) with a short budget: the fuzz targets of ``./taskw fuzz`` on random and
mutated inputs, the decision mapper on every document shape, the whole pipeline on whatever
OPA answers, and request fingerprints.

``HYPOTHESIS_PROFILE=fuzz`` runs them longer; CI runs the default (short) profile.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar import wire_http
from sidecar.config import IdentityConfig
from sidecar.fingerprint import request_fingerprint
from sidecar.identity import IdentityResolver
from sidecar.opa_fake import FakeOpa, always, unreachable
from sidecar.pipeline import Pipeline
from sidecar.request import CheckRequest
from tests.pipelines import make_pipeline
from tools.fuzz import targets

settings.register_profile("ci", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("fuzz", max_examples=20_000, deadline=None, suppress_health_check=list(HealthCheck))
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _mutated(seed: bytes) -> st.SearchStrategy[bytes]:
    return st.tuples(st.integers(0, len(seed)), st.integers(0, 8), st.binary(max_size=16)).map(
        lambda t: seed[: t[0]] + t[2] + seed[t[0] + t[1] :]
    )


@pytest.mark.parametrize("name", sorted(targets.TARGETS))
def test_fuzz_target_never_escapes_but_as_a_deny(name: str) -> None:
    """Random bytes and mutations of valid examples: only the deny error types, no invariant broken."""
    target = targets.TARGETS[name]
    corpus = targets.seeds(name)

    @given(st.one_of(st.binary(max_size=2048), st.sampled_from(corpus).flatmap(_mutated)))
    def run(data: bytes) -> None:
        target(data)

    run()


# -- decisions ---------------------------------------------------------------------------------

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-10, 1000),
    st.floats(allow_nan=False),
    st.text(max_size=12),
    st.sampled_from(["allow", "deny", "step_up", "approval", "acr", "true", "ALLOW", " allow", "x\r\ny"]),
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
KEYS = st.sampled_from(
    [
        "verdict",
        "allowed",
        "reasons",
        "headers",
        "status",
        "http_status",
        "body",
        "step_up",
        "credential",
        "remember",
        "write",
        "request_headers_to_remove",
        "response_headers_to_add",
        "result",
    ]
)
DECISION_LIKE = st.dictionaries(KEYS, JSON, max_size=6)


@given(st.one_of(JSON, DECISION_LIKE))
def test_no_document_maps_to_an_allow_unless_it_is_an_explicit_allow(document: Any) -> None:
    verdict = targets.check_decision(document)  # raises targets.Invariant on a wrong allow or unsafe header
    if verdict is not None and verdict.kind == "allow":
        assert targets.explicit_allow(document)


def _pipeline(result: Any) -> Pipeline:
    identity = IdentityConfig.model_validate({"sources": ["jwt_svid"], "required": False})
    return make_pipeline(
        IdentityResolver(identity, None, None), FakeOpa(always(result))
    )  # the document under test, or an OPA failure (raised)


@settings(max_examples=100)
@given(
    st.one_of(JSON, DECISION_LIKE, st.just(unreachable())),
    st.sampled_from(["GET /api/docs/x", "POST /mcp", "DELETE /api/records/1"]),
)
def test_the_pipeline_allows_only_on_an_explicit_allow(result: Any, request_line: str) -> None:
    """Whatever OPA answers (or fails with), the wire answer is 200 only for an explicit allow, and
    every other answer is a deny (4xx) or a 503: no exception escapes the pipeline."""
    method, path = request_line.split()
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}' if method == "POST" else b""
    request = CheckRequest(method, path, {"host": "demo.local", "content-type": "application/json"}, body)
    answer = asyncio.run(_pipeline(result).check(request))
    if answer.status == 200:
        assert targets.explicit_allow(result), result
    else:
        assert 400 <= answer.status < 500 or answer.status == 503, answer
    for name, value in wire_http.encode(answer).headers:
        assert not any(c in name + value for c in "\r\n\0")


# -- fingerprints ----------------------------------------------------------------------------------

FIELD = st.sampled_from(["method", "host", "path", "tool", "arguments", "mcp_method", "body"])


def _print(fields: dict[str, Any], rpc_id: Any = 1) -> str:
    body, jsonrpc = fields["body"], fields["tool"] is not None
    if jsonrpc:
        params = {"name": fields["tool"], "arguments": fields["arguments"]}
        body = json.dumps({"jsonrpc": "2.0", "id": rpc_id, "method": fields["mcp_method"], "params": params}).encode()
    headers = {"content-type": "application/json"}
    return request_fingerprint(fields["method"], fields["host"], fields["path"], headers, body, jsonrpc)


BASE = st.fixed_dictionaries(
    {
        "method": st.sampled_from(["GET", "POST", "DELETE", "PUT"]),
        "host": st.from_regex(r"[a-z]{1,8}(\.[a-z]{1,8}){0,2}", fullmatch=True),
        "path": st.from_regex(r"/[a-z0-9/?=&%]{0,20}", fullmatch=True),
        "tool": st.one_of(st.none(), st.sampled_from(["delete_record", "send_email", "search_docs"])),
        "arguments": st.dictionaries(st.text(max_size=5), JSON, max_size=3),
        "mcp_method": st.sampled_from(["tools/call", "prompts/get"]),
        "body": st.binary(max_size=64),
    }
)


@given(BASE, FIELD, st.data())
def test_fingerprints_differ_when_any_bound_field_differs(
    base: dict[str, Any], field: str, data: st.DataObject
) -> None:
    other = dict(base)
    if field == "method":
        other["method"] = data.draw(
            st.sampled_from(["GET", "POST", "DELETE", "PUT", "PATCH"]).filter(lambda m: m != base["method"])
        )
    elif field == "host":
        other["host"] = base["host"] + data.draw(st.sampled_from([".evil", "x", "-1"]))
    elif field == "path":
        other["path"] = base["path"] + data.draw(st.sampled_from(["/", "x", "?a=1", "%2F"]))
    elif field == "tool":
        other["tool"] = data.draw(
            st.sampled_from(["delete_record", "send_email", "get_record", None]).filter(lambda t: t != base["tool"])
        )
    elif field == "arguments":
        if base["tool"] is None:
            other["tool"] = "search_docs"
        other["arguments"] = {**base["arguments"], "__x": data.draw(JSON)}
    elif field == "mcp_method":
        if base["tool"] is None:
            other["tool"] = base["tool"] = "search_docs"
        other["mcp_method"] = "prompts/get" if base["mcp_method"] == "tools/call" else "tools/call"
    else:
        if base["tool"] is not None:
            other["tool"] = base["tool"] = None
        other["body"] = base["body"] + data.draw(st.binary(min_size=1, max_size=4))
    assert _print(base) != _print(other), f"{field} changed but the fingerprint did not"


@given(BASE)
def test_fingerprints_ignore_what_is_not_bound(base: dict[str, Any]) -> None:
    """Host case, argument order and the JSON-RPC id do not change the request."""
    same = {**base, "host": base["host"].upper()}
    same["arguments"] = dict(reversed(list(base["arguments"].items())))
    assert _print(base) == _print(same, rpc_id="retry-2")


_CONTENT_TYPES = st.sampled_from(
    ["application/json", "application/x-www-form-urlencoded", "multipart/form-data; boundary=b", "text/plain", ""]
)


@given(
    path=st.text(alphabet="/%;?&=+#abAB01éz\x00", max_size=24),
    content_type=_CONTENT_TYPES,
    body=st.one_of(
        st.binary(max_size=64), _mutated(b'--b\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\r\n--b--\r\n')
    ),
    length=st.one_of(st.none(), st.text(alphabet="0123456789-+x", max_size=4)),
)
def test_the_plugin_input_parses_or_refuses_cleanly(
    path: str, content_type: str, body: bytes, length: str | None
) -> None:
    """Any path, query and body: an input document (JSON-serialisable) or the plugin's 400, never a crash."""
    from sidecar.plugin_input import RequestParseError, plugin_input

    headers = {"content-type": content_type} if content_type else {}
    if length is not None:
        headers["content-length"] = length
    try:
        document = plugin_input(CheckRequest("POST", path, headers, body))
    except RequestParseError as exc:
        assert exc.body.startswith("request_parse_error: ")
        return
    json.dumps(document)
