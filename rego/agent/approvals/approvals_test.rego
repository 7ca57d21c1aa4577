package agent.approvals_test

import data.agent.approvals

# ---------------------------------------------------------------------------
# Building inputs

writer := "spiffe://demo.local/agent/writer"

assistant := "spiffe://demo.local/agent/assistant"

reader := "spiffe://demo.local/agent/reader"

service_id := "spiffe://demo.local/approval-service"

issuer := "https://idp.demo.local"

service := {"kind": "spiffe", "id": service_id, "claims": {}}

human(sub, groups) := {
	"kind": "oidc",
	"id": sprintf("%s#%s", [issuer, sub]),
	"claims": {"iss": issuer, "sub": sub, "groups": groups, "email": sprintf("%s@demo.local", [sub])},
}

alice := human("alice", ["security-approvers"])

bob := human("bob", ["team-leads", "developers"])

# A pending approval the writer asked for, delegated to it by nobody.
pending(data_class, approvers_class) := {
	"id": "apr-1",
	"agent": writer,
	"task_id": "task-1",
	"delegation_chain": [],
	"data_class": data_class,
	"approvers": {"data_class": approvers_class},
	"reasons": ["a human must approve before agent spiffe://demo.local/agent/writer may delete record"],
	"summary": {"method": "DELETE", "host": "tools.demo.local", "path": "/api/records/42"},
	"expires_at": 4102444800,
}

restricted := pending("restricted", "restricted")

ask(operation, who, what) := {"operation": operation, "approver": who, "approval": what}

decide(inp) := d if {
	d := approvals.decision with input as inp
}

# ---------------------------------------------------------------------------
# Allowed approvers

test_approval_service_approves_restricted if {
	decide(ask("approve", service, restricted)) == {
		"verdict": "allow",
		"reasons": ["approver spiffe://demo.local/approval-service may approve this request (approval apr-1, data class restricted): the policy lets it approve internal, restricted"],
	}
}

test_security_approver_approves_restricted if {
	decide(ask("approve", alice, restricted)) == {
		"verdict": "allow",
		"reasons": ["approver https://idp.demo.local#alice may approve this request (approval apr-1, data class restricted): its groups (security-approvers) let it approve internal, restricted"],
	}
}

test_team_lead_approves_internal if {
	decide(ask("approve", bob, pending("internal", "internal"))).reasons == ["approver https://idp.demo.local#bob may approve this request (approval apr-1, data class internal): its groups (team-leads) let it approve internal"]
}

test_groups_add_up if {
	both := human("carol", ["team-leads", "security-approvers", "nobody"])
	decide(ask("approve", both, restricted)).reasons == ["approver https://idp.demo.local#carol may approve this request (approval apr-1, data class restricted): its groups (security-approvers, team-leads) let it approve internal, restricted"]
}

test_reject_needs_the_same_right if {
	decide(ask("reject", alice, restricted)).reasons == ["approver https://idp.demo.local#alice may reject this request (approval apr-1, data class restricted): its groups (security-approvers) let it approve internal, restricted"]
	decide(ask("reject", bob, restricted)).reasons == ["approver https://idp.demo.local#bob may not reject this request (approval apr-1, data class restricted): its groups (team-leads) let it approve only internal"]
}

# ---------------------------------------------------------------------------
# Never the agent itself, never its delegation chain

test_agent_may_not_approve_its_own_request if {
	me := {"kind": "spiffe", "id": writer, "claims": {}}
	decide(ask("approve", me, restricted)) == {
		"verdict": "deny",
		"reasons": [
			"approver spiffe://demo.local/agent/writer may not approve its own request (approval apr-1, data class restricted)",
			"approver spiffe://demo.local/agent/writer may not approve this request (approval apr-1, data class restricted): it is not an approval service in the policy",
		],
	}
	decide(ask("reject", me, restricted)).verdict == "deny"
}

# Even an approval service may not approve a request it made itself.
test_approval_service_may_not_approve_its_own_request if {
	own := object.union(restricted, {"agent": service_id})
	decide(ask("approve", service, own)) == {
		"verdict": "deny",
		"reasons": ["approver spiffe://demo.local/approval-service may not approve its own request (approval apr-1, data class restricted)"],
	}
}

