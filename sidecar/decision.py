"""Decision document → one :class:`Verdict`.

Accepted shapes: a boolean; the opa-envoy-plugin object (``allowed`` …); the agent object
(``verdict`` …). Anything else, or any field of the wrong type, is a :class:`DecisionError`
(a 503): a decision we cannot read is never an allow.

:func:`unread_input` reads the agent object's ``unread_input``: input fields the policy says it
never reads, which the sidecar may leave out of later inputs (:mod:`sidecar.phases.policy`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from sidecar.credentials import CredentialSpec
from sidecar.errors import Kind as ErrorKind
from sidecar.errors import SidecarError
from sidecar.unread import OMITTABLE_INPUT

Kind = Literal["allow", "deny", "step_up"]
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}$")
MAX_HEADER_VALUE = 8192


class DecisionError(SidecarError, ValueError):
    """The policy's answer has an unexpected shape; the message says which field."""

    KIND = ErrorKind.UNAVAILABLE
    CODE = "shape"


@dataclass(frozen=True)
class StepUp:
    kind: Literal["approval", "acr"]
    reason: str | None = None
    acr_values: tuple[str, ...] = ()
    max_age: int | None = None
    ttl_seconds: int | None = None
    approvers: dict[str, Any] = field(default_factory=dict)
    data_class: str | None = None
    redact: tuple[str, ...] = ()  # argument names or JSON pointers approvers must not see


@dataclass(frozen=True)
class Verdict:
    kind: Kind
    reasons: tuple[str, ...]
    status: int | None = None  # deny status chosen by the policy
    body: str | None = None  # deny body chosen by an opa-envoy-plugin style policy
    upstream_headers: dict[str, str] = field(default_factory=dict)
    remove_headers: tuple[str, ...] = ()
    response_headers: dict[str, str] = field(default_factory=dict)
    step_up: StepUp | None = None
    remember: tuple[str, ...] = ()
    credential: CredentialSpec | None = None  # a JIT upstream credential to mint on allow
    write: bool | None = None  # the policy's classification; None: judge by the HTTP method


def to_verdict(result: Any) -> Verdict:
    """Map an OPA result to a verdict, or raise :class:`DecisionError`."""
    if isinstance(result, bool):
        return Verdict("allow", ("allowed by policy",)) if result else Verdict("deny", ("denied by policy",))
    if not isinstance(result, dict):
        raise DecisionError(f"decision must be a boolean or an object, not {_type(result)}")
    if "verdict" in result and "allowed" in result:
        raise DecisionError("decision has both 'verdict' and 'allowed'")
    if "verdict" in result:
        return _agent_object(result)
    if "allowed" in result:
        return _plugin_object(result)
    raise DecisionError("decision object has neither 'verdict' nor 'allowed'")


def _plugin_object(doc: dict[str, Any]) -> Verdict:
    allowed = doc["allowed"]
    if not isinstance(allowed, bool):
        raise DecisionError("'allowed' must be a boolean")
    headers = _headers(doc, "headers")
    remove_headers = _names(doc, "request_headers_to_remove")
    response_headers = _headers(doc, "response_headers_to_add")
    if allowed:
        return Verdict(
            "allow",
            ("allowed by policy",),
            upstream_headers=headers,
            remove_headers=remove_headers,
            response_headers=response_headers,
        )
    body = doc.get("body")
    if body is not None and not isinstance(body, str):
        raise DecisionError("'body' must be a string")
    # On a deny, opa-envoy-plugin sends `headers` to the client and ignores response_headers_to_add.
    return Verdict(
        "deny",
        ("denied by policy",),
        status=_status(doc, "http_status"),
        body=body,
        response_headers=headers,
        remove_headers=remove_headers,
    )


def _agent_object(doc: dict[str, Any]) -> Verdict:
    kind = doc["verdict"]
    if kind not in ("allow", "deny", "step_up"):
        raise DecisionError("'verdict' must be one of allow, deny, step_up")
    reasons = doc.get("reasons", [])
    if not isinstance(reasons, list) or not all(isinstance(r, str) for r in reasons):
        raise DecisionError("'reasons' must be a list of strings")
    credential = _credential(doc.get("credential")) if kind == "allow" else None
    step_up = _step_up(doc.get("step_up")) if kind == "step_up" else None
    remember = _names(doc, "remember")
    return Verdict(
        kind,
        tuple(reasons) or (f"{kind} by policy",),
        status=_status(doc, "status") if kind == "deny" else None,
        upstream_headers=_headers(doc, "headers"),
        remove_headers=_names(doc, "request_headers_to_remove"),
        response_headers=_headers(doc, "response_headers_to_add"),
        step_up=step_up,
        remember=remember,
        credential=credential,
        write=_optional_bool(doc, "write"),
    )


