package agent.authz_test

import data.agent.authz

# Task grants, delegation and just-in-time credentials at call time.
# Helpers (request, tool_call, under, delegated, grant, ...) are in policy_test.rego.

no_task_reason(rule) := sprintf(`writes need a task grant: open one with POST /v1/tasks (rule %q)`, [rule])

# ---------------------------------------------------------------------------
# Writes need a task

test_write_without_task_is_denied if {
	decide(request(writer, "POST", "/api/tickets")) == {
		"verdict": "deny",
		"reasons": [`writes need a task grant: open one with POST /v1/tasks (rule "create ticket")`],
		"remember": [],
		"write": true,
	}
}

test_every_shipped_write_needs_a_task if {
	decide(request(writer, "DELETE", "/api/records/42")).reasons == [no_task_reason("delete record")]
	decide(request(writer, "POST", "/api/payments")).reasons == [no_task_reason("make payment")]
	decide(tool_call(writer, "create_ticket", {})).reasons == [no_task_reason("mcp tool create_ticket")]
	decide(tool_call(writer, "delete_record", {"id": "42"})).reasons == [no_task_reason("mcp tool delete_record")]
	decide(tool_call(writer, "send_email", {"to": "bob@demo.local"})).reasons == [no_task_reason("mcp tool send_email")]
}

# A deny, not a step-up: an approval does not stand in for a task.
test_approved_write_without_task_is_denied if {
	d := decide(object.union(request(writer, "DELETE", "/api/records/42"), approval("approved")))
	d.verdict == "deny"
	d.reasons == [no_task_reason("delete record")]
}

test_missing_task_field_counts_as_no_task if {
	decide(object.remove(request(writer, "POST", "/api/tickets"), {"task"})).reasons == [no_task_reason("create ticket")]
	decide(object.remove(request(reader, "GET", "/api/docs"), {"task"})).verdict == "allow"
}

test_reads_need_no_task if {
	decide(request(reader, "GET", "/api/docs")).verdict == "allow"
	decide(request(reader, "GET", "/api/records/1")).verdict == "allow"
	decide(tool_call(reader, "search_docs", {"query": "vpn"})).verdict == "allow"
	decide(tool_call(reader, "get_record", {"id": "1"})).verdict == "allow"
}

test_writes_without_task_when_not_required if {
	d := decide(request(writer, "POST", "/api/tickets")) with data.agent.config.tasks.require_for_writes as false
	d.verdict == "allow"
	d.credential == {"audience": "demo-upstream", "scopes": ["tickets:write"], "ttl_seconds": 60}
}

# Only the boolean true turns the requirement on (as for intent.require_for_writes).
test_require_for_writes_must_be_true if {
	decide(request(writer, "POST", "/api/tickets")).verdict == "allow" with data.agent.config.tasks.require_for_writes as "yes"
	decide(request(writer, "POST", "/api/tickets")).verdict == "allow" with data.agent.config.tasks.require_for_writes as null

	# Without a tasks section at all, nothing requires a task.
	decide(request(writer, "POST", "/api/tickets")).verdict == "allow" with data.agent.config.tasks as null
}

# ---------------------------------------------------------------------------
# Under a task, a call must fit one of its scopes

test_write_outside_the_task_scopes if {
	decide(under(request(writer, "POST", "/api/tickets"), ["docs:read", "tickets:read"])) == {
		"verdict": "deny",
		"reasons": ["task task-1 (purpose triage) does not grant scope tickets:write needed to create ticket"],
		"remember": [],
		"write": true,
	}
}

test_read_outside_the_task_scopes if {
	inp := under(request(reader, "GET", "/api/docs/runbook"), ["tickets:read"])
	decide(inp).reasons == ["task task-1 (purpose triage) does not grant scope docs:read needed to read docs"]
	decide(under(request(reader, "GET", "/api/tickets"), ["tickets:read"])).verdict == "allow"
}

test_tool_outside_the_task_scopes if {
	decide(under(tool_call(reader, "search_docs", {}), ["records:read"])).reasons == ["task task-1 (purpose triage) does not grant scope docs:read needed to mcp tool search_docs"]
	decide(under(tool_call(reader, "get_record", {"id": "1"}), ["records:read"])).verdict == "allow"
}

test_task_scopes_are_exact_strings if {
	every scopes in [["tickets:*"], ["TICKETS:WRITE"], ["tickets"], [], ["tickets:write "]] {
		decide(under(request(writer, "POST", "/api/tickets"), scopes)).verdict == "deny"
	}
}

