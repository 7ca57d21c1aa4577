import pytest

from sidecar.decision import DecisionError, to_verdict


def test_boolean() -> None:
    assert to_verdict(True).kind == "allow"
    assert to_verdict(False).kind == "deny"


def test_plugin_object() -> None:
    allow = to_verdict({"allowed": True, "headers": {"X-A": "1"}, "request_headers_to_remove": ["cookie"]})
    assert allow.kind == "allow" and allow.upstream_headers == {"x-a": "1"} and allow.remove_headers == ("cookie",)
    deny = to_verdict({"allowed": False, "http_status": 302, "headers": {"location": "/login"}, "body": "go"})
    assert deny.kind == "deny" and deny.status == 302 and deny.response_headers == {"location": "/login"}
    assert deny.body == "go"


def test_credential_request() -> None:
    verdict = to_verdict({"verdict": "allow", "credential": {"audience": "api", "scopes": ["t:w"], "ttl_seconds": 60}})
    assert verdict.credential is not None and verdict.credential.scopes == ("t:w",)
    # a credential on a deny is never minted
    assert to_verdict({"verdict": "deny", "credential": {"audience": "api"}}).credential is None


def test_agent_object() -> None:
    verdict = to_verdict(
        {
            "verdict": "step_up",
            "reasons": ["needs a human"],
            "step_up": {
                "kind": "approval",
                "ttl_seconds": 900,
                "approvers": {"data_class": "restricted"},
            },
            "remember": ["pii_read"],
        }
    )
    assert verdict.kind == "step_up" and verdict.step_up is not None
    assert verdict.step_up.ttl_seconds == 900 and verdict.remember == ("pii_read",)
    acr = to_verdict({"verdict": "step_up", "step_up": {"kind": "acr", "acr_values": ["mfa"], "max_age": 60}})
    assert acr.step_up is not None and acr.step_up.acr_values == ("mfa",) and acr.reasons == ("step_up by policy",)


@pytest.mark.parametrize(
    "result",
    [
        None,
        "allow",
        1,
        [],
        {},
        {"allowed": "true"},
        {"allowed": 1},
        {"verdict": "ALLOW"},
        {"verdict": "allow", "allowed": True},
        {"verdict": "allow", "reasons": "ok"},
        {"verdict": "allow", "headers": {"x-a": 1}},
        {"verdict": "allow", "headers": {"x-a": "v\r\nx-injected: 1"}},
        {"verdict": "allow", "headers": {"bad header": "v"}},
        {"verdict": "allow", "headers": []},
        {"verdict": "allow", "request_headers_to_remove": "cookie"},
        {"verdict": "allow", "credential": {"audience": "x"}},
        {"verdict": "allow", "credential": "x"},
        {"verdict": "allow", "credential": {"audience": "", "scopes": ["a"], "ttl_seconds": 5}},
        {"verdict": "allow", "credential": {"audience": "a", "scopes": ["a b"], "ttl_seconds": 5}},
        {"verdict": "allow", "credential": {"audience": "a", "scopes": ["a"], "ttl_seconds": 0}},
        {"verdict": "allow", "credential": {"audience": "a\r\nx: y", "scopes": ["a"], "ttl_seconds": 5}},
        {"verdict": "deny", "status": 200},
        {"verdict": "deny", "status": 503},
        {"verdict": "deny", "status": "403"},
        {"allowed": False, "http_status": 200},
        {"allowed": False, "body": {"a": 1}},
        {"verdict": "step_up"},
        {"verdict": "step_up", "step_up": {"kind": "sms"}},
        {"verdict": "step_up", "step_up": {"kind": "acr"}},
        {"verdict": "step_up", "step_up": {"kind": "acr", "acr_values": ["x"], "max_age": -1}},
        {"verdict": "step_up", "step_up": {"kind": "approval", "approvers": []}},
        {"verdict": "step_up", "step_up": {"kind": "approval", "reason": 5}},
    ],
)
def test_unexpected_shapes_are_errors_never_allows(result: object) -> None:
    with pytest.raises(DecisionError):
        to_verdict(result)