def _step_up(doc: Any) -> StepUp:
    if not isinstance(doc, dict):
        raise DecisionError("a step_up verdict needs a 'step_up' object")
    kind = doc.get("kind")
    if kind not in ("approval", "acr"):
        raise DecisionError("'step_up.kind' must be approval or acr")
    acr_values = doc.get("acr_values", [])
    if not isinstance(acr_values, list) or not all(isinstance(v, str) and v for v in acr_values):
        raise DecisionError("'step_up.acr_values' must be a list of strings")
    if kind == "acr" and not acr_values:
        raise DecisionError("an acr step-up needs 'step_up.acr_values'")
    reason = doc.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise DecisionError("'step_up.reason' must be a string")
    approvers = doc.get("approvers", {})
    if not isinstance(approvers, dict):
        raise DecisionError("'step_up.approvers' must be an object")
    data_class = doc.get("data_class")
    if data_class is not None and not isinstance(data_class, str):
        raise DecisionError("'step_up.data_class' must be a string")
    redact = doc.get("redact", [])
    if not isinstance(redact, list) or not all(isinstance(r, str) and r for r in redact):
        raise DecisionError("'step_up.redact' must be a list of argument names or JSON pointers")
    return StepUp(
        kind=kind,
        reason=reason,
        acr_values=tuple(acr_values),
        max_age=_optional_int(doc, "max_age"),
        ttl_seconds=_optional_int(doc, "ttl_seconds"),
        approvers=approvers,
        data_class=data_class,
        redact=tuple(redact),
    )


def _credential(doc: Any) -> CredentialSpec | None:
    if doc is None:
        return None
    if not isinstance(doc, dict):
        raise DecisionError("'credential' must be an object")
    audience, scopes, ttl = doc.get("audience"), doc.get("scopes"), doc.get("ttl_seconds")
    if not isinstance(audience, str) or not audience or any(c in audience for c in "\r\n\0"):
        raise DecisionError("'credential.audience' must be a non-empty string")
    if not isinstance(scopes, list) or not scopes or not all(isinstance(x, str) and x and " " not in x for x in scopes):
        raise DecisionError("'credential.scopes' must be a non-empty list of scope names")
    if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0:
        raise DecisionError("'credential.ttl_seconds' must be a positive integer")
    return CredentialSpec(audience, tuple(scopes), ttl)


def _headers(doc: dict[str, Any], key: str) -> dict[str, str]:
    value = doc.get(key, {})
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DecisionError(f"'{key}' must be an object of header names to strings")
    headers: dict[str, str] = {}
    for name, raw in value.items():
        text = ",".join(raw) if isinstance(raw, list) and all(isinstance(v, str) for v in raw) else raw
        if not isinstance(text, str):
            raise DecisionError(f"'{key}.{name}' must be a string")
        if not HEADER_NAME.match(name):
            raise DecisionError(f"'{key}' has an invalid header name")
        if len(text) > MAX_HEADER_VALUE or any(c in text for c in "\r\n\0"):
            raise DecisionError(f"'{key}.{name}' has an invalid header value")
        headers[name.lower()] = text
    return headers


def _names(doc: dict[str, Any], key: str) -> tuple[str, ...]:
    value = doc.get(key, [])
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and HEADER_NAME.match(v) for v in value):
        raise DecisionError(f"'{key}' must be a list of names")
    return tuple(v.lower() for v in value)


def _status(doc: dict[str, Any], key: str) -> int | None:
    value = doc.get(key)
    if value is None:
        return None
    # 200 would make Envoy allow, 5xx would be read as an authz-service error.
    if isinstance(value, bool) or not isinstance(value, int) or not 300 <= value <= 499:
        raise DecisionError(f"'{key}' must be an integer between 300 and 499 for a deny")
    return value


def _optional_int(doc: dict[str, Any], key: str) -> int | None:
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DecisionError(f"'step_up.{key}' must be a non-negative integer")
    return value


def _optional_bool(doc: dict[str, Any], key: str) -> bool | None:
    value = doc.get(key)
    if value is not None and not isinstance(value, bool):
        raise DecisionError(f"'{key}' must be a boolean")
    return value


def _type(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def unread_input(result: Any) -> frozenset[str]:
    """The omittable input fields an agent-object answer names in ``unread_input``. Anything else
    (another shape, a malformed list, a field we cannot omit) names nothing: the full input is sent."""
    if not isinstance(result, dict) or "verdict" not in result:
        return frozenset()
    value = result.get("unread_input")
    if not isinstance(value, list):
        return frozenset()
    return frozenset(v for v in value if isinstance(v, str)) & OMITTABLE_INPUT