test_the_right_scope_for_every_shipped_rule if {
	calls := [
		["docs:read", request(reader, "GET", "/api/docs")],
		["tickets:read", request(reader, "GET", "/api/tickets")],
		["records:read", request(reader, "GET", "/api/records/7")],
		["tickets:write", request(writer, "POST", "/api/tickets")],
		["records:delete", object.union(request(writer, "DELETE", "/api/records/7"), approval("approved"))],
		["payments:write", object.union(request(writer, "POST", "/api/payments"), acr_claims({"acr": "urn:demo:acr:mfa"}))],
		["docs:read", tool_call(reader, "search_docs", {})],
		["records:read", tool_call(reader, "get_record", {"id": "7"})],
		["tickets:write", tool_call(writer, "create_ticket", {})],
		["records:delete", object.union(tool_call(writer, "delete_record", {"id": "7"}), approval("approved"))],
		["email:send", tool_call(writer, "send_email", {"to": "bob@demo.local"})],
	]
	every call in calls {
		decide(under(call[1], [call[0]])).verdict == "allow"
		decide(under(call[1], [s | some s in all_scopes; s != call[0]])).verdict == "deny"
	}
}

all_scopes := ["docs:read", "tickets:read", "records:read", "tickets:write", "records:delete", "payments:write", "email:send"]

# Session set-up and discovery need no scope, whatever the task holds.
test_open_mcp_methods_under_a_task if {
	decide(under(request(reader, "GET", "/mcp"), ["docs:read"])).verdict == "allow"
	decide(under(request(reader, "DELETE", "/mcp"), [])).verdict == "allow"
	every method in ["initialize", "tools/list", "ping"] {
		decide(under(rpc_request(reader, method, null, {}), [])).verdict == "allow"
	}
}

# A task never widens: roles, the intent floor and step-ups still apply.
test_task_does_not_widen if {
	every_scope := under(request(reader, "DELETE", "/api/records/42"), all_scopes)
	decide(every_scope).reasons == [
		"agent spiffe://demo.local/agent/reader is read-only and may not delete record",
		"agent spiffe://demo.local/agent/reader may not delete record (needs role writer)",
	]
	low := object.union(under(request(writer, "POST", "/api/tickets"), ["tickets:write"]), {"intent": intent(0.1)})
	decide(low).verdict == "deny"
	decide(under(request(writer, "DELETE", "/api/records/42"), all_scopes)).verdict == "step_up"
	decide(under(request(writer, "POST", "/api/payments"), all_scopes)).step_up.kind == "acr"
	decide(under(tool_call(writer, "send_email", {"to": "eve@evil.example"}), all_scopes)).verdict == "step_up"
	decide(under(tool_call(writer, "format_disk", {}), all_scopes)).reasons == ["tool format_disk is not in the policy"]
}

test_task_with_odd_scopes_grants_nothing if {
	odd := object.union(request(writer, "POST", "/api/tickets"), {"task": object.union(grant([]), {"scopes": "tickets:write"})})
	decide(odd).reasons == ["task task-1 (purpose triage) does not grant scope tickets:write needed to create ticket"]
	number_scopes := under(request(writer, "POST", "/api/tickets"), [1, 2])
	decide(number_scopes).verdict == "deny"
}

test_task_without_id_or_purpose if {
	inp := object.union(request(writer, "POST", "/api/tickets"), {"task": {"scopes": [], "expires_at": 4102444800}})
	decide(inp).reasons == ["task (without id) (purpose (none)) does not grant scope tickets:write needed to create ticket"]
}

test_task_that_is_not_an_object if {
	decide(object.union(request(reader, "GET", "/api/docs"), {"task": "eyJhbGciOi..."})) == {
		"verdict": "deny",
		"reasons": ["input.task is neither null nor a task grant object (string)"],
		"remember": [],
		"write": false,
	}
	decide(object.union(request(reader, "GET", "/api/docs"), {"task": ["docs:read"]})).verdict == "deny"
}

# The sidecar refuses expired grants; the policy checks again.
test_expired_task if {
	inp := under(request(reader, "GET", "/api/docs"), ["docs:read"])
	decide(inp).verdict == "allow" with time.now_ns as 4102444799000000000
	decide(inp).reasons == ["task task-1 (purpose triage) is not active: it expires at 4102444800"] with time.now_ns as 4102444800000000000
	no_expiry := object.union(request(reader, "GET", "/api/docs"), {"task": object.remove(grant(["docs:read"]), {"expires_at"})})
	decide(no_expiry).reasons == ["task task-1 (purpose triage) is not active: it expires at null"]
}

