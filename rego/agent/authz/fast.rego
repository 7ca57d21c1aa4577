# The fast path: the common allow, decided in (nearly) one rule body.
#
# decision (policy.rego) is fast_allow when it is defined, else the full policy. fast_allow is
# defined only for a call the full policy allows, with the same document: a registered agent
# (exact ID), a request that passes request_denies' quick checks, a REST route or MCP tool with
# ordinary rule data (no hosts, no acr step-up, not external, a scope), every access check
# passing, and no step-up or an approved approval step-up. Any other call (every deny and
# step-up, an unusual input or rule) is decided by the full policy, which names the reasons.
# Each check here implies the full policy's; one that fails only means the full policy decides
# (tests/rego and fast_test.rego compare the two). OPA enters a rule body for about 13
# allocations, a function call about 10, `every` about 15: this is one body of builtins.
package agent.authz

fast_allow := object.union(
	{
		"verdict": "allow",
		"reasons": reasons,
		"headers": {"x-authz-rule": fast_rule.name},
		"remember": fast_remember(object.get(r, "remember", [])),
		"write": class != "read",
		"unread_input": unread_input,
	},
	credential,
) if {
	# the rule first: a deny or step-up (write without a task, external send) stops early
	r := fast_rule.rule
	object.get(r, "external", false) != true
	class := object.get(r, "class", "write")
	scope := r.scope
	is_string(scope)
	scope != ""
	fast_task_ok(input.task, scope)
	c := data.agent.config
	roles := c.agents[input.agent.spiffe_id].roles
	is_array(roles)
	limits := c.session
	fast_write_ok(class, roles, limits.max_writes)

	# identity (identity.denies' quick checks)
	id := input.agent.spiffe_id
	is_string(id)
	startswith(id, "spiffe://")
	td := split(id, "/")[2]
	td != ""
	input.agent.trust_domain == td
	td in c.trust_domains

	# request (request_denies' quick checks)
	input.truncated_body == false
	is_array(input.parsed_path)
	input.action.path == concat("/", array.concat([""], input.parsed_path))
	not regex.match(`//|/\.{0,2}$|/\.{1,2}/|[\\;]`, input.action.path)
	upper(input.action.method) == input.action.method
	input.delegation == {"chain": [], "depth": 0}
	readable_session_input
	readable_agent_history_input

	# the limits of session.rego, with whole numbers in data; a delegation depth >= 0
	object.get(input, ["session", "calls_last_minute"], -1) < limits.max_calls_per_minute
	limits.max_calls_per_minute == floor(limits.max_calls_per_minute)
	object.get(input, ["agent_history", "calls_last_minute"], -1) < limits.agent_max_calls_per_minute
	limits.agent_max_calls_per_minute == floor(limits.agent_max_calls_per_minute)
	c.tasks.max_delegation_depth >= 0

	rule_roles := object.get(r, "roles", [])
	is_array(rule_roles)
	every role in rule_roles {
		is_string(role)
		role in roles
	}
	data_class := object.get(r, "data_class", "unclassified")
	is_string(data_class)
	data_class != ""
	redact := object.get(r, "redact", [])
	is_array(redact)
	every field in redact {
		is_string(field)
		field != ""
	}
	reason := fast_allow_reason(fast_rule, input.agent.spiffe_id, input.action.method, input.action.path)
	reasons := fast_reasons(r, reason)
	credential := fast_credential(object.get(r, "credential", null), scope)
}

# The REST route (fast_route, rest.rego) or MCP tool (fast_tool, mcp.rego) of the call.
fast_rule := fast_route if {
	fast_route
} else := fast_tool

# The first reason of the allow (allow_reason, policy.rego), built once every check passed.
# Only input fields are passed, never input itself: `policy replay` (sidecar/policy/replay.py)
# treats a reference to the whole input as reading every field the decision log masked.
fast_allow_reason(rule, id, method, path) := sprintf("route %q allows agent %s to %v %v", [rule.name, id, method, path]) if {
	rule.route
} else := concat("", ["agent ", id, " may call tool ", rule.tool])

# No step-up and no approval, or an approval step-up that is approved. What the approver's view
# would cut (input.approval_view) matters only where an approval is needed (step_up.rego), so a
# call that needs none takes this path whatever its size.
fast_reasons(rule, reason) := [reason] if {
	object.get(rule, "step_up", null) == null
	object.get(input, "approval", null) == null
}

fast_reasons(rule, reason) := [reason, "a human approved this request"] if {
	step_up := rule.step_up
	step_up.kind == "approval"
	input.approval.status == "approved"

	# decided for exactly the class this rule asks approvers for (a higher one: the full policy)
	input.approval.approvers.data_class == object.get(step_up, ["approvers", "data_class"], rule.data_class)
	valid_step_up(step_up)
	object.get(input, "approval_view", null) == null
}

# No task, or a task that grants the scope and is active.
fast_task_ok(null, _)

fast_task_ok(task, scope) if {
	is_array(task.scopes)
	scope in task.scopes
	is_number(task.expires_at)
	now_seconds < task.expires_at # regal ignore:external-reference
}

# A read, or a write every write check allows: a role that can write, the declared
# intent's confidence, a task when writes need one, the session's write limit.
fast_write_ok("read", _, _)

fast_write_ok(class, roles, max_writes) if {
	class != "read"
	c := data.agent.config
	object.get(input, ["intent", "confidence"], c.intent.min_confidence_for_writes) >= c.intent.min_confidence_for_writes
	c.intent.require_for_writes == false
	fast_task_for_write(c.tasks.require_for_writes)
	object.get(input, ["session", "writes"], -1) < max_writes
	max_writes == floor(max_writes)
	some role in roles
	c.roles[role].can_write == true
}

fast_task_for_write(false)

fast_task_for_write(true) if is_object(input.task)

fast_remember([]) := []

fast_remember(labels) := sort({label | some label in labels; is_string(label)}) if labels != []

fast_credential(null, _) := {}

fast_credential(credential, scope) := {"credential": {
	"audience": credential.audience,
	"scopes": [scope],
	"ttl_seconds": credential.ttl_seconds,
}} if {
	is_string(credential.audience)
	credential.audience != ""
	whole_positive(credential.ttl_seconds)
}
