package agent.authz_test

import data.agent.authz

# Session state at call time: write and rate limits, the "write" field of every
# answer, and what an approval step-up tells approvers (data_class, redact).
# Helpers (request, tool_call, under, session_state, ...) are in policy_test.rego.

in_session(inp, writes, calls_last_minute) := object.union(inp, {"session": session_state([], writes, calls_last_minute)})

ticket := under(request(writer, "POST", "/api/tickets"), ["tickets:write"])

write_limit_reason := "agent spiffe://demo.local/agent/writer reached the limit of 10 writes in this session (task:task-1)"

# ---------------------------------------------------------------------------
# At most max_writes (10) writes per session

test_writes_below_the_limit_are_allowed if {
	every writes in [0, 1, 9] {
		d := decide(in_session(ticket, writes, writes))
		d.verdict == "allow"
		d.write == true
	}
}

test_write_at_the_limit_is_denied if {
	decide(in_session(ticket, 10, 10)) == {
		"verdict": "deny",
		"reasons": [write_limit_reason],
		"remember": [],
		"write": true,
	}
	decide(in_session(ticket, 11, 11)).reasons == [write_limit_reason]
}

test_write_limit_counts_mcp_tools if {
	inp := in_session(under(tool_call(writer, "create_ticket", {"title": "x"}), ["tickets:write"]), 10, 0)
	decide(inp).reasons == ["agent spiffe://demo.local/agent/writer reached the limit of 10 writes in this session (task:task-1)"]
}

test_reads_are_not_write_limited if {
	decide(in_session(request(reader, "GET", "/api/docs"), 500, 0)).verdict == "allow"
	decide(in_session(tool_call(reader, "get_record", {"id": "1"}), 500, 0)).verdict == "allow"
	decide(in_session(rpc_request(writer, "tools/list", null, {}), 500, 0)).verdict == "allow"
	decide(in_session(request(writer, "GET", "/mcp"), 500, 0)).verdict == "allow"
}

# A limit denies: neither a step-up nor an approval gets past it.
test_write_limit_before_step_up_and_approval if {
	delete := in_session(under(request(writer, "DELETE", "/api/records/42"), ["records:delete"]), 10, 0)
	decide(delete).verdict == "deny"
	decide(delete).reasons == ["agent spiffe://demo.local/agent/writer reached the limit of 10 writes in this session (task:task-1)"]
	decide(object.union(delete, approval("approved"))).reasons == decide(delete).reasons
	decide(in_session(under(request(writer, "DELETE", "/api/records/42"), ["records:delete"]), 9, 0)).verdict == "step_up"
}

test_write_limit_with_other_access_denies if {
	decide(in_session(request(reader, "POST", "/api/tickets"), 10, 0)).reasons == [
		"agent spiffe://demo.local/agent/reader is read-only and may not create ticket",
		"agent spiffe://demo.local/agent/reader may not create ticket (needs role writer)",
		"agent spiffe://demo.local/agent/reader reached the limit of 10 writes in this session (task:task-1)",
		`writes need a task grant: open one with POST /v1/tasks (rule "create ticket")`,
	]
}

test_write_limit_from_data if {
	decide(in_session(ticket, 2, 0)).reasons == ["agent spiffe://demo.local/agent/writer reached the limit of 2 writes in this session (task:task-1)"] with data.agent.config.session.max_writes as 2
	decide(in_session(ticket, 0, 0)).reasons == ["agent spiffe://demo.local/agent/writer reached the limit of 0 writes in this session (task:task-1)"] with data.agent.config.session.max_writes as 0
	decide(in_session(ticket, 10, 0)).verdict == "allow" with data.agent.config.session.max_writes as 11
}

# Without a limit in data there is none; a limit the policy cannot read denies.
test_no_write_limit_in_data if {
	decide(in_session(ticket, 1000, 0)).verdict == "allow" with data.agent.config.session.max_writes as null
	decide(in_session(ticket, 1000, 0)).verdict == "allow" with data.agent.config.session as null
	decide(in_session(ticket, 1000, 1000)).verdict == "allow" with data.agent.config.session as "ten"
}

