"""The pipeline's shape: phases assembled in one builder, undo in one place, one record per decision."""

from __future__ import annotations

from typing import Any

from sidecar.call import Call
from sidecar.config import load_config
from sidecar.identity import IdentityResolver
from sidecar.opa_fake import FakeOpa, always
from sidecar.outcome import Decision
from sidecar.phases.approval import RedeemApproval, RefuseApprovals, RequestApproval
from sidecar.phases.policy import ShadowPolicy
from sidecar.phases.session import CommitSession, ReserveSession
from sidecar.phases.task import RefuseTaskGrants, VerifyTaskGrant
from sidecar.phases.verdict import MintCredential, RefuseCredentials
from sidecar.pipeline import Pipeline, Services, build_phases
from sidecar.request import CheckRequest

DEFAULTS = load_config(None, {})


def _kinds(phases: list[Any]) -> list[type]:
    return [type(p) for p in phases]


def test_a_disabled_feature_is_a_phase_that_is_not_in_the_list() -> None:
    resolver = IdentityResolver(DEFAULTS.identity, None, None)
    opa = FakeOpa(always(True))
    kinds = _kinds(build_phases(DEFAULTS, Services(resolver, opa)))
    for absent in (VerifyTaskGrant, RedeemApproval, RequestApproval, ReserveSession, CommitSession, ShadowPolicy):
        assert absent not in kinds, absent
    # What only a feature could honour is refused when it is off (never silently ignored).
    for refusing in (RefuseTaskGrants, RefuseApprovals, RefuseCredentials):
        assert refusing in kinds
    assert MintCredential not in kinds
    assert [p.stage for p in build_phases(DEFAULTS, Services(resolver, opa))][:2] == ["body", "identity"]


class _Reserves:
    stage = "session"

    def __init__(self, undone: list[str]) -> None:
        self.undone = undone

    async def run(self, call: Call) -> Decision | None:
        async def release() -> None:
            self.undone.append("released")

        call.on_failure(release, "could not release")
        return None


class _Breaks:
    stage = "opa"

    async def run(self, call: Call) -> Decision | None:
        raise KeyError("a bug")


async def test_a_bug_in_a_phase_fails_closed_and_the_work_of_earlier_phases_is_undone() -> None:
    undone: list[str] = []
    pipeline = Pipeline([_Reserves(undone), _Breaks()])
    decision = await pipeline.check(CheckRequest("GET", "/x", {"host": "h"}, b""))
    assert decision.verdict == "error" and decision.status == 503
    assert undone == ["released"], "undone exactly once, by the pipeline"
    assert decision.record is not None
    assert (decision.record.verdict, decision.record.stage, decision.record.status) == ("error", "opa", 503)


async def test_no_phase_answering_is_an_error_never_an_allow() -> None:
    undone: list[str] = []
    decision = await Pipeline([_Reserves(undone)]).check(CheckRequest("GET", "/x", {}, b""))
    assert decision.verdict == "error" and undone == ["released"]
