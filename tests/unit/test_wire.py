import json

from spiffe import SpiffeId

from sidecar import outcome, wire_http
from sidecar.decision import to_verdict
from sidecar.errors import Kind, SidecarError
from sidecar.identity import Identity
from sidecar.wire_status import JSONRPC_CODE


def header(response: wire_http.HttpAnswer, name: str) -> str | None:
    return dict(response.headers).get(name)


def test_allow_sets_identity_and_removes_spoofed_and_stripped_headers() -> None:
    verdict = to_verdict(
        {
            "verdict": "allow",
            "headers": {"x-authz-rule": "r"},
            "request_headers_to_remove": ["cookie"],
        }
    )
    decision = outcome.allow(
        verdict,
        decision_id="d1",
        identity=Identity(SpiffeId("spiffe://demo.local/a"), "xfcc"),
        request_headers={
            "x-authz-spiffe-id": "spoof",
            "x-authz-admin": "1",
            "accept": "*/*",
            "authorization": "Basic x",
        },
    )
    response = wire_http.encode(decision)
    assert response.status == 200
    assert header(response, "x-authz-decision-id") == "d1"
    assert header(response, "x-authz-spiffe-id") == "spiffe://demo.local/a"
    assert header(response, "x-envoy-auth-headers-to-remove") == "cookie,authorization,x-authz-admin"


def test_allow_decides_the_callers_authorization_in_one_place() -> None:
    svid = Identity(SpiffeId("spiffe://demo.local/a"), "jwt_svid")
    sent = {"authorization": "Bearer svid", "x-agent-task-token": "t"}
    stripped = outcome.allow(to_verdict(True), decision_id="d", request_headers=sent, identity=svid)
    assert stripped.remove_headers == ("authorization",)
    forwarded = outcome.allow(
        to_verdict(True),
        decision_id="d",
        request_headers=sent,
        identity=svid,
        sidecar_headers=("x-agent-task-token",),
        forward_jwt_svid=True,
    )
    assert forwarded.remove_headers == ("x-agent-task-token",)
    minted = outcome.allow(to_verdict(True), decision_id="d", request_headers=sent, identity=svid, credential="c")
    assert minted.remove_headers == () and dict(minted.upstream_headers)["authorization"] == "Bearer c"


def test_anonymous_allow_removes_client_spiffe_header() -> None:
    decision = outcome.allow(
        to_verdict(True), decision_id="d", identity=None, request_headers={"x-authz-spiffe-id": "x"}
    )
    response = wire_http.encode(decision)
    assert header(response, "x-authz-spiffe-id") is None
    assert header(response, "x-envoy-auth-headers-to-remove") == "x-authz-spiffe-id"


def test_deny_json_and_json_rpc() -> None:
    verdict = to_verdict({"verdict": "deny", "reasons": ["no"]})
    plain = wire_http.encode(outcome.deny(verdict, decision_id="d", rpc=None))
    assert plain.status == 403
    assert json.loads(plain.body) == {"verdict": "deny", "reasons": ["no"], "decision_id": "d"}
    rpc = wire_http.encode(outcome.deny(verdict, decision_id="d", rpc=outcome.RpcContext(7)))
    document = json.loads(rpc.body)
    assert document["id"] == 7 and document["error"]["code"] == JSONRPC_CODE["deny"] == -32003
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
    response = wire_http.encode(outcome.step_up(verdict, decision_id="d", rpc=None))
    assert response.status == 401
    assert header(response, "www-authenticate") == (
        'Bearer error="insufficient_user_authentication", error_description="say  hi ", acr_values="a b", max_age=60'
    )


def test_approval_step_up_describes_what_is_needed() -> None:
    verdict = to_verdict({"verdict": "step_up", "step_up": {"kind": "approval", "ttl_seconds": 900}})
    body = json.loads(wire_http.encode(outcome.step_up(verdict, decision_id="d", rpc=None)).body)
    assert body["step_up"]["status"] == "approval_required" and body["step_up"]["ttl_seconds"] == 900


def test_errors_and_rejections() -> None:
    assert wire_http.encode(outcome.unavailable("opa down", decision_id="d", rpc=None)).status == 503
    too_big = SidecarError("too big", kind=Kind.TOO_LARGE)
    assert wire_http.encode(outcome.refused(too_big, decision_id="d", rpc=None)).status == 413
    down = SidecarError("store down", kind=Kind.UNAVAILABLE)
    assert outcome.refused(down, decision_id="d", rpc=None).verdict == "error", "a failure is never a deny"
    unauth = wire_http.encode(
        outcome.unauthenticated("bad\ntoken", decision_id="d", invalid_token=True, rpc=outcome.RpcContext(1))
    )
    assert (
        header(unauth, "www-authenticate")
        == 'Bearer realm="authz-sidecar", error="invalid_token", error_description="bad token"'
    )
    assert json.loads(unauth.body)["error"]["code"] == -32001