test_unreadable_write_limit_denies_writes if {
	decide(in_session(request(reader, "GET", "/api/docs"), 0, 0)).verdict == "allow" with data.agent.config.session.max_writes as "10"
	decide(ticket).verdict == "allow" with data.agent.config.session.max_writes as "10"
	every limit in ["10", -1, 2.5, true, [10]] {
		d := decide(in_session(ticket, 0, 0)) with data.agent.config.session.max_writes as limit
		d.reasons == [sprintf("session.max_writes in the policy data is not a whole number >= 0 (%v), so writes in a session are denied", [limit])]
	}
}

# ---------------------------------------------------------------------------
# At most max_calls_per_minute (120) calls a minute, any call

rate_reason(n) := sprintf("agent spiffe://demo.local/agent/reader made %d calls in the last minute; the limit is 120", [n])

test_calls_below_the_rate_limit_are_allowed if {
	decide(in_session(request(reader, "GET", "/api/docs"), 0, 119)).verdict == "allow"
}

test_call_at_the_rate_limit_is_denied if {
	decide(in_session(request(reader, "GET", "/api/docs"), 0, 120)) == {
		"verdict": "deny",
		"reasons": ["agent spiffe://demo.local/agent/reader made 120 calls in the last minute; the limit is 120"],
		"remember": [],
		"write": false,
	}
	decide(in_session(request(reader, "GET", "/api/docs"), 0, 500)).reasons == [rate_reason(500)]
}

test_rate_limit_covers_every_kind_of_call if {
	decide(in_session(rpc_request(reader, "ping", null, {}), 0, 120)).reasons == [rate_reason(120)]
	decide(in_session(request(reader, "GET", "/mcp"), 0, 120)).reasons == [rate_reason(120)]
	decide(in_session(tool_call(reader, "search_docs", {}), 0, 120)).reasons == [rate_reason(120)]
	decide(in_session(request(reader, "GET", "/nowhere"), 0, 120)).reasons == [
		"agent spiffe://demo.local/agent/reader made 120 calls in the last minute; the limit is 120",
		"no rule allows GET /nowhere",
	]
}

test_both_limits if {
	decide(in_session(ticket, 10, 120)).reasons == [
		"agent spiffe://demo.local/agent/writer made 120 calls in the last minute; the limit is 120",
		"agent spiffe://demo.local/agent/writer reached the limit of 10 writes in this session (task:task-1)",
	]
}

test_rate_limit_from_data if {
	decide(in_session(request(reader, "GET", "/api/docs"), 0, 5)).reasons == ["agent spiffe://demo.local/agent/reader made 5 calls in the last minute; the limit is 5"] with data.agent.config.session.max_calls_per_minute as 5
	decide(in_session(request(reader, "GET", "/api/docs"), 0, 5000)).verdict == "allow" with data.agent.config.session.max_calls_per_minute as null
}

test_unreadable_rate_limit_denies_calls if {
	d := decide(in_session(request(reader, "GET", "/api/docs"), 0, 0)) with data.agent.config.session.max_calls_per_minute as "120"
	d.reasons == ["session.max_calls_per_minute in the policy data is not a whole number >= 0 (120), so calls in a session are denied"]
	decide(request(reader, "GET", "/api/docs")).verdict == "allow" with data.agent.config.session.max_calls_per_minute as "120"
}

# Limits apply only to calls the sidecar keeps a session for.
test_no_session_no_limits if {
	decide(ticket).verdict == "allow" with data.agent.config.session.max_writes as 0
	decide(object.remove(ticket, {"session"})).verdict == "allow" with data.agent.config.session.max_writes as 0
}

# Who is calling and whether the request is judgeable come first.
test_identity_and_request_denies_come_first if {
	stranger := in_session(request("spiffe://demo.local/agent/stranger", "GET", "/api/docs"), 0, 120)
	decide(stranger).reasons == ["agent spiffe://demo.local/agent/stranger is not registered in the policy"]
	truncated := object.union(in_session(ticket, 10, 120), {"truncated_body": true})
	decide(truncated).reasons == ["request body is larger than the inspection limit; a partial body is never judged"]
}

