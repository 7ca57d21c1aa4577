import json
from typing import Any

from sidecar.approvals import REDACTED, approval_view, redact, request_summary, trim
from sidecar.body import parse_body
from sidecar.fingerprint import request_fingerprint
from sidecar.request import CheckRequest

JSON = {"content-type": "application/json"}


def rest(
    body: bytes = b"",
    /,
    method: str = "DELETE",
    host: str = "api.demo.local",
    target: str = "/api/records/42",
    **headers: str,
) -> str:
    return request_fingerprint(method, host, target, {**JSON, **headers}, body, False)


def rpc(document: dict[str, Any], **headers: str) -> str:
    body = json.dumps(document).encode()
    assert parse_body(body, JSON, False).mcp is not None, "the pipeline reads it as JSON-RPC"
    return request_fingerprint("POST", "tools.demo.local", "/mcp", {**JSON, **headers}, body, True)


def call(params: dict[str, Any], method: str = "tools/call", rpc_id: Any = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rpc_id, "method": method, "params": params}


def test_fingerprint_binds_every_part_of_the_request() -> None:
    base = rest()
    variants = {
        "method": rest(method="POST"),
        "method case": rest(method="delete"),
        "host": rest(host="other.demo.local"),
        "host port": rest(host="api.demo.local:8443"),
        "host trailing dot": rest(host="api.demo.local."),
        "path": rest(target="/api/records/43"),
        "query": rest(target="/api/records/42?force=1"),
        "body": rest(b"x"),
        "content type": rest(**{"content-type": "text/plain"}),
        "content encoding": rest(**{"content-encoding": "gzip"}),
        "method override": rest(**{"x-http-method-override": "PURGE"}),
        "mcp session": rest(**{"mcp-session-id": "s-2"}),
    }
    assert len({base, *variants.values()}) == len(variants) + 1, [k for k, v in variants.items() if v == base]
    assert base == rest(host="API.Demo.Local"), "host names are case-insensitive"
    assert base == rest(authorization="Bearer another-svid", **{"x-agent-approval-id": "a-1", "x-request-id": "r-9"})


def test_jsonrpc_fingerprint_binds_every_param_but_the_id() -> None:
    base = rpc(call({"name": "delete_record", "arguments": {"id": "7"}}))
    variants = {
        "arguments": rpc(call({"name": "delete_record", "arguments": {"id": "8"}})),
        "_meta": rpc(call({"name": "delete_record", "arguments": {"id": "7"}, "_meta": {"progressToken": 1}})),
        "other param": rpc(call({"name": "delete_record", "arguments": {"id": "7"}, "cascade": True})),
        "number as written": rpc(call({"name": "delete_record", "arguments": {"id": 7.0}})),
        "top-level member": rpc({**call({"name": "delete_record", "arguments": {"id": "7"}}), "extra": 1}),
        "notification": rpc(
            {k: v for k, v in call({"name": "delete_record", "arguments": {"id": "7"}}).items() if k != "id"}
        ),
        "header": rpc(call({"name": "delete_record", "arguments": {"id": "7"}}), **{"mcp-session-id": "s-2"}),
    }
    assert len({base, *variants.values()}) == len(variants) + 1, [k for k, v in variants.items() if v == base]
    # A retry with a new id, other key order or whitespace is the same request.
    reordered = {"params": {"arguments": {"id": "7"}, "name": "delete_record"}, "method": "tools/call", "id": "x"}
    assert base == rpc({"jsonrpc": "2.0", **reordered})
    body = b'{ "jsonrpc" : "2.0", "method":"tools/call","id":99,\n "params":{"name":"delete_record",'
    body += b'"arguments":{"id":"7"}}}'
    assert base == request_fingerprint("POST", "tools.demo.local", "/mcp", JSON, body, True)


def test_methods_without_a_name_are_bound_by_their_params() -> None:
    """Cursors, resource URIs and any other param: before, only the method and a name were bound."""
    assert rpc(call({"cursor": "page-2"}, "tools/list")) != rpc(call({"cursor": "page-3"}, "tools/list"))
    assert rpc(call({}, "tools/list")) != rpc(call({"cursor": "page-2"}, "tools/list"))
    read = "resources/read"
    assert rpc(call({"uri": "file:///a"}, read)) != rpc(call({"uri": "file:///b"}, read))
    assert rpc(call({"uri": "file:///a"}, read)) != rpc(call({"uri": "file:///a", "range": [0, 10]}, read))


