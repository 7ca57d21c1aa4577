# Checks that apply to every rule: roles, writes, declared intent, sane rule data.
package agent.authz

# Every role a rule lists is required.
access_denies contains msg if {
	some role in rule.roles
	not role in agent_roles
	msg := sprintf("agent %s may not %s (needs role %v)", [agent_name, rule_action, role])
}

# A write needs a role whose can_write is true (data.agent.config.roles).
is_write if rule.class != "read"

can_write if {
	some role in agent_roles
	cfg.roles[role].can_write == true
}

# The checks below (and the write limits of session.rego, the task a write needs in
# task.rego) apply to writes only: a read skips them all in one step.
access_denies contains msg if {
	is_write
	some msg in write_denies
}

write_denies contains msg if {
	not can_write
	msg := sprintf("agent %s is read-only and may not %s", [agent_name, rule_action])
}

# The agent's declared intent is agent-asserted: it can only ever restrict.
intent := input.intent if is_object(input.intent)

write_denies contains msg if {
	is_number(intent.confidence)
	minimum := cfg.intent.min_confidence_for_writes
	is_number(minimum)
	intent.confidence < minimum
	msg := sprintf(
		"agent %s declared an intent confidence of %v, below the %v required for writes (%s)",
		[agent_name, intent.confidence, minimum, rule_action],
	)
}

write_denies contains msg if {
	cfg.intent.require_for_writes == true
	not intent
	msg := sprintf("agent %s declared no intent, but writes (%s) require one", [agent_name, rule_action])
}

# A human said no to this very request.
access_denies contains msg if {
	input.approval.status in {"denied", "rejected"}
	msg := sprintf("a human rejected this request (approval %v)", [object.get(input.approval, "id", "without id")])
}

# Rule data the policy cannot enforce allows nothing. A rule that passes every check
# at once (valid_rule, the common case) is not looked at reason by reason.
access_denies contains msg if {
	rule
	not valid_rule
	some msg in rule_data_denies
}

# valid_roles, valid_class and valid_redact written out, as they are asked on every call.
valid_rule if {
	is_array(rule.roles)
	valid_step_up(rule.step_up)
	is_string(rule.data_class)
	rule.data_class != ""
	is_array(rule.redact)
	valid_scope(rule.scope)
	valid_credential(rule.credential, rule.scope)
	every role in rule.roles {
		is_string(role)
	}
	every field in rule.redact {
		is_string(field)
		field != ""
	}
}

rule_data_denies contains msg if {
	not valid_roles(rule.roles)
	msg := sprintf("rule %q has invalid roles (a list of role names is expected), so it allows nothing", [rule.name])
}

rule_data_denies contains msg if {
	not valid_step_up(rule.step_up)
	msg := sprintf("rule %q has a step_up the policy cannot enforce, so it allows nothing", [rule.name])
}

rule_data_denies contains msg if {
	not valid_class(rule.data_class)
	msg := sprintf("rule %q has an invalid data_class (a non-empty string is expected), so it allows nothing", [rule.name])
}

rule_data_denies contains msg if {
	not valid_redact(rule.redact)
	msg := sprintf(
		"rule %q has an invalid redact (a list of argument names or JSON pointers is expected), so it allows nothing",
		[rule.name],
	)
}

valid_roles(roles) if {
	is_array(roles)
	every role in roles {
		is_string(role)
	}
}

valid_step_up(null)

valid_step_up(step_up) if {
	step_up.kind == "approval"
	whole_positive(object.get(step_up, "ttl_seconds", 1))
	is_string(object.get(step_up, "reason", ""))
	approvers := object.get(step_up, "approvers", {})
	is_object(approvers)
	valid_class(object.get(approvers, "data_class", "unclassified"))
}

valid_step_up(step_up) if {
	step_up.kind == "acr"
	is_array(step_up.acr_values)
	count(step_up.acr_values) > 0
	every value in step_up.acr_values {
		is_string(value)
		value != ""
	}
}

# Argument names or JSON pointers ("/..."): non-empty strings.
valid_redact(redact) if {
	is_array(redact)
	every field in redact {
		is_string(field)
		field != ""
	}
}

valid_class(class) if {
	is_string(class)
	class != ""
}
