# The task API's decision: may this agent open a task grant, or delegate part
# of its own task to another agent?
#
# Query: data.agent.tasks.decision. The sidecar asks it for POST /v1/tasks
# (operation "open") and POST /v1/tasks/{id}/delegate (operation "delegate");
# on allow it signs a task token with exactly the granted scopes and ttl.
# Permissions are data: data.agent.config.tasks (rego/agent/config/data.json).
#
# Order: identity denies, then malformed-request denies, then policy denies;
# the first non-empty group is the answer and lists all of its reasons.
# A grant only ever narrows: a task never holds a scope that its purpose, the
# holder's roles or (when delegated) its parent do not allow.
package agent.tasks

import data.agent.identity

cfg := data.agent.config

settings := cfg.tasks

# ---------------------------------------------------------------------------
# The decision document

# METADATA
# description: What the sidecar asks to open or delegate a task (tasks.decision_path).
# scope: document
# entrypoint: true
default decision := {
	"verdict": "deny",
	"reasons": ["the policy reached no decision for this task request, so it is denied"],
	"scopes": [],
	"ttl_seconds": 0,
}

decision := {
	"verdict": "deny",
	"reasons": sort(deny_reasons),
	"scopes": [],
	"ttl_seconds": 0,
} if {
	count(deny_reasons) > 0
}

decision := {
	"verdict": "allow",
	"reasons": array.concat([allow_reason], sort(allow_notes)),
	"scopes": sort(requested),
	"ttl_seconds": granted_ttl,
} if {
	count(deny_reasons) == 0
	count(requested) > 0
	granted_ttl > 0
}

deny_reasons := identity.denies if {
	count(identity.denies) > 0
} else := request_denies if {
	count(request_denies) > 0
} else := policy_denies

# ---------------------------------------------------------------------------
# Names used by every rule

agent_name := identity.agent_name

caller := identity.spiffe_id

operation := object.get(input, "operation", null)

delegating if operation == "delegate"

req := input.request if is_object(input.request)

purpose_name := req.purpose

requested := {scope | some scope in req.scopes}

purpose := settings.purposes[purpose_name] if is_object(settings.purposes[purpose_name])

purpose_scopes := {scope | some scope in purpose.scopes}

parent := input.parent if is_object(input.parent)

parent_scopes := {scope | some scope in parent.scopes}

delegate_to := input.delegate_to if is_string(input.delegate_to)

chain := input.delegation.chain

depth := input.delegation.depth

max_ttl := object.get(cfg, ["tasks", "max_ttl_seconds"], null)

# How many tasks the agent already has open, as the sidecar counts them: the
# tasks it opened or delegated that are active and unexpired, plus its other
# task requests in flight, never this one. A delegation counts against the
# delegator. So "at most N" denies once open_tasks >= N.
open_tasks := object.get(input, "open_tasks", null)

max_open := object.get(cfg, ["tasks", "max_open_per_agent"], null)

# Like agent.authz: without a configured maximum, no delegation at all.
max_depth := n if {
	n := settings.max_delegation_depth
	is_number(n)
} else := 0

now_seconds := time.now_ns() / 1000000000

# What is left of the parent task, in whole seconds.
parent_left := floor(parent.expires_at - now_seconds)

# What the reasons call the action.
doing := "open a task" if not delegating

doing := sprintf("delegate a task to %s", [delegate_to]) if delegating

task_name := sprintf("task %v (purpose %v)", [object.get(parent, "id", "(without id)"), parent.purpose])

# ---------------------------------------------------------------------------
# Is the request well formed (and the policy's own data usable)

request_denies contains msg if {
	not operation in {"open", "delegate"}
	msg := sprintf(`operation %v is neither "open" nor "delegate"`, [operation])
}

request_denies contains "the task request (input.request) is missing" if not req

request_denies contains msg if {
	req
	not non_empty_string(object.get(req, "purpose", null))
	msg := sprintf("agent %s asked for a task without a purpose (a non-empty string is expected)", [agent_name])
}

request_denies contains msg if {
	req
	not string_list(object.get(req, "scopes", null))
	msg := sprintf("agent %s asked for scopes %v; a list of scope names is expected", [agent_name, object.get(req, "scopes", null)])
}

request_denies contains msg if {
	string_list(req.scopes)
	count(req.scopes) == 0
	msg := sprintf(
		"agent %s asked for a task for purpose %v without scopes; a task needs at least one",
		[agent_name, object.get(req, "purpose", null)],
	)
}

request_denies contains msg if {
	req
	not whole_positive(object.get(req, "ttl_seconds", null))
	msg := sprintf(
		"agent %s asked for a ttl_seconds of %v; a task lasts a whole number of seconds above 0",
		[agent_name, object.get(req, "ttl_seconds", null)],
	)
}

