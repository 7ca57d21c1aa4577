package agent.authz_test

# fast.rego answers the common allow in one rule body; the full policy (full_decision) answers
# everything. Where fast_allow is defined the two must give the same document: these inputs
# are the allows fast_allow is meant for, and their neighbours one field away (a deny, a
# step-up or an input it leaves to the full policy). Every other test of decision also runs
# through it. Helpers are in policy_test.rego.

import data.agent.authz

fast_history := {"calls_last_minute": 2, "labels": {"pii_read": 1700000000}}

fast_inputs := [
	request(reader, "GET", "/api/docs/x"),
	request(reader, "HEAD", "/api/docs"),
	object.union(request(reader, "GET", "/api/records/7"), {"agent_history": fast_history}),
	object.union(request(reader, "GET", "/api/tickets"), session(["pii_read"])),
	under(request(writer, "POST", "/api/tickets"), ["tickets:write"]),
	object.union(under(request(writer, "POST", "/api/tickets"), ["tickets:write"]), {"intent": intent(0.9)}),
	object.union(under(request(writer, "POST", "/api/tickets"), ["tickets:write"]), {"intent": intent(0.1)}),
	object.union(under(request(writer, "POST", "/api/tickets"), ["tickets:write"]), {"intent": intent("high")}),
	object.union(under(request(writer, "POST", "/api/tickets"), ["tickets:write"]), {"session": session_state([], 10, 0)}),
	object.union(under(request(writer, "POST", "/api/tickets"), ["tickets:write"]), {"session": session_state([], 9, 119)}),
	object.union(under(request(writer, "POST", "/api/tickets"), ["tickets:write"]), {"session": session_state([], 9, 120)}),
	under(request(writer, "POST", "/api/tickets"), ["tickets:read"]),
	request(writer, "POST", "/api/tickets"),
	under(request(reader, "POST", "/api/tickets"), ["tickets:write"]),
	object.union(under(request(writer, "DELETE", "/api/records/7"), ["records:delete"]), approval("approved")),
	object.union(under(request(writer, "DELETE", "/api/records/7"), ["records:delete"]), approval("pending")),
	object.union(under(request(writer, "DELETE", "/api/records/7"), ["records:delete"]), approval("rejected")),
	under(request(writer, "DELETE", "/api/records/7"), ["records:delete"]),
	object.union(request(reader, "GET", "/api/docs/x"), approval("approved")),
	object.union(request(reader, "GET", "/api/docs/x"), approval("rejected")),
	under(request(writer, "POST", "/api/payments"), ["payments:write"]),
	tool_call(reader, "search_docs", {"q": "vpn"}),
	tool_call(reader, "get_record", {"id": "7"}),
	under(tool_call(reader, "get_record", {"id": "7"}), ["records:read"]),
	under(tool_call(writer, "create_ticket", {"title": "x"}), ["tickets:write"]),
	tool_call(writer, "create_ticket", {"title": "x"}),
	under(tool_call(writer, "send_email", {"to": "bob@demo.local"}), ["email:send"]),
	object.union(tool_call(reader, "search_docs", {"q": "vpn"}), {"mcp": {"tool_pin": "changed"}}),
	object.union(tool_call(reader, "search_docs", {"q": "vpn"}), {"mcp": {"tool_pin": "unchanged"}}),
	tool_call(reader, "no_such_tool", {}),
	rpc_request(reader, "tools/list", null, {}),
	request(reader, "GET", "/mcp"),
	request(reader, "GET", "/api/nothing"),
	request("spiffe://demo.local/agent/ops/backup", "GET", "/api/docs/x"),
	request("spiffe://demo.local/agent/nobody", "GET", "/api/docs/x"),
	delegated(request(reader, "GET", "/api/docs/x"), [writer]),
]

# The allows it is meant for do take it (a rewrite that stops them would only be slower).
fast_allowed := [0, 1, 2, 3, 4, 5, 7, 9, 14, 21, 22, 23, 24, 28]

test_fast_allow_is_the_full_decision if {
	every inp in fast_inputs {
		fast_agrees(inp)
	}
}

test_fast_allow_takes_the_common_allows if {
	every i in fast_allowed {
		authz.fast_allow with input as fast_inputs[i]
	}
}

test_fast_allow_with_unusual_rule_data_leaves_it_to_the_full_policy if {
	routes := {"GET": [
		{"name": "hosted", "path": "/api/docs/x", "hosts": ["other.local"], "roles": [], "scope": "docs:read"},
		{"name": "later", "path": "/api/docs/x", "class": "read", "roles": [], "scope": "docs:read", "remember": ["a", 7, "a"]},
	]}
	every inp in [request(reader, "GET", "/api/docs/x"), under(request(writer, "POST", "/api/tickets"), ["tickets:write"])] {
		fast_agrees(inp) with data.agent.config.routes as routes
		fast_agrees(inp) with data.agent.config.intent.require_for_writes as true
		fast_agrees(inp) with data.agent.config.tasks.require_for_writes as false
		fast_agrees(inp) with data.agent.config.session.max_writes as 2.5
		fast_agrees(inp) with data.agent.config.tasks.max_delegation_depth as -1
	}
	d := authz.decision with input as request(reader, "GET", "/api/docs/x") with data.agent.config.routes as routes
	d.headers["x-authz-rule"] == "later"
	d.remember == ["a"]
}

fast_agrees(inp) if {
	not authz.fast_allow with input as inp
}

fast_agrees(inp) if {
	f := authz.fast_allow with input as inp
	f == authz.full_decision with input as inp
}

# What the approver's view would cut matters only where an approval is needed: a large call that
# needs none takes the fast path; an approved one with cuts is left to the full policy.
cut_view := {"approval_view": {"cut": ["/arguments/q"], "cut_count": 1, "max_items": 20, "max_string": 1024}}

test_fast_allow_of_a_call_needing_no_approval_ignores_the_approvers_view if {
	inp := object.union(tool_call(reader, "search_docs", {"q": "vpn"}), cut_view)
	authz.fast_allow with input as inp
	fast_agrees(inp)
}

test_fast_allow_of_an_approved_call_with_cuts_leaves_it_to_the_full_policy if {
	approved := object.union(under(request(writer, "DELETE", "/api/records/7"), ["records:delete"]), approval("approved"))
	inp := object.union(approved, cut_view)
	not authz.fast_allow with input as inp
	fast_agrees(inp)
}
