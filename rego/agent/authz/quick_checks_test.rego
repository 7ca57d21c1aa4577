package agent.authz_test

# policy.rego answers the request group from quick checks when a request passes them
# all (request_denies is then empty without asking request_problems); when one fails,
# request_problems decides. The two must agree on every input: these inputs pass or
# fail the quick checks one field at a time, and would catch a quick check that lets
# through a request request_problems refuses. Helpers are in policy_test.rego.

import data.agent.authz

quick_base := object.union(request(reader, "GET", "/api/docs/x"), {
	"session": session_state(["pii_read"], 1, 2),
	"agent_history": {"calls_last_minute": 2, "labels": {"pii_read": 1700000000}},
})

quick_variants := [
	{},
	{"truncated_body": true},
	{"truncated_body": null},
	{"action": {"path": "/"}, "parsed_path": [""]},
	{"action": {"path": "/api/docs/"}, "parsed_path": ["api", "docs", ""]},
	{"action": {"path": "/api//docs"}, "parsed_path": ["api", "", "docs"]},
	{"action": {"path": "/api/./docs"}, "parsed_path": ["api", ".", "docs"]},
	{"action": {"path": "/api/docs/.."}, "parsed_path": ["api", "docs", ".."]},
	{"action": {"path": "/api/docs/..."}, "parsed_path": ["api", "docs", "..."]},
	{"action": {"path": "/api/..;/docs"}, "parsed_path": ["api", "..;", "docs"]},
	{"action": {"path": "/api/a\\b"}, "parsed_path": ["api", "a\\b"]},
	{"action": {"path": "/api/a/b"}, "parsed_path": ["api", "a/b"]},
	{"action": {"path": "/api/docs/y"}},
	{"parsed_path": "api/docs/x"},
	{"action": {"method": "get"}},
	{"task": "t-1"},
	{"task": grant(["docs:read"])},
	{"delegation": {"chain": [writer], "depth": 1}},
	{"delegation": {"chain": [writer], "depth": 2}},
	{"delegation": {"chain": [7], "depth": 1}},
	{"delegation": null},
	{"session": null},
	{"session": "task:x"},
	{"session": {"calls": "1"}},
	{"session": {"writes": -1}},
	{"session": {"calls_last_minute": 1.5}},
	{"session": {"key": 7}},
	{"session": {"labels": "pii_read"}},
	{"session": {"labels": [7]}},
	{"agent_history": null},
	{"agent_history": []},
	{"agent_history": {"calls_last_minute": -3}},
	{"agent_history": {"labels": {"pii_read": "yesterday"}}},
	{"agent_history": {"labels": ["pii_read"]}},
]

test_quick_request_checks_agree_with_the_reasons if {
	authz.request_denies == set() with input as quick_base
	every variant in quick_variants {
		inp := object.union(quick_base, variant)
		authz.request_denies == authz.request_problems with input as inp
	}
	every absent in ["truncated_body", "session", "agent_history", "delegation", "task"] {
		inp := object.remove(quick_base, [absent])
		authz.request_denies == authz.request_problems with input as inp
	}
}

# Reasons name what the request does with rule_action, built only when a reason needs
# it: every kind of rule has one, so no reason can vanish for want of it.
test_every_rule_kind_names_its_action if {
	authz.rule_action == "read docs" with input as request(reader, "GET", "/api/docs")
	authz.rule_action == "call tool search_docs" with input as tool_call(reader, "search_docs", {})
	authz.rule_action == "use MCP method ping" with input as rpc_request(reader, "ping", null, {})
	authz.rule_action == "GET /mcp" with input as request(reader, "GET", "/mcp")
}