request_denies contains msg if {
	not valid_delegation(object.get(input, "delegation", null))
	msg := sprintf(
		"input.delegation is not a delegation chain (a list of SPIFFE IDs and its length as depth): %v",
		[object.get(input, "delegation", null)],
	)
}

request_denies contains msg if {
	delegating
	not valid_parent
	msg := sprintf("agent %s may delegate only out of its own task, and the request carries none (parent)", [agent_name])
}

request_denies contains msg if {
	delegating
	not delegate_to
	msg := sprintf("agent %s asked to delegate without naming the delegate (delegate_to)", [agent_name])
}

request_denies contains "the policy sets no valid tasks.max_ttl_seconds, so it grants no task" if {
	not whole_positive(max_ttl)
}

request_denies contains msg if {
	max_open != null
	not whole_number(open_tasks)
	msg := sprintf(
		"the task request does not say how many tasks agent %s has open (input.open_tasks is %s), so the policy's cap cannot be checked",
		[agent_name, json.marshal(open_tasks)],
	)
}

valid_parent if {
	string_list(parent.scopes)
	is_string(parent.purpose)
	is_number(parent.expires_at)
}

valid_delegation(delegation) if {
	string_list(delegation.chain)
	delegation.depth == count(delegation.chain)
}

# ---------------------------------------------------------------------------
# Both operations: the purpose, its scopes, the depth of the chain

policy_denies contains msg if {
	not purpose
	msg := sprintf(
		"agent %s may not %s for purpose %v: the policy knows no such purpose (known purposes: %s)",
		[agent_name, doing, purpose_name, join(object.keys(object.get(settings, "purposes", {})))],
	)
}

policy_denies contains msg if {
	purpose
	outside := requested - purpose_scopes
	count(outside) > 0
	msg := sprintf(
		"agent %s may not %s for purpose %s with %s %s: the purpose covers only %s",
		[agent_name, doing, purpose_name, scope_word(outside), join(outside), join(purpose_scopes)],
	)
}

policy_denies contains msg if {
	depth > max_depth
	msg := sprintf(
		"agent %s may not %s: the new task would carry a delegation chain of depth %v, deeper than the maximum of %v",
		[agent_name, doing, depth, max_depth],
	)
}

# At most tasks.max_open_per_agent open tasks per agent: each task is a fresh
# session (its own write limit), so without a cap a new task would be a way
# around the limits. Absent or null: no cap.
policy_denies contains msg if {
	whole_number(max_open)
	whole_number(open_tasks)
	open_tasks >= max_open
	msg := sprintf(
		"agent %s may not %s: it already has %v open tasks, the most the policy allows per agent (%v); complete one first",
		[agent_name, doing, open_tasks, max_open],
	)
}

policy_denies contains msg if {
	max_open != null
	not whole_number(max_open)
	msg := sprintf(
		"tasks.max_open_per_agent in the policy data is not a whole number >= 0 (%v), so no task is granted",
		[max_open],
	)
}

# ---------------------------------------------------------------------------
# Opening a task: the caller's own roles decide

policy_denies contains msg if {
	not delegating
	purpose
	allowed_roles := {role | some role in object.get(purpose, "roles", [])}
	count(allowed_roles & identity.roles) == 0
	msg := sprintf(
		"agent %s may not open a task for purpose %s: that needs one of the roles %s, and the agent has %s",
		[agent_name, purpose_name, join(allowed_roles), role_list(identity.roles)],
	)
}

policy_denies contains msg if {
	not delegating
	missing := requested - grantable(identity.roles)
	count(missing) > 0
	msg := sprintf(
		"agent %s may not be granted %s %s for purpose %v: none of its roles (%s) grants %s",
		[agent_name, scope_word(missing), join(missing), purpose_name, role_list(identity.roles), them(missing)],
	)
}

# ---------------------------------------------------------------------------
# Delegating: the delegate, the chain, and nothing beyond the parent task

policy_denies contains msg if {
	delegating
	not identity.trusted(delegate_to)
	msg := sprintf(
		"agent %s may not delegate to %s: it is not a registered agent of a trusted domain",
		[agent_name, delegate_to],
	)
}

policy_denies contains msg if {
	delegating
	not delegation_allowed
	msg := sprintf(
		"agent %s may not delegate to %s (it may delegate to %s)",
		[agent_name, delegate_to, delegates_of_caller],
	)
}

delegation_allowed if {
	delegate_to != caller
	some pattern in settings.delegations[caller]
	is_string(pattern)
	glob.match(pattern, ["/"], delegate_to)
}

