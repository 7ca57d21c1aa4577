"""The sidecar's pipeline for tests: the production builder on test settings and services.

``settings`` is a config mapping (validated like a config file), so a test states only what it
changes: ``{"request_body": {"allow_partial": True}}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sidecar.approvals import ApprovalService
from sidecar.config import validate_config
from sidecar.credentials import CredentialMinter
from sidecar.mcp_response.pending import PendingResponses
from sidecar.opa import OpaClient
from sidecar.phases.identity import Resolver
from sidecar.phases.task import GrantVerifier
from sidecar.pipeline import Pipeline, Services, build_pipeline
from sidecar.sessions import SessionTracker
from sidecar.shadow import Shadow
from sidecar.state import Store

QUIET = {"log": {"decisions": False}}


def make_pipeline(
    resolver: Resolver,
    opa: OpaClient,
    settings: Mapping[str, Any] | None = None,
    *,
    tasks: GrantVerifier | None = None,
    sessions: SessionTracker | None = None,
    approvals: ApprovalService | None = None,
    minter: CredentialMinter | None = None,
    shadow: Shadow | None = None,
    responses: PendingResponses | None = None,
    store: Store | None = None,
) -> Pipeline:
    """A pipeline with exactly the given features on (a missing service: that feature is off)."""
    services = Services(
        resolver,
        opa,
        tasks=tasks,
        sessions=sessions,
        approvals=approvals,
        minter=minter,
        shadow=shadow,
        responses=responses,
        store=store,
    )
    return build_pipeline(validate_config(dict(settings or {})), services)