# ---------------------------------------------------------------------------
# Delegation depth

test_delegated_call_within_the_limit if {
	one := delegated(under(request(reader, "GET", "/api/docs"), ["docs:read"]), [writer])
	decide(one).verdict == "allow"
	two := delegated(under(request(reader, "GET", "/api/docs"), ["docs:read"]), [ops, writer])
	decide(two).verdict == "allow"
}

test_delegation_too_deep if {
	chain := ["spiffe://demo.local/agent/ops/a", ops, writer]
	decide(delegated(under(request(reader, "GET", "/api/docs"), ["docs:read"]), chain)) == {
		"verdict": "deny",
		"reasons": ["agent spiffe://demo.local/agent/reader acts through a delegation chain of depth 3, deeper than the maximum of 2"],
		"remember": [],
		"write": false,
	}
}

test_delegation_depth_from_data if {
	inp := delegated(request(reader, "GET", "/api/docs"), [writer])
	decide(inp).reasons == ["agent spiffe://demo.local/agent/reader acts through a delegation chain of depth 1, deeper than the maximum of 0"] with data.agent.config.tasks.max_delegation_depth as 0
	decide(inp).verdict == "allow" with data.agent.config.tasks.max_delegation_depth as 1
}

# Without a usable maximum nothing delegated is allowed; undelegated calls still are.
test_delegation_depth_without_a_maximum if {
	inp := delegated(request(reader, "GET", "/api/docs"), [writer])
	decide(inp).verdict == "deny" with data.agent.config.tasks.max_delegation_depth as "2"
	decide(inp).verdict == "deny" with data.agent.config.tasks.max_delegation_depth as null
	decide(inp).verdict == "deny" with data.agent.config.tasks as null
	decide(request(reader, "GET", "/api/docs")).verdict == "allow" with data.agent.config.tasks as null
}

test_malformed_delegation if {
	reason := "input.delegation is not a delegation chain (a list of SPIFFE IDs and its length as depth): "
	decide(object.union(request(reader, "GET", "/api/docs"), {"delegation": {"chain": [writer], "depth": 0}})).reasons == [concat("", [reason, `{"chain": ["spiffe://demo.local/agent/writer"], "depth": 0}`])]
	decide(object.union(request(reader, "GET", "/api/docs"), {"delegation": {"chain": [7], "depth": 1}})).verdict == "deny"
	decide(object.union(request(reader, "GET", "/api/docs"), {"delegation": {"chain": writer, "depth": 1}})).verdict == "deny"
	decide(object.union(request(reader, "GET", "/api/docs"), {"delegation": null})).reasons == [concat("", [reason, "null"])]
	decide(object.remove(request(reader, "GET", "/api/docs"), {"delegation"})).reasons == [concat("", [reason, "null"])]
}

# ---------------------------------------------------------------------------
# Just-in-time credentials

test_credential_on_allow if {
	inp := object.union(under(request(writer, "POST", "/api/payments"), ["payments:write"]), acr_claims({"acr": "urn:demo:acr:mfa"}))
	decide(inp).credential == {"audience": "demo-upstream", "scopes": ["payments:write"], "ttl_seconds": 30}
	approved := object.union(under(tool_call(writer, "delete_record", {"id": "42"}), ["records:delete"]), approval("approved"))
	decide(approved).credential == {"audience": "demo-upstream", "scopes": ["records:delete"], "ttl_seconds": 60}
	decide(under(tool_call(writer, "create_ticket", {}), ["tickets:write"])).credential == {"audience": "demo-upstream", "scopes": ["tickets:write"], "ttl_seconds": 60}
}

test_no_credential_on_deny_or_step_up if {
	not decide(request(writer, "POST", "/api/tickets")).credential
	not decide(under(request(reader, "POST", "/api/tickets"), ["tickets:write"])).credential
	step_up := decide(under(request(writer, "DELETE", "/api/records/42"), ["records:delete"]))
	step_up.verdict == "step_up"
	not "credential" in object.keys(step_up)
	not "credential" in object.keys(decide(under(request(writer, "POST", "/api/payments"), ["payments:write"])))
}

