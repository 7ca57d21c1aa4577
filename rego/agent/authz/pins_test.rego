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