# ---------------------------------------------------------------------------
# A session the policy cannot read is a request deny

test_session_that_is_not_an_object if {
	decide(object.union(request(reader, "GET", "/api/docs"), {"session": "task-1"})) == {
		"verdict": "deny",
		"reasons": ["input.session is neither null nor a session state object (string)"],
		"remember": [],
		"write": false,
	}
	decide(object.union(request(reader, "GET", "/api/docs"), {"session": []})).reasons == ["input.session is neither null nor a session state object (array)"]
}

test_session_with_bad_counters if {
	bad := object.union(in_session(ticket, 0, 0), {"session": {"calls": -1, "writes": "3", "calls_last_minute": 1.5}})
	decide(bad).reasons == [
		"input.session.calls is not a whole number >= 0 (-1)",
		"input.session.calls_last_minute is not a whole number >= 0 (1.5)",
		`input.session.writes is not a whole number >= 0 ("3")`,
	]
}

test_session_with_missing_fields if {
	decide(object.union(request(reader, "GET", "/api/docs"), {"session": {}})).reasons == [
		"input.session.calls is not a whole number >= 0 (null)",
		"input.session.calls_last_minute is not a whole number >= 0 (null)",
		"input.session.key is not a string (null)",
		"input.session.labels is not a list of strings (null)",
		"input.session.writes is not a whole number >= 0 (null)",
	]
}

test_session_with_bad_labels if {
	inp := object.union(send("bob@demo.local"), {"session": session_state(["pii_read", 7], 0, 0)})
	decide(inp).reasons == [`input.session.labels is not a list of strings (["pii_read",7])`]
	decide(object.union(send("bob@demo.local"), {"session": session_state("pii_read", 0, 0)})).verdict == "deny"
}

# The ratchet keeps reading the labels of a full session; the write limit still applies.
test_ratchet_in_a_full_session if {
	inp := object.union(send("bob@demo.local"), {"session": session_state(["pii_read"], 3, 3)})
	decide(inp).step_up.approvers == {"data_class": "restricted"}
	limited := object.union(send("bob@demo.local"), {"session": session_state(["pii_read"], 10, 3)})
	decide(limited).reasons == ["agent spiffe://demo.local/agent/writer reached the limit of 10 writes in this session (task:task-1)"]
}

# ---------------------------------------------------------------------------
# "write" in every answer

test_write_follows_the_rule_class if {
	decide(request(reader, "GET", "/api/docs")).write == false
	decide(request(reader, "GET", "/api/records/1")).write == false
	decide(ticket).write == true
	decide(request(reader, "POST", "/api/tickets")).write == true
	decide(under(request(writer, "DELETE", "/api/records/1"), ["records:delete"])).write == true
	decide(under(request(writer, "POST", "/api/payments"), ["payments:write"])).write == true
	decide(tool_call(reader, "search_docs", {})).write == false
	decide(tool_call(reader, "send_email", {"to": "bob@demo.local"})).write == true
}

test_open_mcp_methods_and_streams_are_reads if {
	decide(rpc_request(reader, "initialize", null, {})).write == false
	decide(request(reader, "GET", "/mcp")).write == false
	decide(request(reader, "DELETE", "/mcp")).write == false
}

# A rule without a class is a write, whatever the HTTP method.
test_rule_without_class_is_a_write if {
	routes := {"GET": [{"name": "report", "path": "/api/report"}]}
	decide(request(writer, "GET", "/api/report")).write == true with data.agent.config.routes as routes
}

# Without a rule: the HTTP method decides; only an explicit read_only true is a read.
test_write_without_a_rule if {
	decide(request(reader, "GET", "/nowhere")).write == false
	decide(request(reader, "HEAD", "/nowhere")).write == false
	decide(request(reader, "POST", "/nowhere")).write == true
	decide(request(reader, "PUT", "/mcp")).write == true
	decide(tool_call(writer, "format_disk", {})).write == true
	decide(rpc_request(writer, "resources/read", null, {})).write == true
	decide(json.remove(request(reader, "GET", "/nowhere"), ["action/read_only"])).write == true
	decide({}).write == true
}

