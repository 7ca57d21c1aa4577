"""gRPC mode: Envoy CheckRequest → CheckRequest, Decision → CheckResponse, peer principal trust."""

from __future__ import annotations

import json

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2
from google.rpc import code_pb2, status_pb2
from spiffe import SpiffeId

from sidecar.config import IdentityConfig
from sidecar.decision import StepUp, Verdict
from sidecar.grpc_server import to_check_request
from sidecar.identity import Identity, IdentityError, IdentityResolver
from sidecar.outcome import Decision, RpcContext, allow, deny, step_up, unavailable
from sidecar.wire_grpc import Unavailable, to_check_response
from sidecar.wire_http import HEADERS_TO_REMOVE
from sidecar.wire_status import grpc_deny_code

SECRET = "s" * 32
SECRET_HEADER = "x-authz-xfcc-secret"
WRITER = "spiffe://demo.local/agent/writer"
READER = "spiffe://demo.local/agent/reader"


def envoy_request(
    *, headers: dict[str, str] | None = None, body: str = "", raw_body: bytes = b"", principal: str = ""
) -> external_auth_pb2.CheckRequest:
    http = attribute_context_pb2.AttributeContext.HttpRequest(
        method="POST",
        path="/mcp?x=1",
        host="tools.example:8080",
        headers=headers or {},
        body=body,
        raw_body=raw_body,
    )
    attributes = attribute_context_pb2.AttributeContext(
        source=attribute_context_pb2.AttributeContext.Peer(principal=principal),
        request=attribute_context_pb2.AttributeContext.Request(http=http),
    )
    return external_auth_pb2.CheckRequest(attributes=attributes)


# -- Envoy CheckRequest → CheckRequest -------------------------------------------------------


def test_request_fields_map_to_the_pipeline_request() -> None:
    message = envoy_request(headers={"Content-Type": "application/json", "x-request-id": "r1"}, body='{"a":1}')
    check = to_check_request(message, (), SECRET_HEADER)
    assert (check.method, check.path, check.body) == ("POST", "/mcp?x=1", b'{"a":1}')
    assert check.headers == {"content-type": "application/json", "x-request-id": "r1", "host": "tools.example:8080"}
    assert check.peer_principal is None


def test_raw_body_wins_and_keeps_bytes() -> None:
    check = to_check_request(envoy_request(raw_body=b'{"a":"\xff"}', body="ignored"), (), SECRET_HEADER)
    assert check.body == b'{"a":"\xff"}'


def test_header_map_with_repeated_values_is_joined() -> None:
    message = envoy_request()
    for key, value in [("X-Agent-Purpose", "a"), ("x-agent-purpose", "b")]:
        message.attributes.request.http.header_map.headers.append(
            base_pb2.HeaderValue(key=key, raw_value=value.encode())
        )
    assert to_check_request(message, (), SECRET_HEADER).headers["x-agent-purpose"] == "a,b"


def test_secret_only_from_envoy_metadata_never_from_client_headers() -> None:
    message = envoy_request(headers={SECRET_HEADER: SECRET}, principal=WRITER)
    check = to_check_request(message, (), SECRET_HEADER)
    assert SECRET_HEADER not in check.headers, "a client-sent secret header must be dropped"
    assert check.peer_principal == WRITER
    check = to_check_request(message, ((SECRET_HEADER, "from-envoy"), ("other", "x")), SECRET_HEADER)
    assert check.headers[SECRET_HEADER] == "from-envoy"


# -- peer principal trust in the resolver ----------------------------------------------------


def resolver(secret: str | None = SECRET) -> IdentityResolver:
    return IdentityResolver(IdentityConfig.model_validate({"trust_domains": ["demo.local"]}), None, secret)


def test_principal_needs_the_secret() -> None:
    with pytest.raises(IdentityError, match=r"source\.principal is not trusted"):
        resolver().resolve({}, WRITER)
    with pytest.raises(IdentityError, match=r"source\.principal is not trusted"):
        resolver().resolve({SECRET_HEADER: "wrong"}, WRITER)
    with pytest.raises(IdentityError, match="not trusted"):
        resolver(None).resolve({SECRET_HEADER: SECRET}, WRITER)
    identity = resolver().resolve({SECRET_HEADER: SECRET}, WRITER)
    assert identity is not None and str(identity.spiffe_id) == WRITER and identity.source == "xfcc"


def test_principal_must_be_a_trusted_spiffe_id() -> None:
    with pytest.raises(IdentityError, match="not a SPIFFE ID"):
        resolver().resolve({SECRET_HEADER: SECRET}, "CN=writer,O=demo")
    with pytest.raises(IdentityError, match=r"trust domain demo\.local\.evil is not trusted"):
        resolver().resolve({SECRET_HEADER: SECRET}, "spiffe://demo.local.evil/agent/writer")


def test_principal_and_xfcc_must_agree() -> None:
    headers = {SECRET_HEADER: SECRET, "x-forwarded-client-cert": f"URI={READER}"}
    with pytest.raises(IdentityError, match="different SPIFFE IDs"):
        resolver().resolve(headers, WRITER)
    identity = resolver().resolve(headers, READER)
    assert identity is not None and str(identity.spiffe_id) == READER


def test_no_principal_means_no_peer_identity() -> None:
    with pytest.raises(IdentityError, match="no agent identity"):
        resolver().resolve({SECRET_HEADER: SECRET}, None)


# -- Decision → CheckResponse ------------------------------------------------------------


