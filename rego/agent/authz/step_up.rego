# Step-up: a human approval, or stronger authentication. Asked for only when
# nothing denies. The sidecar passes input.approval only when a verified
# approval matches this exact request.
package agent.authz

approved if {
	input.approval.status == "approved"
	approval_covers(object.get(input.approval, ["approvers", "data_class"], null))
}

# An approval was decided for a class of data (input.approval.approvers.data_class: the class the
# step-up asked approvers for, which decides who may approve). It covers what the request needs
# now when that is the same class or a less sensitive one of data.agent.config.data_classes. A
# need that rose after the approval (the session read restricted data before the retry) is not
# covered: the call steps up again, and a new approval is asked for the class it needs now.
approval_covers(class) if {
	needed := highest_class({need.data_class | some need in approval_needs})
	class_covers(class, needed)
}

class_covers(class, needed) if class == needed

class_covers(class, needed) if {
	class in known_classes
	class_rank(class) > class_rank(needed)
}

default_ttl := object.get(cfg, ["step_up_defaults", "approval_ttl_seconds"], 900)

default_max_age := object.get(cfg, ["step_up_defaults", "acr_max_age"], 300)

# What the request needs, whether or not it already has it.
approval_needs contains need if {
	rule.step_up.kind == "approval"
	need := {
		"kind": "approval",
		"reason": object.get(
			rule.step_up, "reason",
			sprintf("a human must approve before agent %s may %s", [agent_name, rule_action]),
		),
		"ttl_seconds": object.get(rule.step_up, "ttl_seconds", default_ttl),
		"data_class": object.get(rule.step_up, ["approvers", "data_class"], rule.data_class),
	}
}

# A rule that sends data out (external) needs what external_send_needs finds; any
# other rule skips those rules in one step.
approval_needs contains need if {
	rule.external == true
	some need in external_send_needs
}

# The ratchet: once this task read restricted data, sending anything out needs a human.
external_send_needs contains need if {
	count(restricted_labels_seen) > 0
	need := {
		"kind": "approval",
		"reason": sprintf(
			"agent %s already read restricted data in this task (%s); a human must approve before it may %s",
			[agent_name, join(restricted_labels_seen), rule_action],
		),
		"ttl_seconds": default_ttl,
		"data_class": "restricted",
	}
}

# The same when the agent read it in another session or task within the label
# window: a new task or Mcp-Session-Id forgets nothing (input.agent_history).
external_send_needs contains need if {
	count(restricted_labels_elsewhere) > 0
	need := {
		"kind": "approval",
		"reason": sprintf(
			"agent %s read restricted data (%s) in another session or task; a human must approve before it may %s",
			[agent_name, join(restricted_labels_elsewhere), rule_action],
		),
		"ttl_seconds": default_ttl,
		"data_class": "restricted",
	}
}

external_send_needs contains need if {
	count(outside_recipients) > 0
	need := {
		"kind": "approval",
		"reason": sprintf(
			"agent %s wants to %s for recipients outside %s (%s); a human must approve",
			[agent_name, rule_action, join(internal_domains), join(outside_recipients)],
		),
		"ttl_seconds": default_ttl,
		"data_class": rule.data_class,
	}
}

external_send_needs contains need if {
	count(recipients) == 0
	need := {
		"kind": "approval",
		"reason": sprintf(
			"agent %s wants to %s without a recipient the policy can check; a human must approve",
			[agent_name, rule_action],
		),
		"ttl_seconds": default_ttl,
		"data_class": rule.data_class,
	}
}

step_ups contains need if {
	not approved
	some need in approval_needs
}

step_ups contains need if {
	rule.step_up.kind == "acr"
	not acr_satisfied(rule.step_up)
	max_age := object.get(rule.step_up, "max_age", default_max_age)
	need := {
		"kind": "acr",
		"reason": object.get(
			rule.step_up, "reason",
			sprintf(
				"agent %s must authenticate with %s (at most %v seconds ago) to %s",
				[agent_name, concat(" or ", rule.step_up.acr_values), max_age, rule_action],
			),
		),
		"acr_values": rule.step_up.acr_values,
		"max_age": max_age,
	}
}

# The acr claim of the verified token is one of the accepted values and, when the
# token says when the user authenticated (auth_time), that is recent enough.
acr_satisfied(step_up) if {
	agent.claims.acr in step_up.acr_values
	not authenticated_too_long_ago(step_up)
}

authenticated_too_long_ago(step_up) if {
	is_number(agent.claims.auth_time)
	(time.now_ns() / 1000000000) - agent.claims.auth_time > object.get(step_up, "max_age", default_max_age)
}

# Reasons added to an allow that needed a step-up.
allow_notes contains "a human approved this request" if {
	approved
	count(approval_needs) > 0
}

allow_notes contains msg if {
	rule.step_up.kind == "acr"
	acr_satisfied(rule.step_up)
	msg := sprintf("agent %s authenticated with %v", [agent_name, agent.claims.acr])
}

# ---------------------------------------------------------------------------
# The step_up object of the decision. Stronger authentication comes first: the
# agent retries with a better token and is then asked for an approval if needed.

acr_needs contains need if {
	some need in step_ups
	need.kind == "acr"
}

open_approvals contains need if {
	some need in step_ups
	need.kind == "approval"
}

