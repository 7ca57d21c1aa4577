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

from collections.abc import Iterable
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2
from google.rpc import code_pb2, status_pb2

from sidecar.errors import SidecarError
from sidecar.outcome import DECISION_ID_HEADER, Decision, PluginEffect
from sidecar.wire_status import grpc_deny_code

OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
DENY_CODES: dict[int, int] = {}  # HTTP status of a refusal → its google.rpc.Code number, filled as met


class Unavailable(SidecarError):
    """No decision could be made: fail the Check RPC."""

    CODE = "unavailable"


def to_check_response(decision: Decision) -> Any:
    """The ``CheckResponse`` for one decision; raises :class:`Unavailable` when it failed.

    Filled in place (``add()`` on the repeated fields, fields set on the parent's sub-messages):
    about a third of the CPU of building each sub-message and copying it into its parent, for the
    same message byte for byte (tests/unit/test_grpc.py)."""
    if decision.failed:
        raise Unavailable("; ".join(decision.reasons) or f"authorization sidecar answered {decision.status}")
    if decision.plugin is not None:
        return _plugin_response(decision, decision.plugin)
    response = external_auth_pb2.CheckResponse()
    metadata = response.dynamic_metadata
    metadata.SetInParent()  # present, if empty, as before
    if decision.decision_id:
        metadata.fields["decision_id"].string_value = decision.decision_id
    if decision.allowed:
        response.status.SetInParent()  # code OK (0)
        ok = response.ok_response
        ok.SetInParent()
        _set_headers(ok.headers, decision.upstream_headers)
        ok.headers_to_remove.extend(decision.remove_headers)
        # The policy's response headers go to the client, where opa-envoy-plugin sends them.
        to_client = ok.response_headers_to_add
        _set_headers(to_client, decision.client_headers)
        if decision.decision_id:
            _set_headers(to_client, ((DECISION_ID_HEADER, decision.decision_id),))
        return response
    response.status.code = DENY_CODES.get(decision.status) or _deny_code(decision.status)
    denied = response.denied_response
    denied.status.code = decision.status
    _set_headers(denied.headers, decision.client_headers)
    denied.body = decision.body.decode("utf-8", errors="replace")
    return response


def _set_headers(options: Any, headers: Iterable[tuple[str, str]]) -> None:
    """Append one overwriting ``HeaderValueOption`` per header to the repeated field ``options``."""
    for name, value in headers:
        option = options.add(append_action=OVERWRITE)
        header = option.header
        header.key = name
        header.value = value


def _deny_code(status: int) -> int:
    code: int = code_pb2.Code.Value(grpc_deny_code(status))
    DENY_CODES[status] = code
    return code


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
