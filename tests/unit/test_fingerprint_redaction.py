import json

from sidecar.approvals import REDACTED, redact
from sidecar.body import parse_body
from sidecar.fingerprint import request_fingerprint


def mcp(args: dict[str, object], rpc_id: int = 1) -> object:
    body = {"jsonrpc": "2.0", "id": rpc_id, "method": "tools/call", "params": {"name": "send_email", "arguments": args}}
    return parse_body(json.dumps(body).encode(), {"content-type": "application/json"}, False).mcp


def test_fingerprint_binds_every_field() -> None:
    base = request_fingerprint("DELETE", "api.demo.local", "/api/records/42", None, b"")
    variants = [
        request_fingerprint("POST", "api.demo.local", "/api/records/42", None, b""),
        request_fingerprint("DELETE", "other.demo.local", "/api/records/42", None, b""),
        request_fingerprint("DELETE", "api.demo.local", "/api/records/43", None, b""),
        request_fingerprint("DELETE", "api.demo.local", "/api/records/42?force=1", None, b""),
        request_fingerprint("DELETE", "api.demo.local", "/api/records/42", None, b"x"),
    ]
    assert len({base, *variants}) == 6
    assert base == request_fingerprint("delete", "API.demo.local.:443", "/api/records/42", None, b"")


def test_mcp_fingerprint_ignores_the_rpc_id_and_key_order() -> None:
    a = request_fingerprint("POST", "h", "/mcp", mcp({"to": "x", "body": "y"}, 1), b"")  # type: ignore[arg-type]
    b = request_fingerprint("POST", "h", "/mcp", mcp({"body": "y", "to": "x"}, 2), b"")  # type: ignore[arg-type]
    c = request_fingerprint("POST", "h", "/mcp", mcp({"body": "z", "to": "x"}, 1), b"")  # type: ignore[arg-type]
    assert a == b != c


def test_redaction_by_name_and_pointer() -> None:
    summary = {"arguments": {"to": "x", "body": "secret"}, "body": {"card": {"number": "4111"}, "list": ["a", "b"]}}
    shown = redact(summary, ("body", "/card/number", "/list/1", "/missing/x"))
    assert shown["arguments"] == {"to": "x", "body": REDACTED}
    assert shown["body"] == {"card": {"number": REDACTED}, "list": ["a", REDACTED]}
    assert summary["arguments"]["body"] == "secret", "the original is untouched"
    assert len(redact({"arguments": {"t": "x" * 1000}}, ())["arguments"]["t"]) < 300
