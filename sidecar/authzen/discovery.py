"""The PDP metadata document (``/.well-known/authzen-configuration``)."""

from __future__ import annotations

EVALUATION = "/access/v1/evaluation"
EVALUATIONS = "/access/v1/evaluations"
SEARCH_ACTION = "/access/v1/search/action"


def metadata(base_url: str, searches_actions: bool) -> dict[str, str]:
    """Only the endpoints this PDP serves: the specification reads an absent one as "not capable"."""
    document = {
        "policy_decision_point": base_url,
        "access_evaluation_endpoint": base_url + EVALUATION,
        "access_evaluations_endpoint": base_url + EVALUATIONS,
    }
    if searches_actions:
        document["search_action_endpoint"] = base_url + SEARCH_ACTION
    return document
