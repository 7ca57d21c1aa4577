import json

from sidecar import wire
from sidecar.decision import to_verdict


def header(response: wire.WireResponse, name: str) -> str | None:
    return dict(response.headers).get(name)


def test_allow_sets_identity_and_removes_spoofed_and_stripped_headers() -> None:
    verdict = to_verdict(
        {
            "verdict": "allow",
            "headers": {"x-authz-rule": "r"},
            "request_headers_to_remove": ["cookie"],
        }
    )
    response = wire.allow(
        verdict,
        decision_id="d1",
        spiffe_id="spiffe://demo.local/a",
        client_headers={"x-authz-spiffe-id": "spoof", "x-authz-admin": "1", "accept": "*/*"},
        strip=("authorization",),
    )
    assert response.status == 200
    assert header(response, "x-authz-decision-id") == "d1"
    assert header(response, "x-authz-spiffe-id") == "spiffe://demo.local/a"
    assert header(response, "x-envoy-auth-headers-to-remove") == "cookie,authorization,x-authz-admin"


def test_anonymous_allow_removes_client_spiffe_header() -> None:
    response = wire.allow(to_verdict(True), decision_id="d", spiffe_id=None, client_headers={"x-authz-spiffe-id": "x"})
    assert header(response, "x-authz-spiffe-id") is None
    assert header(response, "x-envoy-auth-headers-to-remove") == "x-authz-spiffe-id"


def test_deny_json_and_json_rpc() -> None:
    verdict = to_verdict({"verdict": "deny", "reasons": ["no"]})
    plain = wire.deny(verdict, decision_id="d", rpc=None)
    assert plain.status == 403
    assert json.loads(plain.body) == {"verdict": "deny", "reasons": ["no"], "decision_id": "d"}
    rpc = wire.deny(verdict, decision_id="d", rpc=wire.RpcContext(7))
    document = json.loads(rpc.body)
    assert document["id"] == 7 and document["error"]["code"] == wire.RPC_DENIED
    assert document["error"]["data"]["reasons"] == ["no"]


def test_acr_step_up_is_an_rfc9470_challenge() -> None:
    verdict = to_verdict(
        {
            "verdict": "step_up",
            "reasons": ["mfa"],
            "step_up": {
                "kind": "acr",
                "acr_values": ["a", "b"],
                "max_age": 60,
                "reason": 'say "hi"',
            },
        }
    )
    response = wire.step_up(verdict, decision_id="d", rpc=None)
    assert response.status == 401
    assert header(response, "www-authenticate") == (
        'Bearer error="insufficient_user_authentication", error_description="say  hi ", acr_values="a b", max_age=60'
    )


def test_approval_step_up_describes_what_is_needed() -> None:
    verdict = to_verdict({"verdict": "step_up", "step_up": {"kind": "approval", "ttl_seconds": 900}})
    body = json.loads(wire.step_up(verdict, decision_id="d", rpc=None).body)
    assert body["step_up"]["status"] == "approval_required" and body["step_up"]["ttl_seconds"] == 900


def test_errors_and_rejections() -> None:
    assert wire.unavailable("opa down", decision_id="d", rpc=None).status == 503
    assert wire.rejected(413, "too big", decision_id="d", rpc=None).status == 413
    unauth = wire.unauthenticated("bad\ntoken", decision_id="d", invalid_token=True, rpc=None)
    assert (
        header(unauth, "www-authenticate")
        == 'Bearer realm="authz-sidecar", error="invalid_token", error_description="bad token"'
    )
