# Who may approve (or reject) a pending step-up approval.
#
# Query: data.agent.approvals.decision. The sidecar asks it when an approver
# (an approval service, by its SPIFFE ID, or a human, by a verified OIDC token)
# approves or rejects a pending approval, and goes ahead only on allow. Who may
# approve what is data: data.agent.config.approvals (rego/agent/config/data.json).
#
# Order: malformed-input denies, then policy denies; the first non-empty group
# is the answer and lists all of its reasons. Rejecting needs the same right as
# approving. The agent that asked, and every agent in its delegation chain,
# may never decide its own request.
package agent.approvals

cfg := data.agent.config

# data.agent.config.approvals; absent or not an object: nobody may approve.
settings := s if {
	s := cfg.approvals
	is_object(s)
} else := {}

# ---------------------------------------------------------------------------
# The decision document

# METADATA
# description: What the sidecar asks before an approver decides (approvals.decision_path).
# scope: document
# entrypoint: true
default decision := {
	"verdict": "deny",
	"reasons": ["the policy reached no decision for this approval, so it is denied"],
}

decision := {"verdict": "deny", "reasons": sort(deny_reasons)} if {
	count(deny_reasons) > 0
}

decision := {"verdict": "allow", "reasons": [allow_reason]} if {
	count(deny_reasons) == 0
}

deny_reasons := request_denies if {
	count(request_denies) > 0
} else := policy_denies

# ---------------------------------------------------------------------------
# Names used by every rule

operation := object.get(input, "operation", null)

approver := input.approver if is_object(input.approver)

approval := input.approval if is_object(input.approval)

approvers := object.get(approval, "approvers", null)

# A null data_class is judged as internal.
data_class := approval.data_class if {
	is_string(approval.data_class)
} else := "internal"

# The class approvers must be allowed for, when the step-up named one.
approvers_class := approvers.data_class if is_string(approvers.data_class)

# Every class the approver must be allowed for. The comprehension turns an
# undefined approvers_class into the empty set.
# regal ignore:pointless-reassignment
required_classes := {data_class} | {c | c := approvers_class}

# How reasons name the approval: "approval apr-1, data class restricted".
approval_label := sprintf("approval %s, %s%s", [approval.id, class_label, approvers_label])

class_label := sprintf("data class %s", [approval.data_class]) if {
	is_string(approval.data_class)
} else := "no data class (judged as internal)"

approvers_label := sprintf(", approvers for %s", [approvers_class]) if {
	approvers_class != data_class
} else := ""

# "approver <id> may not approve this request (approval apr-1, data class restricted)"
denied_prefix := sprintf("approver %s may not %s this request (%s)", [approver.id, operation, approval_label])

now_seconds := time.now_ns() / 1000000000

# ---------------------------------------------------------------------------
# Is the input well formed

request_denies contains msg if {
	not operation in {"approve", "reject"}
	msg := sprintf(`operation %s is neither "approve" nor "reject"`, [json.marshal(operation)])
}

request_denies contains msg if {
	not approver
	msg := sprintf("input.approver is not an object (%s)", [type_name(object.get(input, "approver", null))])
}

request_denies contains msg if {
	approver
	not object.get(approver, "kind", null) in {"spiffe", "oidc"}
	msg := sprintf(`input.approver.kind is neither "spiffe" nor "oidc" (%s)`, [json.marshal(object.get(approver, "kind", null))])
}

request_denies contains msg if {
	approver
	not non_empty_string(object.get(approver, "id", null))
	msg := sprintf("input.approver.id is not a non-empty string (%s)", [json.marshal(object.get(approver, "id", null))])
}

request_denies contains msg if {
	not approval
	msg := sprintf("input.approval is not an object (%s)", [type_name(object.get(input, "approval", null))])
}

request_denies contains msg if {
	approval
	some field in ["id", "agent"]
	not non_empty_string(object.get(approval, field, null))
	msg := sprintf("input.approval.%s is not a non-empty string (%s)", [field, json.marshal(object.get(approval, field, null))])
}