test_no_credential_for_reads if {
	every inp in [
		request(reader, "GET", "/api/docs"),
		under(request(reader, "GET", "/api/records/1"), ["records:read"]),
		tool_call(reader, "search_docs", {}),
		rpc_request(reader, "initialize", null, {}),
		request(reader, "GET", "/mcp"),
	] {
		d := decide(inp)
		d.verdict == "allow"
		not "credential" in object.keys(d)
	}
}

test_credential_from_data if {
	routes := {"GET": [{"name": "export", "path": "/api/export", "class": "read", "scope": "export:read", "credential": {"audience": "warehouse", "ttl_seconds": 5}}]}
	decide(request(reader, "GET", "/api/export")) == {
		"verdict": "allow",
		"reasons": [`route "export" allows agent spiffe://demo.local/agent/reader to GET /api/export`],
		"headers": {"x-authz-rule": "export"},
		"remember": [],
		"write": false,
		"credential": {"audience": "warehouse", "scopes": ["export:read"], "ttl_seconds": 5},
	} with data.agent.config.routes as routes
}

test_credential_the_policy_cannot_mint if {
	bad := [
		{"scope": "export:read", "credential": {"ttl_seconds": 5}},
		{"scope": "export:read", "credential": {"audience": "", "ttl_seconds": 5}},
		{"scope": "export:read", "credential": {"audience": "warehouse", "ttl_seconds": 0}},
		{"scope": "export:read", "credential": {"audience": "warehouse", "ttl_seconds": 1.5}},
		{"scope": "export:read", "credential": {"audience": "warehouse", "ttl_seconds": "60"}},
		{"scope": "export:read", "credential": "warehouse"},
		{"credential": {"audience": "warehouse", "ttl_seconds": 5}},
	]
	every extra in bad {
		routes := {"GET": [object.union({"name": "export", "path": "/api/export", "class": "read"}, extra)]}
		decide(request(reader, "GET", "/api/export")).reasons == [`rule "export" has a credential the policy cannot mint (it needs a scope, an audience and a whole, positive ttl_seconds), so it allows nothing`] with data.agent.config.routes as routes
	}
}

test_invalid_scope_in_data if {
	every scope in [42, "", ["docs:read"]] {
		tools := {"search_docs": {"class": "read", "scope": scope}}
		decide(tool_call(reader, "search_docs", {})).reasons == [`rule "mcp tool search_docs" has an invalid scope (a non-empty string is expected), so it allows nothing`] with data.agent.config.mcp.tools as tools
	}
}

# ---------------------------------------------------------------------------
# The shipped data

test_every_route_and_tool_has_a_scope if {
	{route.name: route.scope | some method_routes in data.agent.config.routes; some route in method_routes} == {
		"read docs": "docs:read",
		"list tickets": "tickets:read",
		"read record": "records:read",
		"create ticket": "tickets:write",
		"delete record": "records:delete",
		"make payment": "payments:write",
	}
	{name: tool.scope | some name, tool in data.agent.config.mcp.tools} == {
		"search_docs": "docs:read",
		"get_record": "records:read",
		"create_ticket": "tickets:write",
		"delete_record": "records:delete",
		"send_email": "email:send",
	}
}

test_shipped_credentials if {
	{route.name: route.credential | some method_routes in data.agent.config.routes; some route in method_routes; route.credential} == {
		"create ticket": {"audience": "demo-upstream", "ttl_seconds": 60},
		"delete record": {"audience": "demo-upstream", "ttl_seconds": 60},
		"make payment": {"audience": "demo-upstream", "ttl_seconds": 30},
	}
	{name: tool.credential | some name, tool in data.agent.config.mcp.tools; tool.credential} == {
		"create_ticket": {"audience": "demo-upstream", "ttl_seconds": 60},
		"delete_record": {"audience": "demo-upstream", "ttl_seconds": 60},
		"send_email": {"audience": "demo-upstream", "ttl_seconds": 60},
	}
}

# Every shipped scope is grantable to some role and part of some purpose.
test_shipped_scopes_can_be_granted if {
	scopes := {route.scope | some method_routes in data.agent.config.routes; some route in method_routes} | {tool.scope | some tool in data.agent.config.mcp.tools}
	every scope in scopes {
		some role_scopes in data.agent.config.tasks.role_scopes
		scope in role_scopes
		some purpose in data.agent.config.tasks.purposes
		scope in purpose.scopes
	}
}

test_helper_valid_credential if {
	authz.valid_credential(null, null)
	authz.valid_credential({"audience": "a", "ttl_seconds": 1}, "s")
	not authz.valid_credential({"audience": "a", "ttl_seconds": 1}, null)
}
