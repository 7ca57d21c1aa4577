"""The opa-envoy-plugin profile's input and result rules (the compat run proves them against the plugin)."""

from __future__ import annotations

import pytest

from sidecar import plugin_result, wire_http
from sidecar.config import validate_config
from sidecar.decision import DecisionError
from sidecar.plugin_input import RequestParseError, parse_body, parse_query, plugin_input
from sidecar.request import CheckRequest


def test_query_and_path_follow_go() -> None:
    assert parse_query("a=1&a=2&b=&c&x=a+b%41") == {"a": ["1", "2"], "b": [""], "c": [""], "x": ["a bA"]}
    with pytest.raises(RequestParseError):
        parse_query("a=1;b=2")
    doc = plugin_input(CheckRequest("GET", "/a%2Fb/c+d?q=1", {"host": "h"}, b""))
    assert doc["parsed_path"] == ["a", "b", "c+d"]  # unescaped, then split: as the plugin does
    with pytest.raises(RequestParseError):
        plugin_input(CheckRequest("GET", "/a%zz", {}, b""))


def test_bodies_last_key_wins_and_truncation() -> None:
    headers = {"content-type": "application/json"}
    assert parse_body(headers, '{"a": 1, "a": 2}', b"") == ({"a": 2}, False)
    assert parse_body({**headers, "content-length": "99"}, "{}", b"") == (None, True)
    assert parse_body({"content-type": "application/x-www-form-urlencoded"}, "a=1&a=2", b"") == (
        {"a": ["1", "2"]},
        False,
    )


def test_size_is_a_number_in_http_mode() -> None:
    doc = plugin_input(CheckRequest("POST", "/", {"content-type": "text/plain"}, b"12345"))
    assert doc["attributes"]["request"]["http"]["size"] == 5


async def test_the_xfcc_secret_never_reaches_the_policy_in_http_mode() -> None:
    from sidecar.identity import IdentityResolver
    from sidecar.opa_fake import FakeOpa
    from tests.pipelines import make_pipeline

    opa = FakeOpa(lambda _input: True)
    resolver = IdentityResolver(validate_config({}).identity, None, None)
    pipeline = make_pipeline(resolver, opa, {"profile": "opa-envoy-plugin", "log": {"decisions": False}})
    headers = {"x-authz-xfcc-secret": "s3cret", "authorization": "Basic YTpi"}
    decision = await pipeline.check(CheckRequest("GET", "/", headers, b""))
    assert decision.allowed
    seen = opa.inputs[-1]["attributes"]["request"]["http"]["headers"]
    assert seen == {"authorization": "Basic YTpi"}, "credentials verbatim, the sidecar's own secret never"


def test_result_shapes() -> None:
    allow = plugin_result.answer(
        {"allowed": True, "headers": [{"x": "1"}, {"x": "2"}], "response_headers_to_add": {"c": "v"}},
        decision_id="d",
    )
    assert allow.upstream_headers == (("x", "1"), ("x", "2")) and allow.client_headers == (("c", "v"),)
    deny = plugin_result.answer({"allowed": False, "http_status": 200, "body": "no"}, decision_id="d")
    assert deny.status == 200 and not deny.allowed
    assert wire_http.encode(deny).status == 503  # HTTP mode cannot send a 200 deny: fail closed
    bare = plugin_result.answer(False, decision_id="d")
    assert bare.plugin is not None and bare.plugin.bare and bare.body == b""
    dry = plugin_result.answer(False, decision_id="d", dry_run=True)
    assert dry.allowed
    with pytest.raises(DecisionError):
        plugin_result.answer({"allowed": True, "headers": {"x": 7}}, decision_id="d")
    with pytest.raises(DecisionError):
        plugin_result.answer({"allowed": False, "http_status": 999}, decision_id="d")


def test_every_profile_routes_policy_headers_like_the_plugin() -> None:
    from sidecar import outcome, wire_grpc
    from sidecar.decision import to_verdict

    verdict = to_verdict({"allowed": True, "headers": {"x-up": "1"}, "response_headers_to_add": {"x-client": "2"}})
    allow = outcome.allow(verdict, decision_id="d", request_headers={}, identity=None)
    ok = wire_grpc.to_check_response(allow).ok_response
    assert [h.header.key for h in ok.headers] == ["x-up", "x-authz-decision-id"]
    assert [h.header.key for h in ok.response_headers_to_add] == ["x-client", "x-authz-decision-id"]
    denied = to_verdict({"allowed": False, "headers": {"x-why": "a"}, "response_headers_to_add": {"x-no": "b"}})
    assert denied.response_headers == {"x-why": "a"}, "on a deny the plugin sends only `headers`, to the client"


def test_plugin_grpc_answers_are_the_plugins() -> None:
    from google.rpc import code_pb2

    from sidecar import wire_grpc

    bare = wire_grpc.to_check_response(plugin_result.answer(False, decision_id="d"))
    assert bare.status.code == code_pb2.PERMISSION_DENIED and bare.WhichOneof("http_response") is None
    assert dict(bare.dynamic_metadata) == {"decision_id": "d"}
    doc = {"allowed": True, "query_parameters_to_set": {"a": ["1", "2"]}, "dynamic_metadata": {"decision_id": "x"}}
    ok = wire_grpc.to_check_response(plugin_result.answer(doc, decision_id="d"))
    assert [(p.key, p.value) for p in ok.ok_response.query_parameters_to_set] == [("a", "1"), ("a", "2")]
    assert ok.dynamic_metadata["decision_id"] == "d", "the plugin's decision id wins over the policy's"
    assert wire_http.encode(plugin_result.answer(doc, decision_id="d")).status == 503, (
        "HTTP mode cannot rewrite queries"
    )


async def test_a_body_that_filled_envoys_buffer_is_truncated_in_http_mode() -> None:
    from sidecar.identity import IdentityResolver
    from sidecar.opa_fake import FakeOpa
    from tests.pipelines import make_pipeline

    opa = FakeOpa(lambda _input: True)
    resolver = IdentityResolver(validate_config({}).identity, None, None)
    settings = {
        "profile": "opa-envoy-plugin",
        "log": {"decisions": False},
        "request_body": {"envoy_max_request_bytes": 16},
    }
    pipeline = make_pipeline(resolver, opa, settings)
    headers = {"content-type": "application/json"}
    await pipeline.check(CheckRequest("POST", "/", headers, b'{"a": "0123456789"}'))  # 19 bytes: cut here
    await pipeline.check(CheckRequest("POST", "/", headers, b'{"a": 1}'))
    cut, whole = opa.inputs
    assert (cut["parsed_body"], cut["truncated_body"]) == (None, True)
    assert (whole["parsed_body"], whole["truncated_body"]) == ({"a": 1}, False)
