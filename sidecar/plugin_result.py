"""An opa-envoy-plugin result → the :class:`~sidecar.outcome.Decision` the plugin would answer.

Follows the plugin's ``envoyauth/response.go`` and its ``check``: a boolean is only a status; an
object needs a boolean ``allowed``; ``headers`` (an object, or an array of objects; values a
string or a list of strings) go upstream on allow and to the client on deny;
``response_headers_to_add`` to the client on allow; ``request_headers_to_remove``,
``query_parameters_to_set`` / ``_remove`` on allow; ``body`` and ``http_status`` (any status
Envoy and Go both know, default 403) on deny; ``dynamic_metadata`` merged with ``decision_id``.
A field of the wrong type is a :class:`~sidecar.decision.DecisionError` (no decision: fail closed).
With ``dry_run`` a deny is logged by OPA as it is, but answered as an empty allow.
"""

from __future__ import annotations

from typing import Any

from sidecar.decision import MAX_HEADER_VALUE, DecisionError
from sidecar.outcome import Decision, Headers, PluginEffect

# Statuses both Go's http.StatusText and Envoy's envoy.type.v3.StatusCode know.
VALID_STATUSES = frozenset(
    {100, *range(200, 209), 226, *range(300, 306), 307, 308, *range(400, 418), 421, 422, 423, 424, 426, 428, 429}
    | {431, *range(500, 509), 510, 511}
)


def answer(result: Any, *, decision_id: str, dry_run: bool = False) -> Decision:
    """The plugin's answer to ``result``, or :class:`DecisionError`."""
    metadata = {"decision_id": decision_id}
    if isinstance(result, bool):
        decision = _bare(result, decision_id, metadata)
    elif isinstance(result, dict):
        decision = _object(result, decision_id, metadata)
    else:
        raise DecisionError(f"illegal value for policy evaluation result: {_type(result)}")
    if dry_run and not decision.allowed:
        effect = PluginEffect(metadata=decision.plugin.metadata if decision.plugin else metadata)
        return Decision("allow", 200, decision_id, ("dry-run: the policy denied",), plugin=effect)
    return decision


def _bare(allowed: bool, decision_id: str, metadata: dict[str, Any]) -> Decision:
    effect = PluginEffect(metadata=metadata, bare=True)
    if allowed:
        return Decision("allow", 200, decision_id, ("allowed by policy",), plugin=effect)
    return Decision("deny", 403, decision_id, ("denied by policy",), plugin=effect)


def _object(doc: dict[str, Any], decision_id: str, metadata: dict[str, Any]) -> Decision:
    if "allowed" not in doc:
        raise DecisionError('unable to determine evaluation result due to missing "allowed" key')
    allowed = doc["allowed"]
    if not isinstance(allowed, bool):
        raise DecisionError("expected allowed to be of type 'boolean'")
    headers = header_list(doc, "headers")
    extra = doc.get("dynamic_metadata", {})
    if not isinstance(extra, dict):
        raise DecisionError("expected dynamic_metadata to be of type 'object'")
    metadata = {**extra, **metadata}
    if allowed:
        effect = PluginEffect(
            query_set=_query_to_set(doc), query_remove=_strings(doc, "query_parameters_to_remove"), metadata=metadata
        )
        return Decision(
            "allow",
            200,
            decision_id,
            ("allowed by policy",),
            upstream_headers=headers,
            client_headers=header_list(doc, "response_headers_to_add"),
            remove_headers=_strings(doc, "request_headers_to_remove"),
            plugin=effect,
        )
    body = doc.get("body", "")
    if not isinstance(body, str):
        raise DecisionError("expected body to be of type 'string'")
    status = doc.get("http_status", 403)
    if isinstance(status, float) and status.is_integer():
        status = int(status)
    if isinstance(status, bool) or not isinstance(status, int) or status not in VALID_STATUSES:
        raise DecisionError(f"invalid HTTP status code {status!r}")
    effect = PluginEffect(metadata=metadata)
    return Decision(
        "deny", status, decision_id, ("denied by policy",), client_headers=headers, body=body.encode(), plugin=effect
    )


def header_list(doc: dict[str, Any], key: str) -> Headers:
    """``key`` as header pairs in the policy's order: an object, or an array of objects."""
    value = doc.get(key)
    if value is None and key not in doc:
        return ()
    objects = value if isinstance(value, list) else [value]
    pairs: list[tuple[str, str]] = []
    for item in objects:
        if not isinstance(item, dict):
            raise DecisionError(f"expected {key} to be of type 'object'")
        for name, raw in item.items():
            values = raw if isinstance(raw, list) else [raw]
            for text in values:
                if not isinstance(text, str):
                    raise DecisionError(f"invalid value type for header '{name}'")
                # Fail closed where the plugin would hand Envoy a header it cannot send.
                if not name or len(text) > MAX_HEADER_VALUE or any(c in text for c in "\r\n\0"):
                    raise DecisionError(f"'{key}.{name}' has an invalid header name or value")
                pairs.append((name, text))
    return tuple(pairs)


def _strings(doc: dict[str, Any], key: str) -> tuple[str, ...]:
    value = doc.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DecisionError(f"expected {key} to be of type '[]string'")
    return tuple(value)


def _query_to_set(doc: dict[str, Any]) -> Headers:
    value = doc.get("query_parameters_to_set", {})
    if not isinstance(value, dict):
        raise DecisionError("expected query_parameters_to_set to be a map")
    pairs: list[tuple[str, str]] = []
    for name, raw in value.items():
        values = raw if isinstance(raw, list) else [raw]
        if not all(isinstance(v, str) for v in values):
            raise DecisionError("expected query parameter values to be strings or arrays of strings")
        pairs += [(name, v) for v in values]
    return tuple(pairs)


def _type(value: Any) -> str:
    return "null" if value is None else type(value).__name__
