"""The request path: a list of phases, top to bottom, folding into one decision.

read the request → identify → task grant → declared intent → approval on a retry → reserve the
call in its session → ask OPA → read its verdict (→ shadow) → deny | request an approval and
step up | mint the upstream credential, commit the session and allow.

In the ``opa-envoy-plugin`` profile (:func:`plugin_phases`) the list is the plugin's instead: read
the request as the plugin does → an optional identity → ask OPA → answer as the plugin answers.

:func:`build_pipeline` assembles the list from the config and the services; a feature that is
off has no phase in it (or a phase that refuses what only that feature could honour). The first
phase that answers ends the call. When the call does not go through, the pipeline undoes what
the phases registered (a session reservation, a consumed approval), then records and counts the
decision. Every failure ends in a deny or a 503; a bug in a phase is a 503, never an allow.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from sidecar import metrics, outcome
from sidecar.approvals import ApprovalService
from sidecar.call import Call
from sidecar.config import Config
from sidecar.credentials import CredentialMinter
from sidecar.input import CREDENTIAL_HEADERS
from sidecar.logs import DecisionRecord
from sidecar.mcp_response.pending import PendingResponses
from sidecar.opa import OpaClient
from sidecar.phases import Phase
from sidecar.phases.approval import RedeemApproval, RefuseApprovals, RequestApproval
from sidecar.phases.identity import Identify, Resolver
from sidecar.phases.intent import ReadIntent
from sidecar.phases.plugin import AnswerLikePlugin, AskPluginPolicy, OptionalIdentity, ReadPluginRequest
from sidecar.phases.policy import AskPolicy, ReadVerdict, ShadowPolicy
from sidecar.phases.request import ReadRequest
from sidecar.phases.response import ExpectResponse, ReadToolPin
from sidecar.phases.session import CommitSession, ReserveSession
from sidecar.phases.task import GrantVerifier, RefuseTaskGrants, VerifyTaskGrant
from sidecar.phases.verdict import Allow, Deny, MintCredential, RefuseCredentials, StepUp
from sidecar.refusals import RefusalReporter
from sidecar.request import CheckRequest
from sidecar.sessions import SessionTracker
from sidecar.shadow import Shadow
from sidecar.state import Store
from sidecar.tracing import annotate

log = logging.getLogger(__name__)
Observer = Callable[[DecisionRecord], None]


class Pipeline:
    """Decides one check request: framework-free, a CheckRequest in, a :class:`~sidecar.outcome.Decision` out."""

    def __init__(self, phases: Sequence[Phase], *, observers: Sequence[Observer] = ()) -> None:
        self.phases = tuple(phases)
        self._observers = tuple(observers)  # each sees every record: the decision log, refusal reports

    async def check(self, request: CheckRequest) -> outcome.Decision:
        started = time.perf_counter()
        call = Call(request, decision_id=str(uuid.uuid4()))
        decision, stage = await self._decide(call)
        if not decision.allowed:
            await call.roll_back()
        record = call.record(decision, stage, round((time.perf_counter() - started) * 1000, 3))
        metrics.DECISIONS.labels(record.verdict, record.stage).inc()
        metrics.DECISION_SECONDS.labels(record.verdict).observe(time.perf_counter() - started)
        for observe in self._observers:
            observe(record)
        return replace(decision, record=record)

    async def _decide(self, call: Call) -> tuple[outcome.Decision, str]:
        """The first phase's answer and its stage."""
        stage = "start"
        try:
            for phase in self.phases:
                stage = phase.stage
                decision = await phase.run(call)
                if decision is not None:
                    return decision, stage
            raise RuntimeError("no phase answered the call")
        except Exception:  # a bug must fail closed, never reach Envoy as a 500 without a record
            log.exception("check failed", extra={"decision_id": call.decision_id})
            return outcome.unavailable(
                "internal error in the authorization sidecar", decision_id=call.decision_id, rpc=None
            ), stage


