# Task grants, delegation and just-in-time upstream credentials.
#
# input.task is the caller's verified task grant or null: the sidecar checked
# its signature, expiry, revocation and that it belongs to the caller. A task
# only narrows: every other check still applies, and under a task a call must
# also fit one of the task's scopes. input.delegation is the verified chain of
# agents that delegated to the caller (chain[0] delegated to the caller).
package agent.authz

task := input.task if is_object(input.task)

# How reasons name the task.
task_id := sprintf("%v", [object.get(task, "id", "(without id)")])

task_purpose := sprintf("%v", [object.get(task, "purpose", "(none)")])

# The task grants this scope (a string; scopes are compared as exact strings).
task_grants(scope) if {
	is_array(task.scopes)
	scope in task.scopes
}

now_seconds := time.now_ns() / 1000000000

# Whole numbers from data, or a default that allows least.
max_delegation_depth := depth if {
	depth := cfg.tasks.max_delegation_depth
	is_number(depth)
} else := 0

# ---------------------------------------------------------------------------
# Is the task and delegation input judgeable (a request deny)

request_problems contains msg if {
	input.task != null
	not task
	msg := sprintf("input.task is neither null nor a task grant object (%v)", [type_name(input.task)])
}

request_problems contains msg if {
	not valid_delegation(object.get(input, "delegation", null))
	msg := sprintf(
		"input.delegation is not a delegation chain (a list of SPIFFE IDs and its length as depth): %v",
		[object.get(input, "delegation", null)],
	)
}

valid_delegation(delegation) if {
	is_array(delegation.chain)
	delegation.depth == count(delegation.chain)
	every id in delegation.chain {
		is_string(id)
	}
}

# ---------------------------------------------------------------------------
# Access denies

write_denies contains msg if {
	cfg.tasks.require_for_writes == true
	not task
	msg := sprintf(`writes need a task grant: open one with POST /v1/tasks (rule %q)`, [rule.name])
}

# Under a task (none: one step).
access_denies contains msg if {
	task
	some msg in task_denies
}

task_denies contains msg if {
	rule.scoped
	is_string(rule.scope)
	not task_grants(rule.scope)
	msg := sprintf(
		"task %s (purpose %s) does not grant scope %s needed to %s",
		[task_id, task_purpose, rule.scope, rule.name],
	)
}

# A route or tool without a scope cannot be covered by any task.
task_denies contains msg if {
	rule.scoped
	rule.scope == null
	msg := sprintf(
		"task %s (purpose %s) cannot cover %s: the rule names no scope",
		[task_id, task_purpose, rule.name],
	)
}

# Defence in depth: the sidecar already refuses expired grants.
task_denies contains msg if {
	not task_active
	msg := sprintf(
		"task %s (purpose %s) is not active: it expires at %v",
		[task_id, task_purpose, object.get(task, "expires_at", null)],
	)
}

task_active if {
	is_number(task.expires_at)
	now_seconds < task.expires_at
}

access_denies contains msg if {
	input.delegation.depth > max_delegation_depth
	msg := sprintf(
		"agent %s acts through a delegation chain of depth %v, deeper than the maximum of %v",
		[agent_name, input.delegation.depth, max_delegation_depth],
	)
}

# Rule data the policy cannot enforce allows nothing (see valid_rule in checks.rego).
rule_data_denies contains msg if {
	not valid_scope(rule.scope)
	msg := sprintf("rule %q has an invalid scope (a non-empty string is expected), so it allows nothing", [rule.name])
}

rule_data_denies contains msg if {
	not valid_credential(rule.credential, rule.scope)
	msg := sprintf(
		"rule %q has a credential the policy cannot mint (it needs a scope, an audience and a whole, positive ttl_seconds), so it allows nothing",
		[rule.name],
	)
}

valid_scope(null)

valid_scope(scope) if {
	is_string(scope)
	scope != ""
}

valid_credential(null, _)

valid_credential(credential, scope) if {
	is_string(scope)
	is_string(credential.audience)
	credential.audience != ""
	whole_positive(credential.ttl_seconds)
}

whole_positive(n) if {
	is_number(n)
	n > 0
	n == floor(n)
}

# ---------------------------------------------------------------------------
# The just-in-time credential of an allow: the sidecar mints a short JWT for
# the rule's audience, scoped to just this action, in place of the agent's own
# Authorization header.

credential_document := {"credential": {
	"audience": rule.credential.audience,
	"scopes": [rule.scope],
	"ttl_seconds": rule.credential.ttl_seconds,
}} if {
	rule.credential != null
} else := {}