step_up_document := {
	"kind": "acr",
	"acr_values": need.acr_values,
	"max_age": need.max_age,
	"reason": need.reason,
} if {
	count(acr_needs) > 0
	need := sort(acr_needs)[0]
}

# data_class is the rule's own class (what the request touches); approvers.data_class
# the class approvers must be allowed for (the ratchet raises it to restricted).
# redact names what approvers must not see (validated in checks.rego).
step_up_document := {
	"kind": "approval",
	"ttl_seconds": min({need.ttl_seconds | some need in open_approvals}),
	"reason": concat("; ", sort({need.reason | some need in open_approvals})),
	"approvers": {"data_class": highest_class({need.data_class | some need in open_approvals})},
	"data_class": rule.data_class,
	"redact": sort({field | some field in rule.redact}),
} if {
	count(acr_needs) == 0
	count(open_approvals) > 0
}

# The most sensitive of some data classes (data.agent.config.data_classes lists
# them from least to most sensitive; a class it does not list counts as the most).
highest_class(classes) := class if {
	count(classes) == 1 # one class (the common case): it is the highest
	some class in classes
} else := max({c | some c in classes; class_rank(c) == top}) if {
	top := max({class_rank(c) | some c in classes})
}

class_rank(class) := min({i | some i, c in known_classes; c == class}) if class in known_classes

class_rank(class) := count(known_classes) if not class in known_classes

known_classes := object.get(cfg, "data_classes", [])

# ---------------------------------------------------------------------------
# Recipients of an external send

restricted_labels_seen contains label if {
	some label in input.session.labels
	label in cfg.restricted_labels
}

# A restricted label this session does not hold, recorded for the agent within the
# label window (input.agent_history, session.rego): looked up by label, so only the
# few restricted labels are visited, not every label the agent has.
restricted_labels_elsewhere contains label if {
	some label in cfg.restricted_labels
	not label in restricted_labels_seen
	in_label_window(agent_history.labels[label])
}

internal_domains := {d | some d in cfg.internal_email_domains}

# Every value of the rule's recipient arguments (a string or a list of strings).
recipients contains recipient if {
	some field in rule.recipient_arguments
	recipient := call_arguments[field]
	not is_array(recipient)
}

recipients contains recipient if {
	some field in rule.recipient_arguments
	is_array(call_arguments[field])
	some recipient in call_arguments[field]
}

outside_recipients contains sprintf("%v", [r]) if {
	some r in recipients
	not internal_address(r)
}

# A sorted, comma-separated list for reasons; never fails, whatever the values are.
join(values) := concat(", ", sort({sprintf("%v", [v]) | some v in values}))

# local@domain with exactly one "@" and a domain listed in internal_email_domains.
internal_address(address) if {
	is_string(address)
	parts := split(address, "@")
	count(parts) == 2
	parts[0] != ""
	lower(parts[1]) in internal_domains
}

# ---------------------------------------------------------------------------
# A human can only approve what they can see. The sidecar says what its
# approver's view of this request would cut (input.approval_view: JSON pointers
# into the approval summary, before redaction, at most 20, and cut_count of all
# of them; null when nothing would be cut). A cut inside a field the rule redacts
# hides nothing the approver could have seen; any other cut refuses the step-up.

access_denies contains msg if {
	input.approval_view != null # null (or absent): nothing would be cut
	count(open_approvals) > 0
	count(unshown_cuts) > 0
	msg := sprintf(
		"agent %s's request is too large to show an approver in full (%s would be cut), so no human is asked to approve it",
		[agent_name, join(unshown_cuts)],
	)
}

approval_view := input.approval_view if is_object(input.approval_view)

unshown_cuts contains cut if {
	some cut in approval_view.cut
	not redacted_cut(cut)
}

# Cuts counted but not listed cannot be checked against the redaction.
unshown_cuts contains sprintf("%v more", [approval_view.cut_count - count(approval_view.cut)]) if {
	approval_view.cut_count > count(approval_view.cut)
}

unshown_cuts contains "an unreadable input.approval_view" if {
	input.approval_view != null
	not readable_approval_view
}

readable_approval_view if {
	is_array(approval_view.cut)
	is_number(approval_view.cut_count)
	every cut in approval_view.cut {
		is_string(cut)
	}
}

# An argument name the rule redacts: /arguments/<name> and everything inside it.
redacted_cut(cut) if {
	some name in rule.redact
	not startswith(name, "/")
	within(cut, concat("/", ["", "arguments", replace(replace(name, "~", "~0"), "/", "~1")]))
}

# A JSON pointer into the body the rule redacts: /body<pointer> and everything inside it.
redacted_cut(cut) if {
	some pointer in rule.redact
	startswith(pointer, "/")
	within(cut, concat("", ["/body", pointer]))
}

within(cut, pointer) if cut == pointer

within(cut, pointer) if startswith(cut, concat("", [pointer, "/"]))

# A tool whose definition changed since the agent's session first listed it (the MCP
# response path pins definitions; input.mcp.tool_pin): a human approves the call, and
# with it the new definition, before the agent may use it (the "rug pull" defence).
approval_needs contains need if {
	tool
	rpc.tool_pin == "changed"
	need := {
		"kind": "approval",
		"reason": sprintf(
			"the definition of tool %s changed since agent %s's session first listed it; a human must approve it",
			[rpc.name, agent_name],
		),
		"ttl_seconds": default_ttl,
		"data_class": object.get(tool, "data_class", "restricted"),
	}
}