# Identity denies keep the rule's class when a rule matches.
test_write_on_identity_deny if {
	d := decide(object.union(request(reader, "GET", "/api/docs"), {"agent": null}))
	d.verdict == "deny"
	d.write == false
}

# ---------------------------------------------------------------------------
# What an approval step-up tells approvers: data_class and redact

test_delete_record_step_up_document if {
	d := decide(under(tool_call(writer, "delete_record", {"id": "42"}), ["records:delete"]))
	d.step_up == {
		"kind": "approval",
		"ttl_seconds": 900,
		"reason": "a human must approve before agent spiffe://demo.local/agent/writer may call tool delete_record",
		"approvers": {"data_class": "restricted"},
		"data_class": "restricted",
		"redact": [],
	}
	d.write == true
}

test_send_email_hides_the_body if {
	d := decide(send("eve@evil.example"))
	d.step_up == {
		"kind": "approval",
		"ttl_seconds": 900,
		"reason": "agent spiffe://demo.local/agent/writer wants to call tool send_email for recipients outside demo.local (eve@evil.example); a human must approve",
		"approvers": {"data_class": "internal"},
		"data_class": "internal",
		"redact": ["body"],
	}
}

# The ratchet raises who must approve, not the class of the rule.
test_ratchet_step_up_document if {
	d := decide(object.union(send("eve@evil.example"), session(["pii_read"])))
	d.step_up.approvers == {"data_class": "restricted"}
	d.step_up.data_class == "internal"
	d.step_up.redact == ["body"]
}

test_redact_from_data_is_sorted if {
	routes := {"POST": [{
		"name": "upload", "path": "/api/upload", "roles": ["writer"], "scope": "files:write",
		"data_class": "confidential", "redact": ["/secret", "/file/content", "/secret"],
		"step_up": {"kind": "approval"},
	}]}
	d := decide(under(request(writer, "POST", "/api/upload"), ["files:write"])) with data.agent.config.routes as routes
	d.step_up.redact == ["/file/content", "/secret"]
	d.step_up.data_class == "confidential"
	d.step_up.approvers == {"data_class": "confidential"}
}

test_rule_without_data_class_is_unclassified if {
	routes := {"DELETE": [{"name": "purge", "path": "/api/purge", "scope": "records:purge", "step_up": {"kind": "approval"}}]}
	d := decide(under(request(writer, "DELETE", "/api/purge"), ["records:purge"])) with data.agent.config.routes as routes
	d.step_up.data_class == "unclassified"
	d.step_up.approvers == {"data_class": "unclassified"}
	d.step_up.redact == []
}

test_acr_step_up_has_no_redact if {
	d := decide(under(request(writer, "POST", "/api/payments"), ["payments:write"]))
	d.step_up.kind == "acr"
	not "redact" in object.keys(d.step_up)
	not "data_class" in object.keys(d.step_up)
}

test_invalid_redact_allows_nothing if {
	every redact in ["body", [""], [1], null] {
		tools := {"search_docs": {"class": "read", "redact": redact}}
		d := decide(tool_call(reader, "search_docs", {})) with data.agent.config.mcp.tools as tools
		d.reasons == [`rule "mcp tool search_docs" has an invalid redact (a list of argument names or JSON pointers is expected), so it allows nothing`]
	}
}

test_invalid_data_class_allows_nothing if {
	every class in ["", 3, null] {
		tools := {"search_docs": {"class": "read", "data_class": class}}
		d := decide(tool_call(reader, "search_docs", {})) with data.agent.config.mcp.tools as tools
		d.reasons == [`rule "mcp tool search_docs" has an invalid data_class (a non-empty string is expected), so it allows nothing`]
	}
}

