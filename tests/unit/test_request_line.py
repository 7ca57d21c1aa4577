"""The sidecar's own refusals of what servers read differently, whatever the policy says.

Envoy's route refuses the same requests first (envoy/envoy.yaml) and the policy denies them too
(policy.rego); here the sidecar alone stands, with an OPA that allows everything.
"""

from __future__ import annotations

import json

import pytest

from sidecar.body import EMPTY
from sidecar.config import IdentityConfig, validate_config
from sidecar.identity import IdentityResolver
from sidecar.input import build_input
from sidecar.opa import OpaClient
from sidecar.opa_fake import FakeOpa, always
from sidecar.pipeline import Pipeline
from sidecar.request import CheckRequest, request_line_problem
from tests.pipelines import make_pipeline

LIMIT = 64


def _allow_everything() -> FakeOpa:
    return FakeOpa(always(True))


def _pipeline(opa: OpaClient, allow_partial: bool = False) -> Pipeline:
    identity = IdentityConfig.model_validate({"sources": ["jwt_svid"], "required": False})
    settings = {"request_body": {"allow_partial": allow_partial, "envoy_max_request_bytes": LIMIT}}
    return make_pipeline(IdentityResolver(identity, None, None), opa, settings)


@pytest.mark.parametrize(
    "path",
    [
        "/api/docs/..;/records/1",
        "/api/docs;/handbook",
        "/api/docs/handbook;jsessionid=1",
        "/api/docs/%3b/records",
        "/api/docs/..%3B/records/1",
        "/;",
    ],
)
async def test_path_parameters_are_refused_before_the_policy(path: str) -> None:
    opa = _allow_everything()
    answer = await _pipeline(opa).check(CheckRequest("GET", path + "?q=1", {"host": "demo.local"}, b""))
    assert answer.status == 400
    assert "path parameters" in json.loads(answer.body)["reasons"][0]
    assert not opa.inputs, "refused before OPA is asked"


async def test_a_semicolon_in_the_query_is_not_a_path_parameter() -> None:
    opa = _allow_everything()
    answer = await _pipeline(opa).check(CheckRequest("GET", "/api/docs/x?a=1;b=2", {"host": "demo.local"}, b""))
    assert answer.status == 200 and opa.inputs


@pytest.mark.parametrize("method", ["get", "Get", "pOST", "delete"])
async def test_lower_case_methods_are_refused(method: str) -> None:
    opa = _allow_everything()
    answer = await _pipeline(opa).check(CheckRequest(method, "/api/docs/x", {"host": "demo.local"}, b""))
    assert answer.status == 400 and not opa.inputs
    assert request_line_problem(method, "/x") is not None


def test_the_method_judged_is_the_method_sent() -> None:
    document = build_input(CheckRequest("PATCH", "/x", {}, b""), identity=None, body=EMPTY, intent=None)
    assert document["action"]["method"] == document["attributes"]["request"]["http"]["method"] == "PATCH"


@pytest.mark.parametrize(("size", "judged_whole"), [(LIMIT - 1, True), (LIMIT, False), (LIMIT + 1, False)])
async def test_a_body_that_fills_envoys_buffer_is_truncated(size: int, judged_whole: bool) -> None:
    """Envoy flags a partial body only when it holds more than it sent: at exactly its limit the
    rest may still come, so the sidecar treats it as truncated (no partial-body header here)."""
    opa = _allow_everything()
    request = CheckRequest("POST", "/api/tickets", {"host": "demo.local", "content-type": "text/plain"}, b"x" * size)
    answer = await _pipeline(opa).check(request)
    if judged_whole:
        assert answer.status == 200 and opa.inputs[0]["truncated_body"] is False
    else:
        assert answer.status == 413 and not opa.inputs


async def test_with_partial_bodies_allowed_the_policy_sees_the_limit_as_truncated() -> None:
    opa = _allow_everything()
    request = CheckRequest("POST", "/api/tickets", {"host": "demo.local"}, b"x" * LIMIT)
    await _pipeline(opa, allow_partial=True).check(request)
    assert opa.inputs[0]["truncated_body"] is True


def test_the_buffer_limit_must_fit_what_the_sidecar_reads() -> None:
    with pytest.raises(Exception, match="exceeds max_bytes"):
        validate_config({"request_body": {"max_bytes": 1000, "envoy_max_request_bytes": 2000}})
    assert validate_config({}).request_body.envoy_max_request_bytes == 65_536
