"""A JWT-SVID the sidecar has verified (and so cached) stops working at its own ``exp``."""

from __future__ import annotations

import time

import jwt
import pytest

from devstack.agent_client import AgentClient
from devstack.stack import Stack
from tests.e2e.conftest import READER

pytestmark = pytest.mark.e2e


def test_cached_jwt_svid_is_refused_after_its_exp(client: AgentClient, stack: Stack) -> None:
    token = stack.trust_domain.mint_jwt(READER, ttl=2)
    headers = {"authorization": f"Bearer {token}"}
    first = client.request("GET", "/api/docs/handbook", headers=headers)
    assert first.status_code == 200, first.text  # verified, so now in the sidecar's cache
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    assert time.time() < exp, "the first call must have been made before exp"
    time.sleep(max(0.0, exp - time.time()) + 0.5)  # at most 2.5 s
    again = client.request("GET", "/api/docs/handbook", headers=headers)
    assert again.status_code == 401, again.text
    assert again.json()["reasons"] == ["JWT-SVID rejected: token has expired"]
    assert "invalid_token" in again.headers["www-authenticate"]