test_approval_step_up_data_the_policy_cannot_enforce if {
	every step_up in [
		{"kind": "approval", "ttl_seconds": 0},
		{"kind": "approval", "ttl_seconds": 1.5},
		{"kind": "approval", "reason": 5},
		{"kind": "approval", "approvers": "security"},
		{"kind": "approval", "approvers": {"data_class": ""}},
		{"kind": "approval", "approvers": {"data_class": 3}},
	] {
		tools := {"search_docs": {"class": "read", "step_up": step_up}}
		d := decide(tool_call(reader, "search_docs", {})) with data.agent.config.mcp.tools as tools
		d.reasons == [`rule "mcp tool search_docs" has a step_up the policy cannot enforce, so it allows nothing`]
	}
}

# The exact document shape, for the sidecar's decision parser.
test_step_up_document_keys if {
	d := decide(under(request(writer, "DELETE", "/api/records/1"), ["records:delete"]))
	object.keys(d) == {"verdict", "reasons", "step_up", "remember", "write"}
	object.keys(d.step_up) == {"kind", "ttl_seconds", "reason", "approvers", "data_class", "redact"}
	authz.decision.write == true with input as {}
}

# ---------------------------------------------------------------------------
# The agent's own history (input.agent_history): a per-agent ceiling and the
# ratchet, whatever the session or task. A new Mcp-Session-Id or a new task is
# an empty session; the agent's history is not.

history_clock := 1700000000

history_now_ns := history_clock * 1000000000

with_history(inp, calls, labels) := object.union(inp, {"agent_history": {"calls_last_minute": calls, "labels": labels}})

docs_read := request(reader, "GET", "/api/docs")

agent_rate_reason(n, limit) := sprintf(
	"agent spiffe://demo.local/agent/reader made %d calls in the last minute across all its sessions and tasks; the limit per agent is %d",
	[n, limit],
)

test_agent_calls_below_the_ceiling_are_allowed if {
	decide(with_history(in_session(docs_read, 0, 0), 119, {})).verdict == "allow"
}

test_agent_ceiling_holds_in_a_fresh_session if {
	decide(with_history(in_session(docs_read, 0, 0), 120, {})) == {
		"verdict": "deny",
		"reasons": [agent_rate_reason(120, 120)],
		"remember": [],
		"write": false,
	}
	decide(with_history(docs_read, 500, {})).reasons == [agent_rate_reason(500, 120)]
	decide(with_history(under(docs_read, ["docs:read"]), 120, {})).reasons == [agent_rate_reason(120, 120)]
}

test_agent_ceiling_beside_the_session_ceiling if {
	decide(with_history(in_session(docs_read, 0, 120), 130, {})).reasons == [
		"agent spiffe://demo.local/agent/reader made 120 calls in the last minute; the limit is 120",
		agent_rate_reason(130, 120),
	]
}

test_agent_ceiling_from_data if {
	decide(with_history(docs_read, 5, {})).reasons == [agent_rate_reason(5, 5)] with data.agent.config.session.agent_max_calls_per_minute as 5
	decide(with_history(docs_read, 5000, {})).verdict == "allow" with data.agent.config.session.agent_max_calls_per_minute as null
}

test_unreadable_agent_ceiling_denies_calls if {
	every limit in ["120", -1, 2.5, [120]] {
		d := decide(with_history(docs_read, 0, {})) with data.agent.config.session.agent_max_calls_per_minute as limit
		d.reasons == [sprintf(
			"session.agent_max_calls_per_minute in the policy data is not a whole number >= 0 (%v), so every call of an agent is denied",
			[limit],
		)]
	}
}

# Limits on the agent's history apply only when the sidecar passes one.
test_no_agent_history_no_agent_limits if {
	decide(docs_read).verdict == "allow" with data.agent.config.session.agent_max_calls_per_minute as 0
	decide(object.union(docs_read, {"agent_history": null})).verdict == "allow" with data.agent.config.session.agent_max_calls_per_minute as 0
	decide(object.union(docs_read, {"agent_history": null})).verdict == "allow" with data.agent.config.session.agent_max_calls_per_minute as "x"
}

test_agent_history_that_is_not_an_object if {
	decide(object.union(docs_read, {"agent_history": "agent:x"})) == {
		"verdict": "deny",
		"reasons": ["input.agent_history is neither null nor an agent history object (string)"],
		"remember": [],
		"write": false,
	}
	decide(object.union(docs_read, {"agent_history": []})).reasons == ["input.agent_history is neither null nor an agent history object (array)"]
}

