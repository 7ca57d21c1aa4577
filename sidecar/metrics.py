"""Prometheus metrics (module-level: one set per process)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

DECISIONS = Counter(
    "authz_decisions_total",
    "Decisions by verdict (allow, deny, step_up, error) and the stage that made them",
    ["verdict", "stage"],
)
DECISION_SECONDS = Histogram(
    "authz_decision_seconds",
    "Time to answer one check request, end to end, by verdict (allow, deny, step_up, error)",
    ["verdict"],
    buckets=_BUCKETS,
)
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

# -- what an operator alerts on (README "What to alert on", observability/) --------------------------
VERDICTS = ("allow", "deny", "step_up", "error")
# The state store (sidecar/state/instrumented.py): every operation, timed; failures are StoreErrors
# (backend unreachable or failing: the call was answered 503), not refusals such as a conflict.
STORE_SECONDS = Histogram(
    "authz_state_store_seconds", "Time one state-store operation took, by operation", ["operation"], buckets=_BUCKETS
)
STORE_ERRORS = Counter(
    "authz_state_store_errors_total",
    "State-store operations that failed (backend unreachable or failing; the caller got a 503), by operation",
    ["operation"],
)
# Identity (sidecar/identity/): credentials presented but refused, by the source that refused them;
# ``none``: no identity where one is required; ``mismatch``: sources naming different SPIFFE IDs.
IDENTITY_SOURCES = ("xfcc", "jwt_svid", "pod", "none", "mismatch")
IDENTITY_FAILURES = Counter(
    "authz_identity_failures_total",
    "Identity checks that failed (a 401), by source: xfcc, jwt_svid, pod, none (nothing presented), "
    "mismatch (sources naming different SPIFFE IDs)",
    ["source"],
)
TASKS_OPENED = Counter("authz_tasks_opened_total", "Task grants issued, by kind (open, delegate)", ["kind"])
TASKS_ENDED = Counter(
    "authz_tasks_ended_total", "Tasks ended by a completion, each delegated task revoked with it included"
)
APPROVALS_REQUESTED = Counter("authz_approvals_requested_total", "Pending approvals created by a step-up")
APPROVALS_DECIDED = Counter(
    "authz_approvals_decided_total", "Approvals decided by an approver, by decision (approved, rejected)", ["decision"]
)
APPROVALS_PENDING = Gauge(
    "authz_approvals_pending",
    "Unexpired approvals waiting for an approver (read from the state store at scrape time; shared by replicas)",
)
# The policy (OPA's Status API, read at scrape time): which revision decides, and since when.
BUNDLE_INFO = Gauge("authz_bundle_info", "The active policy bundle revision (always 1)", ["bundle", "revision"])
BUNDLE_AGE = Gauge(
    "authz_bundle_age_seconds", "Seconds since OPA activated the active revision of each bundle", ["bundle"]
)
BUNDLE_CHECK_AGE = Gauge(
    "authz_bundle_last_success_age_seconds",
    "Seconds since OPA last fetched or confirmed each bundle from its bundle service (absent for local bundles)",
    ["bundle"],
)
STATUS_SCRAPE_ERRORS = Counter(
    "authz_status_errors_total",
    "Scrapes where the policy engine or the state store could not say (bundle status, pending approvals)",
    ["source"],
)


def _initialise() -> None:
    """Every known label value at zero, so rates and absence alerts work before the first event."""
    for verdict in VERDICTS:
        DECISION_SECONDS.labels(verdict)
    for source in IDENTITY_SOURCES:
        IDENTITY_FAILURES.labels(source)
    for kind in ("open", "delegate"):
        TASKS_OPENED.labels(kind)
    for decision in ("approved", "rejected"):
        APPROVALS_DECIDED.labels(decision)
    for source in ("opa", "store"):
        STATUS_SCRAPE_ERRORS.labels(source)


_initialise()