def test_redaction_by_name_and_pointer() -> None:
    summary: dict[str, Any] = {
        "arguments": {"to": "x", "body": "secret"},
        "body": {"card": {"number": "4111"}, "list": ["a", "b"]},
    }
    shown = redact(summary, ("body", "/card/number", "/list/1", "/missing/x"))
    assert shown["arguments"] == {"to": "x", "body": REDACTED}
    assert shown["body"] == {"card": {"number": REDACTED}, "list": ["a", REDACTED]}
    assert summary["arguments"]["body"] == "secret", "the original is untouched"


def test_the_view_says_what_it_cut() -> None:
    """Fifty harmless ids and the dangerous one behind them: the view says 37 more are not shown."""
    ids = [f"harmless-{i}" for i in range(86)] + ["the-dangerous-one"]
    summary: dict[str, Any] = {"arguments": {"ids": ids, "note": "n" * 1403, "short": "ok"}, "path": "/mcp"}
    shown, cuts = trim(summary)
    assert shown["arguments"]["ids"][:50] == ids[:50]
    assert shown["arguments"]["ids"][50:] == ["… 37 more items not shown"]
    assert shown["arguments"]["note"] == "n" * 200 + "… [string truncated, 1,203 more characters]"
    assert shown["arguments"]["short"] == "ok" and shown["path"] == "/mcp"
    assert [c.as_json() for c in cuts] == [
        {"pointer": "/arguments/ids", "unit": "items", "hidden": 37},
        {"pointer": "/arguments/note", "unit": "characters", "hidden": 1203},
    ]
    assert summary["arguments"]["ids"] == ids, "the original is untouched"


def test_the_policy_is_told_what_the_view_would_cut() -> None:
    assert approval_view({"arguments": {"ids": list(range(50)), "s": "x" * 200}}) is None
    view = approval_view({"arguments": {"ids": list(range(51)), "a/b~c": "x" * 201}, "host": "h" * 300})
    assert view == {
        "cut": ["/arguments/ids", "/arguments/a~1b~0c", "/host"],
        "cut_count": 3,
        "max_items": 50,
        "max_string": 200,
    }
    # Long strings inside shown items count; items beyond the cut are not shown, so only the list is.
    nested = approval_view({"body": [["y" * 201] for _ in range(60)]})
    assert nested is not None and nested["cut_count"] == 51
    assert nested["cut"] == [f"/body/{i}/0" for i in range(20)], "at most 20 listed, all counted"


def test_the_summary_shows_what_the_fingerprint_binds() -> None:
    document = call({"uri": "file:///etc/passwd", "_meta": {"progressToken": 3}}, "resources/read")
    body = json.dumps(document).encode()
    headers = {**JSON, "host": "tools.demo.local", "mcp-session-id": "secret-session", "content-encoding": "identity"}
    request = CheckRequest("POST", "/mcp?tenant=b", headers, body)
    summary = request_summary(request, parse_body(body, headers, False), None, ())
    assert summary["mcp_method"] == "resources/read" and summary["tool"] == "file:///etc/passwd"
    assert summary["params"] == {"_meta": {"progressToken": 3}}
    assert (summary["path"], summary["query"]) == ("/mcp", "tenant=b")
    assert summary["headers"] == {"content-type": "application/json", "content-encoding": "identity"}
    assert "secret-session" not in json.dumps(summary), "the MCP session id is bound, never shown"

    text = CheckRequest("POST", "/api/notes", {"content-type": "text/plain", "host": "h"}, b"drop table")
    assert request_summary(text, parse_body(text.body, text.headers, False), None, ())["body"] == "drop table"
    binary = CheckRequest("PUT", "/api/blob", {"content-type": "application/octet-stream", "host": "h"}, b"\xff\x00")
    assert request_summary(binary, parse_body(binary.body, binary.headers, False), None, ())["body"] == {
        "base64": "/wA="
    }
