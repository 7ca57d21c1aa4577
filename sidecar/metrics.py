"""Prometheus metrics (module-level: one set per process)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

DECISIONS = Counter(
    "authz_decisions_total",
    "Decisions by verdict (allow, deny, step_up, error) and the stage that made them",
    ["verdict", "stage"],
)
DECISION_SECONDS = Histogram("authz_decision_seconds", "Time to answer one check request, end to end", buckets=_BUCKETS)
OPA_SECONDS = Histogram("authz_opa_seconds", "Time OPA took to answer one decision query", buckets=_BUCKETS)
OPA_ERRORS = Counter(
    "authz_opa_errors_total",
    "Decisions that failed closed because OPA gave no usable answer",
    ["kind"],
)
# Shadow mode (sidecar/shadow.py): the candidate policy's verdict beside the live one, never enforced.
SHADOW_AGREEMENTS = Counter(
    "authz_shadow_agreements_total", "Shadowed decisions where the candidate policy gave the live verdict", ["verdict"]
)
SHADOW_DISAGREEMENTS = Counter(
    "authz_shadow_disagreements_total",
    "Shadowed decisions where the candidate policy gave another verdict, by live and candidate verdict",
    ["live", "shadow"],
)
REFUSAL_REPORTS = Counter(
    "authz_refusal_reports_total",
    "Calls refused before the policy was asked, reported to OPA's decision log, by outcome: reported, "
    "busy (in-flight limit, not reported), timeout, unreachable, status, malformed",
    ["outcome"],
)
SHADOW_ERRORS = Counter(
    "authz_shadow_errors_total",
    "Decisions the candidate gave no verdict for: busy (in-flight limit, not asked), timeout, unreachable, "
    "status, malformed, undefined, shape",
    ["kind"],
)
# The AuthZEN PDP (sidecar/authzen/): questions PEPs asked, apart from the checks above.
AUTHZEN_EVALUATIONS = Counter(
    "authz_authzen_evaluations_total",
    "AuthZEN evaluations by verdict (allow, deny, error) and endpoint (evaluation, evaluations, search/action)",
    ["verdict", "endpoint"],
)
