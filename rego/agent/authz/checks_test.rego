package agent.authz_test

# checks.rego: checks that apply to every rule. The approval statuses a human's "no" can
# arrive with ("rejected" from the sidecar's approvals API, "denied" from approval services
# that say it that way) are covered here; the other checks in policy_test.rego.
# Helpers (request, under, approval, decide, ...) are in policy_test.rego.

delete_record := under(request(writer, "DELETE", "/api/records/42"), ["records:delete"])

test_denied_approval_denies if {
	d := decide(object.union(delete_record, approval("denied")))
	d == {
		"verdict": "deny",
		"reasons": ["a human rejected this request (approval apr-1)"],
		"remember": [],
		"write": true,
	}
}

# A "no" denies even a call that needs no approval at all, and names a missing id.
test_denied_approval_denies_what_would_be_allowed if {
	allowed := request(reader, "GET", "/api/docs/handbook")
	decide(allowed).verdict == "allow"
	decide(object.union(allowed, {"approval": {"status": "denied"}})).reasons == ["a human rejected this request (approval without id)"]
}
