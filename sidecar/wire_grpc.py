"""WireResponse → Envoy's gRPC ``CheckResponse`` (``envoy.service.auth.v3``).

The pipeline answers in HTTP-service terms (:mod:`sidecar.wire`); this module translates that one
answer for gRPC mode so both modes share every decision:

- 200 → ``OkHttpResponse``: the headers are set on the upstream request (gRPC mode has no
  ``allowed_upstream_headers`` filter, so the sidecar's answer is the list), the
  ``x-envoy-auth-headers-to-remove`` list becomes ``headers_to_remove``, and the decision id is
  also returned to the client, as ``allowed_client_headers_on_success`` does in HTTP mode.
- any other status below 500 → ``DeniedHttpResponse`` with that status, headers and body.
- 5xx → :class:`Unavailable`: the server fails the RPC with ``UNAVAILABLE`` so that Envoy
  answers its ``status_on_error`` (fail closed), exactly like a 5xx from the HTTP service.

``dynamic_metadata`` carries the decision id (namespace ``envoy.filters.http.ext_authz``) for
Envoy's access logs.
"""

from __future__ import annotations

import json
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2
from google.rpc import code_pb2, status_pb2

from sidecar.errors import SidecarError
from sidecar.wire import DECISION_ID_HEADER, HEADERS_TO_REMOVE, WireResponse

OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
DENY_CODES = {401: code_pb2.UNAUTHENTICATED, 403: code_pb2.PERMISSION_DENIED}


class Unavailable(SidecarError):
    """No decision could be made (the pipeline answered 5xx): fail the Check RPC."""

    CODE = "unavailable"


def to_check_response(answer: WireResponse) -> Any:
    """The ``CheckResponse`` for one pipeline answer; raises :class:`Unavailable` for a 5xx."""
    if answer.status >= 500:
        raise Unavailable(_reason(answer))
    decision_id = next((value for name, value in answer.headers if name == DECISION_ID_HEADER), "")
    metadata = struct_pb2.Struct()
    if decision_id:
        metadata.update({"decision_id": decision_id})
    if answer.status == 200:
        remove: list[str] = []
        upstream = []
        for name, value in answer.headers:
            if name == HEADERS_TO_REMOVE:
                remove.extend(n.strip() for n in value.split(",") if n.strip())
            else:
                upstream.append(_header(name, value))
        ok = external_auth_pb2.OkHttpResponse(
            headers=upstream,
            headers_to_remove=remove,
            response_headers_to_add=[_header(DECISION_ID_HEADER, decision_id)] if decision_id else [],
        )
        return external_auth_pb2.CheckResponse(
            status=status_pb2.Status(code=code_pb2.OK), ok_response=ok, dynamic_metadata=metadata
        )
    denied = external_auth_pb2.DeniedHttpResponse(
        status=http_status_pb2.HttpStatus(code=answer.status),
        headers=[_header(name, value) for name, value in answer.headers],
        body=answer.body.decode("utf-8", errors="replace"),
    )
    return external_auth_pb2.CheckResponse(
        status=status_pb2.Status(code=DENY_CODES.get(answer.status, code_pb2.PERMISSION_DENIED)),
        denied_response=denied,
        dynamic_metadata=metadata,
    )


def _header(name: str, value: str) -> Any:
    return base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=name, value=value), append_action=OVERWRITE)


def _reason(answer: WireResponse) -> str:
    """The short reason of a 5xx answer for the gRPC status message (no body is ever forwarded)."""
    try:
        document = json.loads(answer.body)
        data = document.get("error", {}).get("data", document) if isinstance(document, dict) else {}
        reasons = data.get("reasons") if isinstance(data, dict) else None
        if isinstance(reasons, list) and reasons:
            return "; ".join(str(r) for r in reasons)
    except ValueError:
        pass
    return f"authorization sidecar answered {answer.status}"