test_delegation_chain_may_not_approve if {
	delegated := object.union(restricted, {"agent": reader, "delegation_chain": [assistant, writer]})
	me := {"kind": "spiffe", "id": writer, "claims": {}}
	decide(ask("approve", me, delegated)).reasons == [
		"approver spiffe://demo.local/agent/writer is in the request's delegation chain, so it may not approve this request (approval apr-1, data class restricted)",
		"approver spiffe://demo.local/agent/writer may not approve this request (approval apr-1, data class restricted): it is not an approval service in the policy",
	]

	# Even when the data would let it approve.
	services := {writer: {"data_classes": ["restricted"]}}
	decide(ask("approve", me, delegated)).reasons == ["approver spiffe://demo.local/agent/writer is in the request's delegation chain, so it may not approve this request (approval apr-1, data class restricted)"] with data.agent.config.approvals.services as services
	decide(ask("approve", service, object.union(delegated, {"delegation_chain": [service_id]}))).verdict == "deny"
}

# ---------------------------------------------------------------------------
# Approvers lacking the data class

test_team_lead_may_not_approve_restricted if {
	decide(ask("approve", bob, restricted)) == {
		"verdict": "deny",
		"reasons": ["approver https://idp.demo.local#bob may not approve this request (approval apr-1, data class restricted): its groups (team-leads) let it approve only internal"],
	}
}

test_service_lacking_the_class if {
	decide(ask("approve", service, pending("confidential", "confidential"))).reasons == ["approver spiffe://demo.local/approval-service may not approve this request (approval apr-1, data class confidential): the policy lets it approve only internal, restricted"]
	decide(ask("approve", service, pending("unclassified", "unclassified"))).verdict == "deny"
}

test_service_without_classes if {
	services := {service_id: {"data_classes": "restricted"}}
	decide(ask("approve", service, restricted)).reasons == ["approver spiffe://demo.local/approval-service may not approve this request (approval apr-1, data class restricted): the policy lets it approve no data class"] with data.agent.config.approvals.services as services
}

test_unknown_service if {
	other := {"kind": "spiffe", "id": "spiffe://demo.local/other-service", "claims": {}}
	decide(ask("approve", other, restricted)).reasons == ["approver spiffe://demo.local/other-service may not approve this request (approval apr-1, data class restricted): it is not an approval service in the policy"]
}

# Services and groups are separate: a human's id is never looked up as a service,
# a service's claims never as groups.
test_kinds_do_not_mix if {
	decide(ask("approve", object.union(service, {"kind": "oidc"}), restricted)).reasons == ["approver spiffe://demo.local/approval-service may not approve this request (approval apr-1, data class restricted): its token has no groups claim (a list of group names)"]
	decide(ask("approve", object.union(alice, {"kind": "spiffe"}), restricted)).reasons == ["approver https://idp.demo.local#alice may not approve this request (approval apr-1, data class restricted): it is not an approval service in the policy"]
}

test_human_without_groups if {
	every groups in [null, "security-approvers", ["security-approvers", 7]] {
		decide(ask("approve", human("dave", groups), restricted)).reasons == ["approver https://idp.demo.local#dave may not approve this request (approval apr-1, data class restricted): its token has no groups claim (a list of group names)"]
	}
	no_claims := {"kind": "oidc", "id": "https://idp.demo.local#erin", "claims": null}
	decide(ask("approve", no_claims, restricted)).verdict == "deny"
}

test_human_in_no_approver_group if {
	every groups in [[], ["developers"]] {
		decide(ask("approve", human("dave", groups), restricted)).reasons == ["approver https://idp.demo.local#dave may not approve this request (approval apr-1, data class restricted): none of its groups is an approver group in the policy"]
	}
}

# A null data class needs an approver allowed for internal.
test_null_data_class_is_internal if {
	unclassified := object.union(pending(null, null), {"approvers": {}})
	decide(ask("approve", bob, unclassified)).reasons == ["approver https://idp.demo.local#bob may approve this request (approval apr-1, no data class (judged as internal)): its groups (team-leads) let it approve internal"]
	groups := {"team-leads": ["public"]}
	decide(ask("approve", bob, unclassified)).reasons == ["approver https://idp.demo.local#bob may not approve this request (approval apr-1, no data class (judged as internal)): its groups (team-leads) let it approve only public"] with data.agent.config.approvals.groups as groups
}

# The ratchet: the rule's class is internal, but approvers must be allowed restricted.
test_approvers_class_counts_too if {
	ratchet := pending("internal", "restricted")
	decide(ask("approve", bob, ratchet)).reasons == ["approver https://idp.demo.local#bob may not approve this request (approval apr-1, data class internal, approvers for restricted): its groups (team-leads) let it approve only internal"]
	decide(ask("approve", alice, ratchet)).verdict == "allow"
	decide(ask("approve", alice, object.union(ratchet, {"approvers": {"data_class": null}}))).verdict == "allow"
}

# ---------------------------------------------------------------------------
# Expired approvals (the sidecar refuses them first)

