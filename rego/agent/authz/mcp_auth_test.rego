package agent.authz_test

pinned(inp, state) := object.union(inp, {"mcp": {"tool_pin": state}})

test_a_changed_tool_definition_needs_a_human if {
	d := decide(pinned(tool_call(reader, "search_docs", {"q": "vpn"}), "changed"))
	d.verdict == "step_up"
	d.step_up.kind == "approval"
	contains(concat(" ", d.reasons), "definition of tool search_docs changed")
}

test_an_unchanged_or_unlisted_tool_needs_nothing_more if {
	every state in ["same", null] {
		decide(pinned(tool_call(reader, "search_docs", {"q": "vpn"}), state)).verdict == "allow"
	}
}

test_the_approved_retry_of_a_changed_tool_is_allowed if {
	inp := object.union(pinned(tool_call(reader, "search_docs", {"q": "vpn"}), "changed"), approval("approved"))
	decide(inp).verdict == "allow"
}

test_a_tool_call_short_of_one_scope_is_a_scope_challenge if {
	inp := under(tool_call(writer, "create_ticket", {"title": "x"}), ["docs:read"])
	d := decide(inp)
	d.verdict == "deny"
	challenge := d.response_headers_to_add["www-authenticate"]
	startswith(challenge, `Bearer error="insufficient_scope", scope="tickets:write", resource_metadata="`)
	contains(challenge, "/.well-known/oauth-protected-resource/mcp")
}

test_other_denies_carry_no_scope_challenge if {
	not decide(tool_call(reader, "delete_record", {"id": "1"})).response_headers_to_add
	not decide(under(request(writer, "POST", "/api/tickets"), ["docs:read"])).response_headers_to_add
}
