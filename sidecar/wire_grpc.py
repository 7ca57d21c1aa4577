"""Decision → Envoy's gRPC ``CheckResponse`` (``envoy.service.auth.v3``).

- allow → ``OkHttpResponse``: the decision's headers are set on the upstream request (gRPC mode
  has no ``allowed_upstream_headers`` filter, so the sidecar's list is what Envoy applies), its
  removals become ``headers_to_remove``, and the decision id is also returned to the client, as
  ``allowed_client_headers_on_success`` does in HTTP mode.
- deny, step-up → ``DeniedHttpResponse`` with the decision's status, client headers and body.
- error → :class:`Unavailable`: the server fails the RPC with ``UNAVAILABLE`` so that Envoy
  answers its ``status_on_error`` (fail closed), exactly like a 5xx from the HTTP service.

``dynamic_metadata`` carries the decision id (namespace ``envoy.filters.http.ext_authz``) for
Envoy's access logs.

In the opa-envoy-plugin profile (``decision.plugin``) the response is the plugin's, field for
field: headers appended, query parameters set and removed, the policy's dynamic metadata, a deny
always ``PERMISSION_DENIED``, and a plain boolean answer only a status.
"""

from __future__ import annotations

from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2
from google.rpc import code_pb2, status_pb2

from sidecar.errors import SidecarError
from sidecar.outcome import DECISION_ID_HEADER, Decision, PluginEffect
from sidecar.wire_status import grpc_deny_code

OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


class Unavailable(SidecarError):
    """No decision could be made: fail the Check RPC."""

    CODE = "unavailable"


def to_check_response(decision: Decision) -> Any:
    """The ``CheckResponse`` for one decision; raises :class:`Unavailable` when it failed."""
    if decision.failed:
        raise Unavailable("; ".join(decision.reasons) or f"authorization sidecar answered {decision.status}")
    if decision.plugin is not None:
        return _plugin_response(decision, decision.plugin)
    metadata = struct_pb2.Struct()
    if decision.decision_id:
        metadata.update({"decision_id": decision.decision_id})
    if decision.allowed:
        # The policy's response headers go to the client, where opa-envoy-plugin sends them.
        to_client = list(decision.client_headers)
        if decision.decision_id:
            to_client.append((DECISION_ID_HEADER, decision.decision_id))
        ok = external_auth_pb2.OkHttpResponse(
            headers=[_header(name, value) for name, value in decision.upstream_headers],
            headers_to_remove=list(decision.remove_headers),
            response_headers_to_add=[_header(name, value) for name, value in to_client],
        )
        return external_auth_pb2.CheckResponse(
            status=status_pb2.Status(code=code_pb2.OK), ok_response=ok, dynamic_metadata=metadata
        )
    denied = external_auth_pb2.DeniedHttpResponse(
        status=http_status_pb2.HttpStatus(code=decision.status),
        headers=[_header(name, value) for name, value in decision.client_headers],
        body=decision.body.decode("utf-8", errors="replace"),
    )
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=code_pb2.Code.Value(grpc_deny_code(decision.status))),
        denied_response=denied,
        dynamic_metadata=metadata,
    )


def _plugin_response(decision: Decision, effect: PluginEffect) -> Any:
    """The CheckResponse opa-envoy-plugin builds (its ``internal.go`` ``check``)."""
    response = external_auth_pb2.CheckResponse(
        status=status_pb2.Status(
            code=code_pb2.OK if decision.allowed else code_pb2.PERMISSION_DENIED, message=effect.message
        )
    )
    if effect.metadata is not None:
        response.dynamic_metadata.update(effect.metadata)
    if effect.bare:
        return response
    if decision.allowed:
        response.ok_response.SetInParent()  # present even when empty (a dry-run deny)
        ok = response.ok_response
        ok.headers.extend(_appended(decision.upstream_headers))
        ok.headers_to_remove.extend(decision.remove_headers)
        ok.response_headers_to_add.extend(_appended(decision.client_headers))
        ok.query_parameters_to_remove.extend(effect.query_remove)
        ok.query_parameters_to_set.extend(base_pb2.QueryParameter(key=k, value=v) for k, v in effect.query_set)
        return response
    denied = response.denied_response
    denied.status.code = decision.status
    denied.headers.extend(_appended(decision.client_headers))
    denied.body = decision.body.decode("utf-8", errors="replace")
    return response


def _appended(headers: tuple[tuple[str, str], ...]) -> list[Any]:
    """Header options as the plugin writes them: no append action (Envoy's default, append)."""
    return [base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=k, value=v)) for k, v in headers]


def _header(name: str, value: str) -> Any:
    return base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=name, value=value), append_action=OVERWRITE)