test_expired_approval if {
	decide(ask("approve", alice, restricted)).verdict == "allow" with time.now_ns as 4102444799000000000
	decide(ask("approve", alice, restricted)).reasons == ["approver https://idp.demo.local#alice may not approve this request (approval apr-1, data class restricted): the approval expired at 4102444800"] with time.now_ns as 4102444800000000000
}

# ---------------------------------------------------------------------------
# Malformed input

test_unknown_operation if {
	decide(ask("delete", alice, restricted)) == {
		"verdict": "deny",
		"reasons": [`operation "delete" is neither "approve" nor "reject"`],
	}
	decide(object.remove(ask("approve", alice, restricted), {"operation"})).reasons == [`operation null is neither "approve" nor "reject"`]
}

test_malformed_approver if {
	decide(ask("approve", null, restricted)).reasons == ["input.approver is not an object (null)"]
	decide(ask("approve", {"kind": "password", "id": ""}, restricted)).reasons == [
		`input.approver.id is not a non-empty string ("")`,
		`input.approver.kind is neither "spiffe" nor "oidc" ("password")`,
	]
	decide(ask("approve", {}, restricted)).reasons == [
		"input.approver.id is not a non-empty string (null)",
		`input.approver.kind is neither "spiffe" nor "oidc" (null)`,
	]
}

test_malformed_approval if {
	decide(ask("approve", alice, "apr-1")).reasons == ["input.approval is not an object (string)"]
	decide(ask("approve", alice, {})).reasons == [
		"input.approval.agent is not a non-empty string (null)",
		"input.approval.approvers is not an object (null)",
		"input.approval.delegation_chain is not a list of identities (null)",
		"input.approval.expires_at is not a number (null)",
		"input.approval.id is not a non-empty string (null)",
	]
	odd := object.union(restricted, {"delegation_chain": [writer, 7], "data_class": "", "approvers": {"data_class": 3}, "expires_at": "soon"})
	decide(ask("approve", alice, odd)).reasons == [
		"input.approval.approvers.data_class is neither null nor a non-empty string (3)",
		`input.approval.data_class is neither null nor a non-empty string ("")`,
		`input.approval.delegation_chain is not a list of identities (["spiffe://demo.local/agent/writer",7])`,
		`input.approval.expires_at is not a number ("soon")`,
	]
	decide(ask("approve", alice, object.union(restricted, {"approvers": ["restricted"]}))).reasons == [`input.approval.approvers is not an object (["restricted"])`]
}

test_empty_input_is_denied if {
	decide({}) == {
		"verdict": "deny",
		"reasons": [
			"input.approval is not an object (null)",
			"input.approver is not an object (null)",
			`operation null is neither "approve" nor "reject"`,
		],
	}
}

# ---------------------------------------------------------------------------
# Data

test_without_approvals_data_nobody_approves if {
	decide(ask("approve", service, restricted)).reasons == ["approver spiffe://demo.local/approval-service may not approve this request (approval apr-1, data class restricted): it is not an approval service in the policy"] with data.agent.config.approvals as null
	decide(ask("approve", alice, restricted)).reasons == ["approver https://idp.demo.local#alice may not approve this request (approval apr-1, data class restricted): none of its groups is an approver group in the policy"] with data.agent.config.approvals as null
}

test_odd_group_data_is_ignored if {
	groups := {"security-approvers": "restricted", "team-leads": ["internal", 7]}
	decide(ask("approve", alice, restricted)).reasons == ["approver https://idp.demo.local#alice may not approve this request (approval apr-1, data class restricted): none of its groups is an approver group in the policy"] with data.agent.config.approvals.groups as groups
	decide(ask("approve", bob, pending("internal", "internal"))).verdict == "allow" with data.agent.config.approvals.groups as groups
}

# Should every rule fail to produce an answer, the default still denies.
test_default_decision_is_a_deny if {
	decide(ask("approve", alice, restricted)) == {
		"verdict": "deny",
		"reasons": ["the policy reached no decision for this approval, so it is denied"],
	} with approvals.deny_reasons as set()
		with data.agent.config.approvals as null
}

test_every_answer_is_well_formed if {
	inputs := [
		{},
		ask("approve", service, restricted),
		ask("reject", bob, restricted),
		ask("approve", {"kind": "spiffe", "id": writer, "claims": {}}, restricted),
		ask("approve", alice, pending(null, null)),
		ask("approve", alice, {}),
	]
	every inp in inputs {
		d := decide(inp)
		object.keys(d) == {"verdict", "reasons"}
		d.verdict in {"allow", "deny"}
		count(d.reasons) > 0
		every reason in d.reasons {
			is_string(reason)
		}
	}
}
