"""AuthZEN 1.0 requests: parse and validate bodies into evaluations, or say why not.

Every check here is one the specification makes (Information Model, Access Evaluation(s) and
Action Search requests): subject and resource are objects with string ``type`` and ``id`` and an
optional ``properties`` object, an action has a string ``name``, a context is an object. Anything
else is an :class:`AuthzenError` (400 with the reason), never an evaluation. Unknown fields are
ignored, as the specification requires for forward compatibility.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from sidecar.errors import Kind, SidecarError

Semantic = Literal["execute_all", "deny_on_first_deny", "permit_on_first_permit"]
SEMANTICS: tuple[Semantic, ...] = ("execute_all", "deny_on_first_deny", "permit_on_first_permit")
ENTITIES = ("subject", "action", "resource", "context")


class AuthzenError(SidecarError):
    """A request the PDP will not evaluate: its ``kind`` gives the status (``wire_status``), and the
    ``reason`` goes to the PEP as it is."""

    KIND = Kind.INVALID
    CODE = "authzen_refused"

    def __init__(self, kind: Kind, reason: str) -> None:
        super().__init__(reason, kind=kind)


@dataclass(frozen=True)
class Evaluation:
    """One access question, validated; ``as_input`` is the policy entrypoint's input."""

    subject: dict[str, Any]
    action: dict[str, Any]
    resource: dict[str, Any]
    context: dict[str, Any]


@dataclass(frozen=True)
class Batch:
    """An Access Evaluations request: its evaluations (defaults applied) and how to run them."""

    evaluations: list[Evaluation]
    semantic: Semantic


def parse_evaluation(body: Any) -> Evaluation:
    """An Access Evaluation request body."""
    document = _object(body, "the request body")
    return _evaluation(document, {}, "")


def parse_evaluations(body: Any, limit: int) -> Batch | Evaluation:
    """An Access Evaluations request body; without an ``evaluations`` array (or with an empty one)
    it is a single evaluation, as the specification says."""
    document = _object(body, "the request body")
    items = document.get("evaluations")
    if items is None or items == []:
        return _evaluation(document, {}, "")
    if not isinstance(items, list):
        raise AuthzenError(Kind.INVALID, "evaluations must be an array")
    if len(items) > limit:
        raise AuthzenError(Kind.INVALID, f"evaluations has {len(items)} items; this PDP takes at most {limit}")
    defaults = {key: document[key] for key in ENTITIES if key in document}
    for key, value in defaults.items():  # a malformed default is a malformed request, used or not
        _entity(key, value, f"{key}")
    evaluations = [
        _evaluation(_object(item, f"evaluations[{index}]"), defaults, f"evaluations[{index}].")
        for index, item in enumerate(items)
    ]
    return Batch(evaluations, _semantic(document.get("options")))


def parse_action_search(body: Any) -> Evaluation:
    """An Action Search request: subject, resource and an optional context (no action)."""
    document = _object(body, "the request body")
    subject = _entity("subject", _required(document, "subject", ""), "subject")
    resource = _entity("resource", _required(document, "resource", ""), "resource")
    context = _entity("context", document.get("context", {}), "context")
    _page(document.get("page"))
    return Evaluation(subject, {}, resource, context)


def _evaluation(item: dict[str, Any], defaults: dict[str, Any], where: str) -> Evaluation:
    """An item overrides each default it names, whole (no merging inside an entity)."""
    merged = {**defaults, **{key: item[key] for key in ENTITIES if key in item}}
    return Evaluation(
        subject=_entity("subject", _required(merged, "subject", where), where + "subject"),
        action=_entity("action", _required(merged, "action", where), where + "action"),
        resource=_entity("resource", _required(merged, "resource", where), where + "resource"),
        context=_entity("context", merged.get("context", {}), where + "context"),
    )


def _required(document: dict[str, Any], key: str, where: str) -> Any:
    if key not in document:
        raise AuthzenError(Kind.INVALID, f"{where}{key} is required")
    return document[key]


def _entity(kind: str, value: Any, where: str) -> dict[str, Any]:
    entity = _object(value, where)
    if kind in ("subject", "resource"):
        for field in ("type", "id"):
            if not isinstance(entity.get(field), str) or not entity[field]:
                raise AuthzenError(Kind.INVALID, f"{where}.{field} must be a non-empty string")
    elif kind == "action" and (not isinstance(entity.get("name"), str) or not entity["name"]):
        raise AuthzenError(Kind.INVALID, f"{where}.name must be a non-empty string")
    if kind != "context" and "properties" in entity and not isinstance(entity["properties"], dict):
        raise AuthzenError(Kind.INVALID, f"{where}.properties must be an object")
    return entity


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise AuthzenError(Kind.INVALID, f"{where} must be a JSON object")
    return value


def _semantic(options: Any) -> Semantic:
    if options is None:
        return "execute_all"
    semantic = _object(options, "options").get("evaluations_semantic", "execute_all")
    for known in SEMANTICS:
        if semantic == known:
            return known
    raise AuthzenError(Kind.INVALID, f"options.evaluations_semantic must be one of {', '.join(SEMANTICS)}")


def _page(page: Any) -> None:
    """Pagination is optional for a PDP: a page object is accepted, and every result fits one page."""
    if page is not None:
        _object(page, "page")