delegates_of_caller := join(settings.delegations[caller]) if {
	count(settings.delegations[caller]) > 0
} else := "nobody"

# An agent that is already in the chain would receive its own authority back.
policy_denies contains msg if {
	delegating
	delegate_to in chain
	msg := sprintf(
		"agent %s may not delegate to %s: that agent is already in the delegation chain (%s)",
		[agent_name, delegate_to, concat(" <- ", chain)],
	)
}

# The new grant's chain starts with the agent that delegates.
policy_denies contains msg if {
	delegating
	not chain_starts_with_caller
	msg := sprintf(
		"the delegation chain of the new task must start with the delegating agent %s, not %s",
		[agent_name, chain_head],
	)
}

chain_starts_with_caller if chain[0] == caller

chain_head := sprintf("%v", [chain[0]]) if count(chain) > 0

else := "an empty chain"

policy_denies contains msg if {
	delegating
	valid_parent
	purpose_name != parent.purpose
	msg := sprintf(
		"agent %s may not delegate a task for purpose %v out of %s: a delegated task keeps its parent's purpose",
		[agent_name, purpose_name, task_name],
	)
}

policy_denies contains msg if {
	delegating
	valid_parent
	widening := requested - parent_scopes
	count(widening) > 0
	msg := sprintf(
		"scope widening: agent %s may not delegate %s %s, which its %s does not hold (it holds %s)",
		[agent_name, scope_word(widening), join(widening), task_name, join(parent_scopes)],
	)
}

policy_denies contains msg if {
	delegating
	identity.trusted(delegate_to)
	roles := identity.roles_of(delegate_to)
	missing := requested - grantable(roles)
	count(missing) > 0
	msg := sprintf(
		"agent %s may not be granted %s %s for purpose %v: none of its roles (%s) grants %s",
		[delegate_to, scope_word(missing), join(missing), purpose_name, role_list(roles), them(missing)],
	)
}

policy_denies contains msg if {
	delegating
	valid_parent
	parent_left <= 0
	msg := sprintf(
		"agent %s may not delegate out of %s: it has no time left (it expires at %v)",
		[agent_name, task_name, parent.expires_at],
	)
}

# ---------------------------------------------------------------------------
# What is granted

# The ttl: never above the policy's maximum nor, when delegated, the parent's rest.
granted_ttl := min({req.ttl_seconds, max_ttl}) if not delegating

granted_ttl := min({req.ttl_seconds, max_ttl, parent_left}) if delegating

allow_reason := sprintf(
	"agent %s may open a task for purpose %s with %s %s for %v seconds",
	[agent_name, purpose_name, scope_word(requested), join(requested), granted_ttl],
) if {
	not delegating
}

allow_reason := sprintf(
	"agent %s may delegate a task for purpose %s with %s %s for %v seconds to agent %s (delegation depth %v)",
	[agent_name, purpose_name, scope_word(requested), join(requested), granted_ttl, delegate_to, depth],
) if {
	delegating
}

allow_notes contains msg if {
	granted_ttl < req.ttl_seconds
	granted_ttl == max_ttl
	msg := sprintf("the requested %v seconds were cut to the policy's maximum of %v", [req.ttl_seconds, max_ttl])
}

allow_notes contains msg if {
	delegating
	granted_ttl < req.ttl_seconds
	granted_ttl == parent_left
	msg := sprintf("the requested %v seconds were cut to the %v seconds left of %s", [req.ttl_seconds, parent_left, task_name])
}

# ---------------------------------------------------------------------------
# Helpers
#
# Note: "not f(x)" is never written with an x that may be undefined (that would
# make the whole rule undefined instead of true); such values go through
# object.get or a helper rule first.

# The scopes the roles may hold (data.agent.config.tasks.role_scopes).
grantable(roles) := {scope | some role in roles; some scope in settings.role_scopes[role]}

non_empty_string(s) if {
	is_string(s)
	s != ""
}

string_list(values) if {
	is_array(values)
	every value in values {
		non_empty_string(value)
	}
}

whole_positive(n) if {
	is_number(n)
	n > 0
	n == floor(n)
}

whole_number(n) if {
	is_number(n)
	n >= 0
	n == floor(n)
}

# A sorted, comma-separated list for reasons; never fails, whatever the values are.
join(values) := concat(", ", sort({sprintf("%v", [v]) | some v in values}))

role_list(roles) := join(roles) if count(roles) > 0

role_list(roles) := "no role" if count(roles) == 0

scope_word(scopes) := "scope" if count(scopes) == 1

scope_word(scopes) := "scopes" if count(scopes) != 1

them(scopes) := "it" if count(scopes) == 1

them(scopes) := "them" if count(scopes) != 1