def test_allow_sets_upstream_headers_removes_and_metadata() -> None:
    verdict = Verdict("allow", ("ok",), upstream_headers={"x-authz-rule": "read docs"}, remove_headers=("cookie",))
    answer = allow(
        verdict,
        decision_id="d-1",
        identity=Identity(SpiffeId(READER), "xfcc"),
        request_headers={"x-authz-spoof": "1", "authorization": "Basic x"},
    )
    response = to_check_response(answer)
    assert response.status.code == code_pb2.OK
    ok = response.ok_response
    upstream = {h.header.key: h.header.value for h in ok.headers}
    assert upstream == {"x-authz-rule": "read docs", "x-authz-decision-id": "d-1", "x-authz-spiffe-id": READER}
    assert all(h.append_action == base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD for h in ok.headers)
    assert HEADERS_TO_REMOVE not in upstream
    assert list(ok.headers_to_remove) == ["cookie", "authorization", "x-authz-spoof"]
    assert [(h.header.key, h.header.value) for h in ok.response_headers_to_add] == [("x-authz-decision-id", "d-1")]
    assert response.dynamic_metadata["decision_id"] == "d-1"


def test_deny_keeps_status_headers_and_body() -> None:
    answer = deny(Verdict("deny", ("no",)), decision_id="d-2", rpc=RpcContext(7))
    response = to_check_response(answer)
    assert response.status.code == code_pb2.PERMISSION_DENIED
    denied = response.denied_response
    assert denied.status.code == 403
    assert {h.header.key: h.header.value for h in denied.headers}["content-type"] == "application/json"
    document = json.loads(denied.body)
    assert document["id"] == 7 and document["error"]["data"]["decision_id"] == "d-2"
    assert response.dynamic_metadata["decision_id"] == "d-2"


def test_step_up_is_401_with_the_challenge() -> None:
    verdict = Verdict("step_up", ("mfa",), step_up=StepUp("acr", acr_values=("urn:demo:acr:mfa",)))
    response = to_check_response(step_up(verdict, decision_id="d-3", rpc=None))
    assert response.status.code == code_pb2.UNAUTHENTICATED
    assert response.denied_response.status.code == 401
    headers = {h.header.key: h.header.value for h in response.denied_response.headers}
    assert headers["www-authenticate"].startswith('Bearer error="insufficient_user_authentication"')


def test_policy_chosen_status_is_kept() -> None:
    verdict = Verdict("deny", ("tea",), status=418, body="short and stout")
    response = to_check_response(deny(verdict, decision_id="d", rpc=None))
    assert response.denied_response.status.code == 418
    assert response.denied_response.body == "short and stout"


def test_errors_fail_the_rpc() -> None:
    with pytest.raises(Unavailable, match="policy engine timed out"):
        to_check_response(unavailable("policy engine timed out", decision_id="d-4", rpc=RpcContext(1)))
    with pytest.raises(Unavailable, match="policy engine timed out"):
        to_check_response(unavailable("policy engine timed out", decision_id="d-4", rpc=None))
    with pytest.raises(Unavailable, match="answered 503"):
        to_check_response(Decision("error", 503, "d-5", ()))


def test_response_is_the_message_built_field_by_field() -> None:
    """The response is filled in place for speed: it must be exactly the message built the plain
    way (sub-messages constructed and nested), byte for byte, presence of empty fields included."""
    overwrite = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD

    def option(name: str, value: str) -> base_pb2.HeaderValueOption:
        return base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=name, value=value), append_action=overwrite)

    verdict = Verdict("allow", ("ok",), upstream_headers={"x-authz-rule": "r"}, response_headers={"x-c": "1"})
    answer = allow(verdict, decision_id="d-1", identity=None, request_headers={"authorization": "Basic x"})
    expected = external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=code_pb2.OK),
        ok_response=external_auth_pb2.OkHttpResponse(
            headers=[option("x-authz-rule", "r"), option("x-authz-decision-id", "d-1")],
            headers_to_remove=["authorization"],
            response_headers_to_add=[option("x-c", "1"), option("x-authz-decision-id", "d-1")],
        ),
        dynamic_metadata=struct_pb2.Struct(fields={"decision_id": struct_pb2.Value(string_value="d-1")}),
    )
    assert to_check_response(answer).SerializeToString(deterministic=True) == expected.SerializeToString(
        deterministic=True
    )
    bare = external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=code_pb2.OK),
        ok_response=external_auth_pb2.OkHttpResponse(),
        dynamic_metadata=struct_pb2.Struct(),
    )
    response = to_check_response(Decision("allow", 200, "", ()))
    assert response.SerializeToString(deterministic=True) == bare.SerializeToString(deterministic=True)
    assert response.HasField("ok_response") and response.HasField("dynamic_metadata")

    denied = to_check_response(deny(Verdict("deny", ("no",), status=418, body="tea"), decision_id="d-2", rpc=None))
    expected = external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=denied.status.code),
        denied_response=external_auth_pb2.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=418),
            headers=[option("x-authz-decision-id", "d-2")],
            body="tea",
        ),
        dynamic_metadata=struct_pb2.Struct(fields={"decision_id": struct_pb2.Value(string_value="d-2")}),
    )
    assert denied.status.code == code_pb2.Code.Value(grpc_deny_code(418))
    assert denied.SerializeToString(deterministic=True) == expected.SerializeToString(deterministic=True)


def test_mixed_case_headers_that_collide_are_joined() -> None:
    message = envoy_request(headers={"X-Agent-Purpose": "a", "x-agent-purpose": "b"})
    joined = to_check_request(message, (), SECRET_HEADER).headers["x-agent-purpose"]
    assert sorted(joined.split(",")) == ["a", "b"]
