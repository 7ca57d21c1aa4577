"""The opa-envoy-plugin profile's input and result rules (the compat run proves them against the plugin)."""

from __future__ import annotations

import pytest

from sidecar import plugin_result, wire_http
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
