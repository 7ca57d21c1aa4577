"""The sidecar's own caps hold even when the policy would grant far more.

The shipped policy already clamps ttls and scopes, so tests against it cannot tell whether the
code clamps too. Here a real OPA runs a deliberately permissive bundle
(tests/fixtures/permissive-bundle: every call allowed with a credential asked for 1 000 000 s,
every task request granted as asked), and only the checks in sidecar/credentials.py and
sidecar/tasks.py stand between it and an over-long credential or an over-wide task.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from spiffe import SpiffeId

from devstack.trust_domain import DevTrustDomain
from sidecar.config import validate_config
from sidecar.errors import Kind
from sidecar.identity import Identity
from sidecar.request import CheckRequest
from sidecar.server import Components, build_components
from sidecar.tasks import TaskError
from sidecar.wire_status import HTTP_STATUS
from tests.real_opa import serve_bundle

BUNDLE = Path(__file__).resolve().parents[1] / "fixtures" / "permissive-bundle"
WRITER = "spiffe://demo.local/agent/writer"
ASSISTANT = "spiffe://demo.local/agent/assistant"
CREDENTIAL_MAX_TTL = 120
TASK_MAX_TTL = 600
ASKED_CREDENTIAL_TTL = 1_000_000  # what the permissive policy asks for (tests/fixtures/permissive-bundle)


@pytest.fixture(scope="module")
def permissive_opa(opa_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real OPA serving the permissive bundle on a free loopback port; its URL."""
    with serve_bundle(opa_bin, BUNDLE, tmp_path_factory.mktemp("permissive-opa")) as url:
        yield url


@pytest.fixture
async def parts(permissive_opa: str, trust_domain: DevTrustDomain) -> AsyncIterator[Components]:
    config = validate_config(
        {
            "opa": {"url": permissive_opa},
            "identity": {
                "sources": ["jwt_svid"],
                "trust_domains": ["demo.local"],
                "jwt_svid": {"bundle_files": {"demo.local": str(trust_domain.jwt_bundle)}},
            },
            "tasks": {"max_ttl_seconds": TASK_MAX_TTL},
            "credentials": {"max_ttl_seconds": CREDENTIAL_MAX_TTL},
        }
    )
    components = await build_components(config)
    try:
        yield components
    finally:
        await components.close()


def caller(spiffe_id: str) -> Identity:
    return Identity(SpiffeId(spiffe_id), "jwt_svid")


async def minted_credential(
    parts: Components, trust_domain: DevTrustDomain, task_token: str | None = None
) -> dict[str, Any]:
    """Check a GET as the writer through the pipeline; the claims of the credential it mints."""
    headers = {"host": "api.demo.local", "authorization": "Bearer " + trust_domain.mint_jwt(WRITER)}
    if task_token is not None:
        headers["x-agent-task-token"] = task_token
    answer = await parts.pipeline.check(CheckRequest("GET", "/api/docs/handbook", headers, b""))
    assert answer.status == 200, answer.body
    bearer = dict(answer.upstream_headers)["authorization"]
    assert bearer.startswith("Bearer ")
    claims: dict[str, Any] = jwt.decode(bearer.removeprefix("Bearer "), options={"verify_signature": False})
    return claims


def token_exp(token: str) -> int:
    exp: int = jwt.decode(token, options={"verify_signature": False})["exp"]
    return exp


async def test_credential_ttl_is_capped_by_max_ttl_seconds(parts: Components, trust_domain: DevTrustDomain) -> None:
    before = int(time.time())
    claims = await minted_credential(parts, trust_domain)
    after = int(time.time())
    assert claims["exp"] - claims["iat"] <= CREDENTIAL_MAX_TTL, "the policy's 1 000 000 s must be cut to the max"
    assert before + 1 <= claims["exp"] <= after + CREDENTIAL_MAX_TTL


async def test_credential_never_outlives_its_task(parts: Components, trust_domain: DevTrustDomain) -> None:
    assert parts.tasks is not None
    grant = await parts.tasks.open(caller(WRITER), {"purpose": "triage", "scopes": ["docs:read"], "ttl_seconds": 30})
    assert grant.task.expires_at - grant.task.issued_at == 30  # shorter than CREDENTIAL_MAX_TTL
    claims = await minted_credential(parts, trust_domain, grant.token)
    assert claims["task_id"] == grant.task.id
    assert claims["exp"] <= grant.task.expires_at, "a credential must end when its task does"


async def test_task_ttl_is_capped_by_tasks_max_ttl_seconds(parts: Components) -> None:
    assert parts.tasks is not None
    body = {"purpose": "triage", "scopes": ["docs:read"], "ttl_seconds": 10 * ASKED_CREDENTIAL_TTL}
    grant = await parts.tasks.open(caller(WRITER), body)
    assert grant.task.expires_at - grant.task.issued_at == TASK_MAX_TTL
    assert token_exp(grant.token) == grant.task.expires_at


async def test_delegated_task_never_outlives_its_parent(parts: Components) -> None:
    assert parts.tasks is not None
    writer = caller(WRITER)
    parent = await parts.tasks.open(writer, {"purpose": "triage", "scopes": ["docs:read"], "ttl_seconds": 20})
    body = {"to": ASSISTANT, "scopes": ["docs:read"], "ttl_seconds": 500}
    child = await parts.tasks.delegate(writer, parent.task.id, body)
    assert child.task.parent_id == parent.task.id
    assert child.task.expires_at == parent.task.expires_at, "the permissive 500 s must be cut to the parent's end"
    assert token_exp(child.token) == parent.task.expires_at


async def test_delegation_cannot_add_scopes_the_parent_lacks(parts: Components) -> None:
    assert parts.tasks is not None
    writer = caller(WRITER)
    parent = await parts.tasks.open(writer, {"purpose": "triage", "scopes": ["docs:read"], "ttl_seconds": 60})
    body = {"to": ASSISTANT, "scopes": ["docs:read", "tickets:write"], "ttl_seconds": 30}
    with pytest.raises(TaskError) as refused:
        await parts.tasks.delegate(writer, parent.task.id, body)
    assert refused.value.kind is Kind.FORBIDDEN and HTTP_STATUS[refused.value.kind] == 403
    assert refused.value.reason == f"delegation may only narrow: task {parent.task.id} does not hold tickets:write"


async def test_policy_cannot_grant_scopes_nobody_requested(parts: Components) -> None:
    assert parts.tasks is not None
    body = {"purpose": "overreach", "scopes": ["docs:read"], "ttl_seconds": 60}  # the policy adds admin:everything
    with pytest.raises(TaskError) as refused:
        await parts.tasks.open(caller(WRITER), body)
    assert refused.value.kind is Kind.UNAVAILABLE and HTTP_STATUS[refused.value.kind] == 503
    assert refused.value.reason == "task policy granted scopes that were not requested"
