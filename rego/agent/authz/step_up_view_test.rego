# A human can only approve what they can see: an approval step-up for a request
# whose approver's view would be cut (input.approval_view) is refused, unless
# every cut lies inside a field the rule redacts anyway.
package agent.authz_test

# input.approval_view as the sidecar sends it.
view(cuts, cut_count) := {"approval_view": {"cut": cuts, "cut_count": cut_count, "max_items": 50, "max_string": 200}}

delete_ids(ids) := under(tool_call(writer, "delete_record", {"id": ids}), ["records:delete"])

too_large(reason_cuts) := sprintf(
	"agent spiffe://demo.local/agent/writer's request is too large to show an approver in full (%s would be cut), so no human is asked to approve it",
	[reason_cuts],
)

test_a_view_without_cuts_asks_for_approval if {
	decide(object.union(delete_ids("42"), {"approval_view": null})).verdict == "step_up"
	decide(delete_ids("42")).verdict == "step_up" # a sidecar that does not say
}

# 50 harmless ids and the one that matters beyond them: no human is asked.
test_a_cut_list_refuses_the_step_up if {
	d := decide(object.union(delete_ids([]), view(["/arguments/id"], 1)))
	d.verdict == "deny"
	d.reasons == [too_large("/arguments/id")]
}

test_a_cut_string_refuses_the_step_up if {
	d := decide(object.union(delete_ids("42"), view(["/host", "/arguments/id/3"], 2)))
	d.reasons == [too_large("/arguments/id/3, /host")]
}

# send_email redacts its body: a long body is hidden from approvers anyway.
test_a_cut_inside_a_redacted_argument_still_asks if {
	d := decide(object.union(send("eve@evil.example"), view(["/arguments/body", "/arguments/body/2"], 2)))
	d.verdict == "step_up"
	d.step_up.redact == ["body"]
}

test_only_the_cuts_outside_the_redaction_are_named if {
	inp := object.union(send("eve@evil.example"), view(["/arguments/body", "/arguments/bodyguard", "/arguments/to"], 3))
	decide(inp).reasons == [too_large("/arguments/bodyguard, /arguments/to")]
}

# Cuts the sidecar counted but did not list cannot be checked: refused.
test_unlisted_cuts_refuse_the_step_up if {
	d := decide(object.union(send("eve@evil.example"), view(["/arguments/body"], 25)))
	d.reasons == [too_large("24 more")]
}

test_an_unreadable_view_refuses_the_step_up if {
	every bad in ["cut", {"cut": [1], "cut_count": 1}, {"cut": "/path", "cut_count": 1}, {"cut": [], "cut_count": "1"}] {
		d := decide(object.union(delete_ids("42"), {"approval_view": bad}))
		d.verdict == "deny"
		contains(d.reasons[0], "an unreadable input.approval_view")
	}
}

# JSON pointers: the rule's argument names and body pointers are matched as written by RFC 6901.
test_redaction_by_argument_name_and_body_pointer if {
	tools := {"upload": {"class": "write", "roles": ["writer"], "scope": "files:write", "redact": ["a/b~c"], "step_up": {"kind": "approval"}}}
	call := under(tool_call(writer, "upload", {}), ["files:write"])
	hidden := decide(object.union(call, view(["/arguments/a~1b~0c/7"], 1))) with data.agent.config.mcp.tools as tools
	hidden.verdict == "step_up"
	shown := decide(object.union(call, view(["/arguments/a/b~c"], 1))) with data.agent.config.mcp.tools as tools
	shown.verdict == "deny"

	routes := {"POST": [{
		"name": "upload", "path": "/api/upload", "roles": ["writer"], "scope": "files:write",
		"redact": ["/file/content"], "step_up": {"kind": "approval"},
	}]}
	rest := under(request(writer, "POST", "/api/upload"), ["files:write"])
	decide(object.union(rest, view(["/body/file/content"], 1))).verdict == "step_up" with data.agent.config.routes as routes
	decide(object.union(rest, view(["/body/file/contents"], 1))).verdict == "deny" with data.agent.config.routes as routes
}

# Once approved (the view was shown in full when it was asked for), and for
# calls that need no approval at all, the view does not matter.
test_the_view_matters_only_for_asking if {
	decide(object.union_n([delete_ids("42"), approval("approved"), view(["/arguments/id"], 1)])).verdict == "allow"
	decide(object.union(send("bob@demo.local"), view(["/arguments/to"], 1))).verdict == "allow"
}
