# Refusals the sidecar made before it asked the authorization policy.
#
# Query: data.agent.refusals.decision (the sidecar's opa.refusal_path, default
# agent/refusals/decision). The sidecar refuses some calls itself: an unreadable
# request line or body, no valid identity, a refused task grant or approval, a
# store it cannot reach. It reports each one here, after answering, so that OPA's
# decision log, which reviewers read, lists every refused call with the
# sidecar's decision id (input.refusal.decision_id) and its reasons. The answer
# is never enforced: the call has already been refused.
#
# input.refusal: {decision_id, stage, status, verdict ("deny" or "error"),
# reasons, method, host, path, request_id, agent (SPIFFE ID or null), task (id or null)}
package agent.refusals

default decision := {"verdict": "deny", "reasons": ["refused by the sidecar before the policy was asked"]}

decision := {"verdict": "deny", "reasons": input.refusal.reasons} if {
	is_array(input.refusal.reasons)
	count(input.refusal.reasons) > 0
}