request_denies contains msg if {
	approval
	not string_list(object.get(approval, "delegation_chain", null))
	msg := sprintf(
		"input.approval.delegation_chain is not a list of identities (%s)",
		[json.marshal(object.get(approval, "delegation_chain", null))],
	)
}

request_denies contains msg if {
	approval
	not optional_class(object.get(approval, "data_class", null))
	msg := sprintf(
		"input.approval.data_class is neither null nor a non-empty string (%s)",
		[json.marshal(object.get(approval, "data_class", null))],
	)
}

request_denies contains msg if {
	approval
	not is_object(approvers)
	msg := sprintf("input.approval.approvers is not an object (%s)", [json.marshal(approvers)])
}

request_denies contains msg if {
	is_object(approvers)
	not optional_class(object.get(approvers, "data_class", null))
	msg := sprintf(
		"input.approval.approvers.data_class is neither null nor a non-empty string (%s)",
		[json.marshal(object.get(approvers, "data_class", null))],
	)
}

request_denies contains msg if {
	approval
	not is_number(object.get(approval, "expires_at", null))
	msg := sprintf("input.approval.expires_at is not a number (%s)", [json.marshal(object.get(approval, "expires_at", null))])
}

non_empty_string(s) if {
	is_string(s)
	s != ""
}

string_list(values) if {
	is_array(values)
	every value in values {
		is_string(value)
	}
}

optional_class(null)

optional_class(class) if non_empty_string(class)

# ---------------------------------------------------------------------------
# Who the approver is, and which data classes the policy lets it approve

# An approval service: its exact SPIFFE ID is a key of approvals.services.
service := settings.services[approver.id] if {
	approver.kind == "spiffe"
	is_object(settings.services[approver.id])
}

# A human: the groups claim of its verified token, a list of group names.
claimed_groups := {g | some g in approver.claims.groups} if {
	approver.kind == "oidc"
	string_list(approver.claims.groups)
}

# The claimed groups the policy knows (keys of approvals.groups).
approver_groups contains g if {
	some g in claimed_groups
	is_array(settings.groups[g])
}

allowed_classes := {c | some c in service.data_classes; is_string(c)} if service

allowed_classes := {c | some g in approver_groups; some c in settings.groups[g]; is_string(c)} if {
	count(approver_groups) > 0
}

# Why the approver holds those classes, for reasons.
grant_source := "the policy lets it approve" if service

grant_source := sprintf("its groups (%s) let it approve", [concat(", ", sort(approver_groups))]) if {
	count(approver_groups) > 0
}

allow_reason := sprintf("approver %s may %s this request (%s): %s %s", [
	approver.id, operation, approval_label,
	grant_source, concat(", ", sort(allowed_classes)),
])

# ---------------------------------------------------------------------------
# Policy denies

policy_denies contains msg if {
	approver.id == approval.agent
	msg := sprintf("approver %s may not %s its own request (%s)", [approver.id, operation, approval_label])
}

policy_denies contains msg if {
	approver.id in approval.delegation_chain
	msg := sprintf(
		"approver %s is in the request's delegation chain, so it may not %s this request (%s)",
		[approver.id, operation, approval_label],
	)
}

policy_denies contains msg if {
	approver.kind == "spiffe"
	not service
	msg := sprintf("%s: it is not an approval service in the policy", [denied_prefix])
}

policy_denies contains msg if {
	approver.kind == "oidc"
	not claimed_groups
	msg := sprintf("%s: its token has no groups claim (a list of group names)", [denied_prefix])
}

policy_denies contains msg if {
	claimed_groups
	count(approver_groups) == 0
	msg := sprintf("%s: none of its groups is an approver group in the policy", [denied_prefix])
}

policy_denies contains msg if {
	allowed_classes
	count(required_classes - allowed_classes) > 0
	msg := sprintf("%s: %s %s", [denied_prefix, grant_source, allowed_label])
}

allowed_label := "no data class" if {
	count(allowed_classes) == 0
} else := sprintf("only %s", [concat(", ", sort(allowed_classes))])

# Defence in depth: the sidecar already refuses expired approvals.
policy_denies contains msg if {
	now_seconds >= approval.expires_at
	msg := sprintf("%s: the approval expired at %v", [denied_prefix, approval.expires_at])
}
