package authzen_test

import data.authzen

reader := "spiffe://demo.local/agent/reader"

writer := "spiffe://demo.local/agent/writer"

route(agent, method, path) := {
	"subject": {"type": "agent", "id": agent},
	"action": {"name": method},
	"resource": {"type": "route", "id": path, "properties": {"host": "tools.demo.local"}},
	"context": {},
}

tool(agent, name, arguments) := {
	"subject": {"type": "agent", "id": agent},
	"action": {"name": name, "properties": {"arguments": arguments}},
	"resource": {"type": "mcp_server", "id": "/mcp"},
	"context": {},
}

test_route_allowed_by_the_check_rules if {
	answer := authzen.decision with input as route(reader, "GET", "/api/docs/handbook")
	answer.decision == true
	answer.context.verdict == "allow"
	answer.context.reasons == ["route \"read docs\" allows agent spiffe://demo.local/agent/reader to GET /api/docs/handbook"]
}

test_route_denied_with_the_check_reasons if {
	answer := authzen.decision with input as route(reader, "POST", "/api/tickets")
	answer.decision == false
	answer.context.verdict == "deny"
	count(answer.context.reasons) > 0
}

test_unknown_route_is_denied if {
	answer := authzen.decision with input as route(reader, "GET", "/nowhere")
	answer == {"decision": false, "context": {"verdict": "deny", "reasons": ["no rule allows GET /nowhere"]}}
}

test_read_tool_allowed if {
	answer := authzen.decision with input as tool(reader, "search_docs", {"query": "vpn"})
	answer.decision == true
	answer.context.reasons[0] == "agent spiffe://demo.local/agent/reader may call tool search_docs"
}

test_write_tool_needs_a_task if {
	answer := authzen.decision with input as tool(writer, "create_ticket", {"title": "x"})
	answer.decision == false
	answer.context.reasons == ["writes need a task grant: open one with POST /v1/tasks (rule \"mcp tool create_ticket\")"]
}

test_unknown_tool_denied if {
	answer := authzen.decision with input as tool(writer, "rm_rf", {})
	answer == {"decision": false, "context": {"verdict": "deny", "reasons": ["tool rm_rf is not in the policy"]}}
}

test_not_a_spiffe_id_denied_by_identity_rules if {
	answer := authzen.decision with input as route("alice", "GET", "/api/docs/handbook")
	answer.decision == false
	"agent alice does not have a valid SPIFFE ID" in answer.context.reasons
}

test_unregistered_agent_denied if {
	answer := authzen.decision with input as route("spiffe://demo.local/agent/nobody", "GET", "/api/docs/handbook")
	answer.decision == false
	answer.context.reasons == ["agent spiffe://demo.local/agent/nobody is not registered in the policy"]
}

test_other_subject_type_is_not_answered if {
	question := object.union(route(reader, "GET", "/api/docs/handbook"), {"subject": {"type": "user", "id": reader}})
	answer := authzen.decision with input as question
	answer.decision == false
	answer.context.reasons == ["subject type user is not answered here; this policy answers questions about agents (type agent)"]
}

test_other_resource_type_and_bad_path_are_not_answered if {
	question := object.union(route(reader, "GET", "/api"), {"resource": {"type": "todo", "id": "a?b"}})
	answer := authzen.decision with input as question
	answer.decision == false
	answer.context.reasons == [
		"resource id a?b is not a path (it starts with / and has no query or fragment)",
		"resource type todo is not answered here (route or mcp_server)",
	]
}

test_incomplete_input_is_denied if {
	answer := authzen.decision with input as {}
	answer == {"decision": false, "context": {"verdict": "deny", "reasons": ["the AuthZEN input is incomplete"]}}
}

test_check_input_for_a_tool_is_an_mcp_call if {
	check := authzen.check_input with input as tool(writer, "create_ticket", {"title": "x"})
	check.action == {"method": "POST", "host": "", "path": "/mcp", "read_only": false}
	check.mcp.name == "create_ticket"
	check.parsed_body.params == {"name": "create_ticket", "arguments": {"title": "x"}}
	check.agent == {
		"spiffe_id": writer, "trust_domain": "demo.local", "path": "/agent/writer",
		"identity_source": "authzen", "claims": {},
	}
	check.task == null
}

test_check_input_for_a_route_has_no_body if {
	check := authzen.check_input with input as route(reader, "HEAD", "/api/docs/a/b")
	check.parsed_path == ["api", "docs", "a", "b"]
	check.action.read_only == true
	check.mcp == null
	check.parsed_body == null
}

test_action_candidates_for_routes_are_the_route_methods if {
	found := authzen.actions with input as {"subject": {"type": "agent", "id": reader}, "resource": {"type": "route", "id": "/"}}
	{"name": "GET"} in found
	{"name": "POST"} in found
}

test_action_candidates_for_an_mcp_server_are_its_tools if {
	found := authzen.actions with input as {"subject": {"type": "agent", "id": reader}, "resource": {"type": "mcp_server", "id": "/mcp"}}
	{"name": "search_docs"} in found
	{"name": "create_ticket"} in found
}

test_no_action_candidates_for_other_resources if {
	found := authzen.actions with input as {"subject": {"type": "agent", "id": reader}, "resource": {"type": "todo", "id": "1"}}
	found == []
}