test_agent_history_with_bad_fields if {
	decide(object.union(docs_read, {"agent_history": {}})).reasons == [
		"input.agent_history.calls_last_minute is not a whole number >= 0 (null)",
		"input.agent_history.labels is not an object of labels to unix seconds (null)",
	]
	decide(with_history(docs_read, -1, {"pii_read": "yesterday"})).reasons == [
		"input.agent_history.calls_last_minute is not a whole number >= 0 (-1)",
		`input.agent_history.labels is not an object of labels to unix seconds ({"pii_read":"yesterday"})`,
	]
	decide(with_history(docs_read, 0, ["pii_read"])).reasons == [`input.agent_history.labels is not an object of labels to unix seconds (["pii_read"])`]
	decide(with_history(docs_read, 1.5, {"pii_read": 1.5})).verdict == "deny"
}

elsewhere_reason := "agent spiffe://demo.local/agent/writer read restricted data (pii_read) in another session or task; a human must approve before it may call tool send_email"

# A restricted read outside this task (no task, another MCP session, an earlier task) still arms the ratchet.
test_ratchet_after_a_restricted_read_elsewhere if {
	inp := with_history(object.union(send("bob@demo.local"), session([])), 3, {"pii_read": history_clock - 60})
	d := decide(inp) with time.now_ns as history_now_ns
	d.verdict == "step_up"
	d.reasons == [elsewhere_reason]
	d.step_up == {
		"kind": "approval",
		"ttl_seconds": 900,
		"reason": elsewhere_reason,
		"approvers": {"data_class": "restricted"},
		"data_class": "internal",
		"redact": ["body"],
	}
	decide(with_history(send("bob@demo.local"), 0, {"pii_read": history_clock})).reasons == [elsewhere_reason] with time.now_ns as history_now_ns
	decide(object.union(inp, approval("approved"))).verdict == "allow" with time.now_ns as history_now_ns
}

# A label this session holds is this task's reason, not "elsewhere" as well.
test_ratchet_names_the_task_when_the_task_read_it if {
	inp := with_history(object.union(send("bob@demo.local"), session(["pii_read"])), 0, {"pii_read": history_clock})
	decide(inp).reasons == ["agent spiffe://demo.local/agent/writer already read restricted data in this task (pii_read); a human must approve before it may call tool send_email"] with time.now_ns as history_now_ns
}

test_ratchet_elsewhere_only_for_restricted_labels_and_external_calls if {
	decide(with_history(send("bob@demo.local"), 0, {"docs_read": history_clock})).verdict == "allow" with time.now_ns as history_now_ns
	ticket_history := with_history(ticket, 0, {"pii_read": history_clock})
	decide(ticket_history).verdict == "allow" with time.now_ns as history_now_ns
}

test_label_window_from_data if {
	at_edge := with_history(send("bob@demo.local"), 0, {"pii_read": history_clock - 86400})
	decide(at_edge).verdict == "step_up" with time.now_ns as history_now_ns
	older := with_history(send("bob@demo.local"), 0, {"pii_read": history_clock - 86401})
	decide(older).verdict == "allow" with time.now_ns as history_now_ns
	decide(at_edge).verdict == "allow" with time.now_ns as history_now_ns with data.agent.config.session.agent_label_window_seconds as 3600
	decide(at_edge).verdict == "step_up" with time.now_ns as history_now_ns with data.agent.config.session.agent_label_window_seconds as 90000
}

# Without a readable window every label the sidecar still remembers counts (the stricter reading).
test_without_a_label_window_every_remembered_label_counts if {
	inp := with_history(send("bob@demo.local"), 0, {"pii_read": history_clock - 10000000})
	every window in [null, "1d", -1, 1.5] {
		d := decide(inp) with time.now_ns as history_now_ns with data.agent.config.session.agent_label_window_seconds as window
		d.reasons == [elsewhere_reason]
	}
}