@dataclass(frozen=True)
class Services:
    """What the request path uses; a feature whose service is absent (None) has no phase."""

    resolver: Resolver
    opa: OpaClient
    tasks: GrantVerifier | None = None
    sessions: SessionTracker | None = None
    approvals: ApprovalService | None = None
    minter: CredentialMinter | None = None
    shadow: Shadow | None = None
    refusals: RefusalReporter | None = None
    responses: PendingResponses | None = None  # the MCP response path is on: allowed MCP calls wait here
    store: Store | None = None  # pinned tool definitions (with ``responses``)


def build_phases(config: Config, services: Services) -> list[Phase]:
    """The request path, in order, for this config and these services."""
    if config.profile == "opa-envoy-plugin":
        return plugin_phases(config, services)
    task_header, approval_header = config.tasks.token_header, config.approvals.header
    tasks, sessions, approvals = services.tasks, services.sessions, services.approvals
    pins = services.store if services.responses is not None else None  # the MCP response path's tool pins
    phases: list[Phase] = [
        ReadRequest(
            allow_partial_body=config.request_body.allow_partial,
            body_buffer_limit=config.request_body.envoy_max_request_bytes,
            param_headers=pins is None,  # with pinned tools, ReadToolPin checks them by the tool's annotations
        ),
        Identify(services.resolver),
        VerifyTaskGrant(tasks, task_header) if tasks is not None else RefuseTaskGrants(task_header),
        ReadIntent(),
        RedeemApproval(approvals, approval_header) if approvals is not None else RefuseApprovals(approval_header),
    ]
    if sessions is not None:
        phases.append(ReserveSession(sessions))
    if pins is not None:
        phases.append(ReadToolPin(pins))
    phases += [
        AskPolicy(
            services.opa,
            hidden_headers=frozenset({config.identity.xfcc.secret_header}),
            credential_headers=CREDENTIAL_HEADERS | {task_header},
            approval_view=approvals is not None,
            body_once=config.opa.input_body == "once",
        ),
        ReadVerdict(),
    ]
    if services.shadow is not None:
        phases.append(ShadowPolicy(services.shadow))
    phases.append(Deny())
    if approvals is not None:
        phases.append(RequestApproval(approvals, approval_header))
    phases += [
        StepUp(),
        MintCredential(services.minter) if services.minter is not None else RefuseCredentials(),
    ]
    if sessions is not None:
        phases.append(CommitSession())
    if services.responses is not None and services.store is not None:
        phases.append(ExpectResponse(services.responses, services.store))
    phases.append(
        Allow(
            sidecar_headers=(task_header, approval_header),
            forward_jwt_svid=not config.identity.jwt_svid.strip_from_upstream,
        )
    )
    return phases


def plugin_phases(config: Config, services: Services) -> list[Phase]:
    """The opa-envoy-plugin profile: the plugin's input and result handling, identity optional;
    tasks, sessions, approvals and credentials are agent-profile features and have no phase."""
    return [
        ReadPluginRequest(
            services.opa,
            skip_body_parse=config.plugin.skip_request_body_parse,
            hidden_headers=frozenset({config.identity.xfcc.secret_header}),
            body_buffer_limit=config.request_body.envoy_max_request_bytes,
        ),
        OptionalIdentity(services.resolver),
        AskPluginPolicy(services.opa),
        AnswerLikePlugin(dry_run=config.plugin.dry_run),
    ]


def build_pipeline(config: Config, services: Services) -> Pipeline:
    """The pipeline for this config: the phases of :func:`build_phases`, observed by the decision
    log (``log.decisions``), the refusal reports (``opa.refusals_path``) and the trace's span."""
    observers: list[Observer] = [annotate]
    if config.log.decisions:
        observers.append(DecisionRecord.emit)
    if services.refusals is not None:
        observers.append(services.refusals.observe)
    return Pipeline(build_phases(config, services), observers=observers)
