package agent.authz_test

import data.agent.authz

# ---------------------------------------------------------------------------
# Building inputs (shaped like sidecar/schema/input.schema.json)

reader := "spiffe://demo.local/agent/reader"

writer := "spiffe://demo.local/agent/writer"

ops := "spiffe://demo.local/agent/ops/backup"

identity(id) := {
	"spiffe_id": id,
	"trust_domain": split(trim_prefix(id, "spiffe://"), "/")[0],
	"path": concat("", ["/", concat("/", array.slice(split(trim_prefix(id, "spiffe://"), "/"), 1, 100))]),
	"identity_source": "jwt_svid",
	"claims": {"sub": id},
}

request(id, method, path) := {
	"attributes": {
		"source": {"address": {}, "principal": ""},
		"destination": {"address": {}, "principal": ""},
		"metadataContext": {},
		"contextExtensions": {},
		"request": {"http": {
			"id": "req-1",
			"method": method,
			"path": path,
			"host": "tools.demo.local",
			"scheme": "http",
			"protocol": "HTTP/1.1",
			"headers": {":authority": "tools.demo.local", "authorization": "Bearer secret"},
			"body": "",
			"size": 0,
		}},
	},
	"parsed_path": split(trim_prefix(path, "/"), "/"),
	"parsed_query": {},
	"parsed_body": null,
	"truncated_body": false,
	"version": {"ext_authz": "v3", "encoding": "protojson"},
	"action": {
		"method": method,
		"host": "tools.demo.local",
		"path": path,
		"read_only": method in {"GET", "HEAD", "OPTIONS"},
	},
	"agent": identity(id),
	"delegation": {"chain": [], "depth": 0},
	"task": null,
	"session": null,
	"mcp": null,
	"approval": null,
	"intent": null,
}

rpc_request(id, method, name, arguments) := object.union(request(id, "POST", "/mcp"), {"mcp": {
	"method": method,
	"name": name,
	"arguments": arguments,
	"id": 7,
	"is_notification": false,
}})

tool_call(id, name, arguments) := rpc_request(id, "tools/call", name, arguments)

# The decision document without unread_input, which every answer carries
# (test_every_answer_names_the_input_it_never_reads).
decide(inp) := d if {
	d := object.remove(authz.decision, ["unread_input"]) with input as inp
}

intent(confidence) := {"purpose": "triage", "confidence": confidence, "source": "header", "asserted": true}

# Decided for the most sensitive class (approvers.data_class): it covers what any rule asks.
approval(status) := approval_for(status, "restricted")

approval_for(status, class) := {"approval": {"id": "apr-1", "status": status, "approvers": {"data_class": class}}}

# A session state as the sidecar sends it: nothing done yet but these labels.
session(labels) := {"session": session_state(labels, 0, 0)}

session_state(labels, writes, calls_last_minute) := {
	"key": "task:task-1",
	"calls": writes,
	"writes": writes,
	"calls_last_minute": calls_last_minute,
	"labels": labels,
	"recent": [],
	"started_at": 1700000000,
}

acr_claims(claims) := {"agent": {"claims": claims}}

# A verified, active task grant (the sidecar checked it) with these scopes.
grant(scopes) := {
	"id": "task-1",
	"purpose": "triage",
	"scopes": scopes,
	"issued_at": 1700000000,
	"expires_at": 4102444800,
	"parent_id": null,
	"root_id": "task-1",
	"depth": 0,
}

under(inp, scopes) := object.union(inp, {"task": grant(scopes)})

delegated(inp, chain) := object.union(inp, {"delegation": {"chain": chain, "depth": count(chain)}})

# ---------------------------------------------------------------------------
# The main demo cases, with their exact answers

test_reader_reads_docs if {
	decide(request(reader, "GET", "/api/docs/x")) == {
		"verdict": "allow",
		"reasons": [`route "read docs" allows agent spiffe://demo.local/agent/reader to GET /api/docs/x`],
		"headers": {"x-authz-rule": "read docs"},
		"remember": [],
		"write": false,
	}
}

test_reader_may_not_create_ticket if {
	decide(request(reader, "POST", "/api/tickets")) == {
		"verdict": "deny",
		"reasons": [
			"agent spiffe://demo.local/agent/reader is read-only and may not create ticket",
			"agent spiffe://demo.local/agent/reader may not create ticket (needs role writer)",
			`writes need a task grant: open one with POST /v1/tasks (rule "create ticket")`,
		],
		"remember": [],
		"write": true,
	}
}

# A task never gives a role: the reader stays read-only under a task granting the write.
test_reader_may_not_create_ticket_under_a_task if {
	decide(under(request(reader, "POST", "/api/tickets"), ["tickets:write"])) == {
		"verdict": "deny",
		"reasons": [
			"agent spiffe://demo.local/agent/reader is read-only and may not create ticket",
			"agent spiffe://demo.local/agent/reader may not create ticket (needs role writer)",
		],
		"remember": [],
		"write": true,
	}
}

test_writer_delete_record_needs_approval if {
	decide(under(request(writer, "DELETE", "/api/records/42"), ["records:delete"])) == {
		"verdict": "step_up",
		"reasons": ["a human must approve before agent spiffe://demo.local/agent/writer may delete record"],
		"step_up": {
			"kind": "approval",
			"ttl_seconds": 900,
			"reason": "a human must approve before agent spiffe://demo.local/agent/writer may delete record",
			"approvers": {"data_class": "restricted"},
			"data_class": "restricted",
			"redact": [],
		},
		"remember": [],
		"write": true,
	}
}

test_reader_calls_search_docs if {
	decide(tool_call(reader, "search_docs", {"query": "vpn"})) == {
		"verdict": "allow",
		"reasons": ["agent spiffe://demo.local/agent/reader may call tool search_docs"],
		"headers": {"x-authz-rule": "mcp tool search_docs"},
		"remember": [],
		"write": false,
	}
}

test_reader_may_not_call_delete_record if {
	decide(tool_call(reader, "delete_record", {"id": "42"})) == {
		"verdict": "deny",
		"reasons": [
			"agent spiffe://demo.local/agent/reader is read-only and may not call tool delete_record",
			"agent spiffe://demo.local/agent/reader may not call tool delete_record (needs role writer)",
			`writes need a task grant: open one with POST /v1/tasks (rule "mcp tool delete_record")`,
		],
		"remember": [],
		"write": true,
	}
}

# ---------------------------------------------------------------------------
# Identity

test_no_agent if {
	decide(object.union(request(reader, "GET", "/api/docs"), {"agent": null})) == {
		"verdict": "deny",
		"reasons": ["no verified agent identity"],
		"remember": [],
		"write": false,
	}
}

test_agent_that_is_not_an_object if {
	d := decide(object.union(request(reader, "GET", "/api/docs"), {"agent": "spiffe://demo.local/agent/reader"}))
	d.reasons == ["no verified agent identity"]
}

test_agent_field_missing if {
	d := decide(object.remove(request(reader, "GET", "/api/docs"), {"agent"}))
	d.verdict == "deny"
	d.reasons == ["no verified agent identity"]
}

test_empty_input_is_denied if {
	d := decide({})
	d.verdict == "deny"
	d.reasons == ["no verified agent identity"]
}

# Identity problems come first, even when the request has problems too.
test_identity_reasons_win if {
	d := decide(object.union(request(reader, "GET", "/api/../docs"), {"agent": null, "truncated_body": true}))
	d.reasons == ["no verified agent identity"]
}

test_lookalike_trust_domain if {
	evil := "spiffe://demo.local.evil/agent/writer"
	decide(request(evil, "POST", "/api/tickets")) == {
		"verdict": "deny",
		"reasons": [
			"agent spiffe://demo.local.evil/agent/writer belongs to trust domain demo.local.evil, which this policy does not trust",
			"agent spiffe://demo.local.evil/agent/writer is not registered in the policy",
		],
		"remember": [],
		"write": true,
	}
}

test_lookalike_trust_domain_even_if_registered if {
	evil := "spiffe://demo.local.evil/agent/writer"
	d := decide(request(evil, "GET", "/api/docs")) with data.agent.config.agents as object.union(data.agent.config.agents, {evil: {"roles": ["reader"]}})
	d.reasons == ["agent spiffe://demo.local.evil/agent/writer belongs to trust domain demo.local.evil, which this policy does not trust"]
}

test_trust_domain_field_must_match_the_id if {
	evil := "spiffe://demo.local.evil/agent/writer"
	d := decide(object.union(request(evil, "GET", "/api/docs"), {"agent": {"trust_domain": "demo.local"}}))
	d.verdict == "deny"
	"agent spiffe://demo.local.evil/agent/writer claims trust domain demo.local, which does not match its SPIFFE ID" in d.reasons
}

test_trust_domain_field_missing if {
	d := decide(json.remove(request(reader, "GET", "/api/docs"), ["agent/trust_domain"]))
	d.reasons == ["agent spiffe://demo.local/agent/reader claims trust domain null, which does not match its SPIFFE ID"]
}

test_not_a_spiffe_id if {
	d := decide(object.union(request(reader, "GET", "/api/docs"), {"agent": {"spiffe_id": "https://demo.local/agent/reader"}}))
	d.reasons == [
		"agent https://demo.local/agent/reader does not have a valid SPIFFE ID",
		"agent https://demo.local/agent/reader is not registered in the policy",
	]
}

test_agent_without_spiffe_id if {
	d := decide(json.remove(request(reader, "GET", "/api/docs"), ["agent/spiffe_id"]))
	d.reasons == [
		"agent (without a SPIFFE ID) does not have a valid SPIFFE ID",
		"agent (without a SPIFFE ID) is not registered in the policy",
	]
}

test_unknown_agent if {
	decide(request("spiffe://demo.local/agent/stranger", "GET", "/api/docs")) == {
		"verdict": "deny",
		"reasons": ["agent spiffe://demo.local/agent/stranger is not registered in the policy"],
		"remember": [],
		"write": false,
	}
}

# Registration compares whole IDs, never prefixes.
test_registered_id_is_not_a_prefix if {
	every id in ["spiffe://demo.local/agent/reader2", "spiffe://demo.local/agent/reader/child", "spiffe://demo.local/agent/read"] {
		decide(request(id, "GET", "/api/docs")).reasons == [sprintf("agent %s is not registered in the policy", [id])]
	}
}

test_pattern_agent_may_read if {
	d := decide(request(ops, "GET", "/api/docs/runbook"))
	d.verdict == "allow"
	d.headers == {"x-authz-rule": "read docs"}
}

test_pattern_agent_may_not_write if {
	decide(request(ops, "POST", "/api/tickets")).reasons == [
		"agent spiffe://demo.local/agent/ops/backup is read-only and may not create ticket",
		"agent spiffe://demo.local/agent/ops/backup may not create ticket (needs role writer)",
		`writes need a task grant: open one with POST /v1/tasks (rule "create ticket")`,
	]
}

test_pattern_star_stays_in_one_segment if {
	decide(request("spiffe://demo.local/agent/ops/team/backup", "GET", "/api/docs")).reasons == ["agent spiffe://demo.local/agent/ops/team/backup is not registered in the policy"]
}

test_pattern_roles_are_unioned if {
	patterns := [
		{"pattern": "spiffe://demo.local/agent/ops/*", "roles": ["reader"]},
		{"pattern": "spiffe://demo.local/agent/ops/backup", "roles": ["writer"]},
	]
	d := decide(under(request(ops, "POST", "/api/tickets"), ["tickets:write"])) with data.agent.config.agent_patterns as patterns
	d.verdict == "allow"
}

test_exact_entry_wins_over_patterns if {
	d := decide(request(ops, "GET", "/api/docs")) with data.agent.config.agents as object.union(data.agent.config.agents, {ops: {"roles": []}})
	d.reasons == ["agent spiffe://demo.local/agent/ops/backup may not read docs (needs role reader)"]
}

# ---------------------------------------------------------------------------
# The request itself

test_truncated_body if {
	inp := object.union(under(request(writer, "POST", "/api/tickets"), ["tickets:write"]), {"truncated_body": true})
	decide(inp) == {
		"verdict": "deny",
		"reasons": ["request body is larger than the inspection limit; a partial body is never judged"],
		"remember": [],
		"write": true,
	}
}

test_dot_dot_segment if {
	decide(request(reader, "GET", "/api/docs/../records/1")).reasons == [`path /api/docs/../records/1 is not normalised (it has a ".", "..", empty, backslash or ';' segment)`]
}

test_dot_segment if {
	decide(request(reader, "GET", "/api/./docs")).verdict == "deny"
	decide(request(reader, "GET", "/api/./docs")).reasons == [`path /api/./docs is not normalised (it has a ".", "..", empty, backslash or ';' segment)`]
}

test_empty_segments if {
	every path in ["/api//docs", "/api/docs/", "//api/docs"] {
		decide(request(reader, "GET", path)).reasons == [sprintf(`path %s is not normalised (it has a ".", "..", empty, backslash or ';' segment)`, [path])]
	}
}

test_backslash_segment if {
	decide(request(reader, "GET", `/api/docs/..\records`)).verdict == "deny"
}

# "..;" is ".." to Tomcat, Jetty and Spring, which strip path parameters: never judged.
test_path_parameter_segments if {
	every path in ["/api/docs/..;/records/1", "/api/docs;x/handbook", "/api/docs/handbook;jsessionid=1"] {
		decide(request(reader, "GET", path)).reasons == [sprintf(`path %s is not normalised (it has a ".", "..", empty, backslash or ';' segment)`, [path])]
	}
}

test_lower_case_method_is_not_judged if {
	d := decide(request(reader, "get", "/api/docs/handbook"))
	d.verdict == "deny"
	"method get has lower-case letters; only upper-case methods are judged" in d.reasons
}

test_missing_method_is_not_judged if {
	inp := request(reader, "GET", "/api/docs/handbook")
	decide(object.remove(inp, {"action"})).verdict == "deny"
}

test_action_path_must_match_parsed_path if {
	inp := object.union(request(reader, "GET", "/api/docs"), {"parsed_path": ["api", "records", "1"]})
	decide(inp).reasons == [`path /api/docs is not normalised (it has a ".", "..", empty, backslash or ';' segment)`]
}

test_parsed_path_missing if {
	decide(object.remove(request(reader, "GET", "/api/docs"), {"parsed_path"})).verdict == "deny"
}

test_action_missing if {
	d := decide(object.remove(request(reader, "GET", "/api/docs"), {"action"}))
	d.reasons == [`path (none) is not normalised (it has a ".", "..", empty, backslash or ';' segment)`]
}

test_request_reasons_are_all_listed if {
	inp := object.union(request(reader, "GET", "/api/../x"), {"truncated_body": true})
	decide(inp).reasons == [
		`path /api/../x is not normalised (it has a ".", "..", empty, backslash or ';' segment)`,
		"request body is larger than the inspection limit; a partial body is never judged",
	]
}

test_root_path_is_normalised if {
	decide(request(reader, "GET", "/")).reasons == ["no rule allows GET /"]
}

# ---------------------------------------------------------------------------
# REST routes

test_docs_routes if {
	every path in ["/api/docs", "/api/docs/a", "/api/docs/a/b/c"] {
		decide(request(reader, "GET", path)).verdict == "allow"
		decide(request(reader, "HEAD", path)).verdict == "allow"
	}
}

# Routes are keyed by method: a route under one method never covers another
# (a lower-case method is refused before any route is looked up).
test_routes_are_looked_up_by_method if {
	routes := {"GET": [{"name": "notes", "path": "/api/notes", "class": "read"}]}
	decide(request(reader, "GET", "/api/notes")).verdict == "allow" with data.agent.config.routes as routes
	decide(request(reader, "POST", "/api/notes")).reasons == ["no rule allows POST /api/notes"] with data.agent.config.routes as routes
	decide(request(reader, "get", "/api/notes")).reasons == ["method get has lower-case letters; only upper-case methods are judged"] with data.agent.config.routes as routes
}

# A route listed under several methods is one copy per method: the shipped copies agree.
test_shipped_head_docs_route_is_the_get_one if {
	some get_docs in data.agent.config.routes.GET
	get_docs.name == "read docs"
	data.agent.config.routes.HEAD == [get_docs]
}

test_glob_is_not_a_prefix if {
	decide(request(reader, "GET", "/api/docsx")).reasons == ["no rule allows GET /api/docsx"]
}

test_list_tickets if {
	d := decide(request(reader, "GET", "/api/tickets"))
	d.verdict == "allow"
	d.headers == {"x-authz-rule": "list tickets"}
}

test_read_record_remembers_pii if {
	decide(request(reader, "GET", "/api/records/42")) == {
		"verdict": "allow",
		"reasons": [`route "read record" allows agent spiffe://demo.local/agent/reader to GET /api/records/42`],
		"headers": {"x-authz-rule": "read record"},
		"remember": ["pii_read"],
		"write": false,
	}
}

test_record_star_is_one_segment if {
	decide(request(reader, "GET", "/api/records/42/history")).reasons == ["no rule allows GET /api/records/42/history"]
}

test_method_must_match if {
	decide(request(writer, "PUT", "/api/tickets")).reasons == ["no rule allows PUT /api/tickets"]
}

test_writer_creates_ticket if {
	decide(under(request(writer, "POST", "/api/tickets"), ["tickets:write"])) == {
		"verdict": "allow",
		"reasons": [`route "create ticket" allows agent spiffe://demo.local/agent/writer to POST /api/tickets`],
		"headers": {"x-authz-rule": "create ticket"},
		"remember": [],
		"write": true,
		"credential": {"audience": "demo-upstream", "scopes": ["tickets:write"], "ttl_seconds": 60},
	}
}

test_reader_may_not_delete_record if {
	# A deny, not a step-up: no approval can give a reader a writer's rights.
	decide(request(reader, "DELETE", "/api/records/42")).verdict == "deny"
}

test_first_matching_route_wins if {
	routes := {"GET": [
		{"name": "narrow", "path": "/api/docs/secret", "class": "read", "roles": ["writer"]},
		{"name": "broad", "path": "/api/docs/*", "class": "read", "roles": ["reader"]},
	]}
	decide(request(reader, "GET", "/api/docs/secret")).reasons == ["agent spiffe://demo.local/agent/reader may not narrow (needs role writer)"] with data.agent.config.routes as routes
	decide(request(reader, "GET", "/api/docs/public")).headers == {"x-authz-rule": "broad"} with data.agent.config.routes as routes
}

test_route_hosts if {
	routes := {"GET": [{"name": "local docs", "path": "/api/docs", "hosts": ["*.demo.local"], "class": "read"}]}
	decide(request(reader, "GET", "/api/docs")).verdict == "allow" with data.agent.config.routes as routes
	other := object.union(request(reader, "GET", "/api/docs"), {"action": {"host": "tools.example.com"}})
	decide(other).reasons == ["no rule allows GET /api/docs"] with data.agent.config.routes as routes
}

test_route_defaults_fail_closed if {
	# No class means write; no roles means any registered agent; no name gets one;
	# no scope means no task can cover it.
	routes := {"POST": [{"path": "/api/notes"}]}
	decide(request(reader, "POST", "/api/notes")).reasons == [
		"agent spiffe://demo.local/agent/reader is read-only and may not POST route 0",
		`writes need a task grant: open one with POST /v1/tasks (rule "POST route 0")`,
	] with data.agent.config.routes as routes
	decide(under(request(writer, "POST", "/api/notes"), ["notes:write"])).reasons == ["task task-1 (purpose triage) cannot cover POST route 0: the rule names no scope"] with data.agent.config.routes as routes
	d := decide(request(writer, "POST", "/api/notes")) with data.agent.config.routes as routes
		with data.agent.config.tasks.require_for_writes as false
	d.headers == {"x-authz-rule": "POST route 0"}
	not d.credential
}

test_route_with_invalid_roles if {
	routes := {"GET": [{"name": "odd", "path": "/api/odd", "class": "read", "roles": "reader"}]}
	decide(request(reader, "GET", "/api/odd")).reasons == [`rule "odd" has invalid roles (a list of role names is expected), so it allows nothing`] with data.agent.config.routes as routes
}

test_route_with_unknown_step_up if {
	routes := {"GET": [{"name": "odd", "path": "/api/odd", "class": "read", "step_up": {"kind": "aproval"}}]}
	decide(request(reader, "GET", "/api/odd")).reasons == [`rule "odd" has a step_up the policy cannot enforce, so it allows nothing`] with data.agent.config.routes as routes
}

test_route_with_empty_acr_values if {
	routes := {"GET": [{"name": "odd", "path": "/api/odd", "class": "read", "step_up": {"kind": "acr", "acr_values": []}}]}
	decide(request(reader, "GET", "/api/odd")).verdict == "deny" with data.agent.config.routes as routes
}

# ---------------------------------------------------------------------------
# Declared intent: it can only restrict

test_low_confidence_write_is_denied if {
	inp := object.union(under(request(writer, "POST", "/api/tickets"), ["tickets:write"]), {"intent": intent(0.3)})
	decide(inp).reasons == ["agent spiffe://demo.local/agent/writer declared an intent confidence of 0.3, below the 0.5 required for writes (create ticket)"]
}

test_confidence_at_the_floor_is_enough if {
	decide(object.union(under(request(writer, "POST", "/api/tickets"), ["tickets:write"]), {"intent": intent(0.5)})).verdict == "allow"
	decide(object.union(under(request(writer, "POST", "/api/tickets"), ["tickets:write"]), {"intent": intent(0.9)})).verdict == "allow"
}

test_intent_without_confidence if {
	decide(object.union(under(request(writer, "POST", "/api/tickets"), ["tickets:write"]), {"intent": intent(null)})).verdict == "allow"
}

test_low_confidence_read_is_allowed if {
	decide(object.union(request(reader, "GET", "/api/docs"), {"intent": intent(0.1)})).verdict == "allow"
}

test_intent_never_widens if {
	d := decide(object.union(under(request(reader, "POST", "/api/tickets"), ["tickets:write"]), {"intent": intent(1)}))
	d.verdict == "deny"
	count(d.reasons) == 2
}

test_intent_required_for_writes if {
	d := decide(under(request(writer, "POST", "/api/tickets"), ["tickets:write"])) with data.agent.config.intent.require_for_writes as true
	d.reasons == ["agent spiffe://demo.local/agent/writer declared no intent, but writes (create ticket) require one"]
	inp := object.union(under(request(writer, "POST", "/api/tickets"), ["tickets:write"]), {"intent": intent(0.8)})
	decide(inp).verdict == "allow" with data.agent.config.intent.require_for_writes as true
}

test_intent_not_required_for_reads if {
	decide(request(reader, "GET", "/api/docs")).verdict == "allow" with data.agent.config.intent.require_for_writes as true
}

test_low_confidence_tool_call if {
	inp := object.union(under(tool_call(writer, "create_ticket", {"title": "x"}), ["tickets:write"]), {"intent": {
		"purpose": "triage", "confidence": 0.2, "source": "mcp_meta", "asserted": true,
	}})
	decide(inp).reasons == ["agent spiffe://demo.local/agent/writer declared an intent confidence of 0.2, below the 0.5 required for writes (call tool create_ticket)"]
}

# ---------------------------------------------------------------------------
# Step-up: approvals

test_approved_delete_is_allowed if {
	inp := object.union(under(request(writer, "DELETE", "/api/records/42"), ["records:delete"]), approval("approved"))
	decide(inp) == {
		"verdict": "allow",
		"reasons": [
			`route "delete record" allows agent spiffe://demo.local/agent/writer to DELETE /api/records/42`,
			"a human approved this request",
		],
		"headers": {"x-authz-rule": "delete record"},
		"remember": [],
		"write": true,
		"credential": {"audience": "demo-upstream", "scopes": ["records:delete"], "ttl_seconds": 60},
	}
}

test_pending_approval_is_not_enough if {
	inp := object.union(under(request(writer, "DELETE", "/api/records/42"), ["records:delete"]), approval("pending"))
	decide(inp).verdict == "step_up"
}

test_rejected_approval_denies if {
	inp := object.union(under(request(writer, "DELETE", "/api/records/42"), ["records:delete"]), approval("rejected"))
	decide(inp).reasons == ["a human rejected this request (approval apr-1)"]
}

test_approval_does_not_help_a_reader if {
	inp := object.union(request(reader, "DELETE", "/api/records/42"), approval("approved"))
	decide(inp).verdict == "deny"
}

test_custom_approval_reason_and_defaults if {
	routes := {"DELETE": [{"name": "purge", "path": "/api/purge", "data_class": "confidential", "scope": "records:purge", "step_up": {"kind": "approval", "reason": "purging needs a second pair of eyes"}}]}
	decide(under(request(writer, "DELETE", "/api/purge"), ["records:purge"])).step_up == {
		"kind": "approval",
		"ttl_seconds": 900,
		"reason": "purging needs a second pair of eyes",
		"approvers": {"data_class": "confidential"},
		"data_class": "confidential",
		"redact": [],
	} with data.agent.config.routes as routes
}

test_mcp_delete_record_needs_approval if {
	d := decide(under(tool_call(writer, "delete_record", {"id": "42"}), ["records:delete"]))
	d.verdict == "step_up"
	d.step_up.kind == "approval"
	d.reasons == ["a human must approve before agent spiffe://demo.local/agent/writer may call tool delete_record"]
	approved := object.union(under(tool_call(writer, "delete_record", {"id": "42"}), ["records:delete"]), approval("approved"))
	decide(approved).verdict == "allow"
}

# ---------------------------------------------------------------------------
# Step-up: stronger authentication (acr)

test_payment_needs_mfa if {
	decide(under(request(writer, "POST", "/api/payments"), ["payments:write"])) == {
		"verdict": "step_up",
		"reasons": ["agent spiffe://demo.local/agent/writer must authenticate with urn:demo:acr:mfa (at most 300 seconds ago) to make payment"],
		"step_up": {
			"kind": "acr",
			"acr_values": ["urn:demo:acr:mfa"],
			"max_age": 300,
			"reason": "agent spiffe://demo.local/agent/writer must authenticate with urn:demo:acr:mfa (at most 300 seconds ago) to make payment",
		},
		"remember": [],
		"write": true,
	}
}

test_payment_with_mfa if {
	inp := object.union(under(request(writer, "POST", "/api/payments"), ["payments:write"]), acr_claims({"acr": "urn:demo:acr:mfa"}))
	decide(inp).reasons == [
		`route "make payment" allows agent spiffe://demo.local/agent/writer to POST /api/payments`,
		"agent spiffe://demo.local/agent/writer authenticated with urn:demo:acr:mfa",
	]
}

test_payment_with_weaker_acr if {
	inp := object.union(under(request(writer, "POST", "/api/payments"), ["payments:write"]), acr_claims({"acr": "urn:demo:acr:password"}))
	decide(inp).verdict == "step_up"
}

test_payment_with_recent_mfa if {
	inp := object.union(under(request(writer, "POST", "/api/payments"), ["payments:write"]), acr_claims({"acr": "urn:demo:acr:mfa", "auth_time": 1000}))
	decide(inp).verdict == "allow" with time.now_ns as 1200000000000
}

test_payment_with_old_mfa if {
	inp := object.union(under(request(writer, "POST", "/api/payments"), ["payments:write"]), acr_claims({"acr": "urn:demo:acr:mfa", "auth_time": 1000}))
	decide(inp).step_up.kind == "acr" with time.now_ns as 1301000000000
}

test_approval_does_not_replace_mfa if {
	inp := object.union(under(request(writer, "POST", "/api/payments"), ["payments:write"]), approval("approved"))
	decide(inp).verdict == "step_up"
}

test_reader_payment_is_a_deny if {
	decide(request(reader, "POST", "/api/payments")).verdict == "deny"
}

# ---------------------------------------------------------------------------
# MCP

test_open_methods if {
	every method in ["initialize", "notifications/initialized", "ping", "tools/list", "resources/list", "prompts/list", "notifications/cancelled"] {
		d := decide(rpc_request(reader, method, null, {}))
		d.verdict == "allow"
		d.headers == {"x-authz-rule": sprintf("mcp method %s", [method])}
	}
}

test_open_method_reason if {
	decide(rpc_request(ops, "tools/list", null, {})).reasons == ["MCP method tools/list is open to every registered agent, including spiffe://demo.local/agent/ops/backup"]
}

test_open_methods_need_a_registered_agent if {
	decide(rpc_request("spiffe://demo.local/agent/stranger", "tools/list", null, {})).verdict == "deny"
}

test_other_mcp_method if {
	decide(rpc_request(writer, "resources/read", "file:///etc/passwd", {})).reasons == ["MCP method resources/read is not allowed"]
}

test_mcp_post_without_json_rpc if {
	decide(request(writer, "POST", "/mcp")).reasons == ["MCP endpoint requires a JSON-RPC request body"]
}

test_mcp_session_stream if {
	decide(request(reader, "GET", "/mcp")) == {
		"verdict": "allow",
		"reasons": ["MCP session stream: registered agent spiffe://demo.local/agent/reader may GET /mcp"],
		"headers": {"x-authz-rule": "mcp session stream"},
		"remember": [],
		"write": false,
	}
	decide(request(writer, "DELETE", "/mcp")).verdict == "allow"
	decide(request("spiffe://demo.local/agent/stranger", "GET", "/mcp")).verdict == "deny"
}

test_mcp_other_http_method if {
	decide(request(writer, "PUT", "/mcp")).reasons == ["MCP endpoint /mcp accepts POST, GET and DELETE, not PUT"]
}

test_unknown_tool if {
	decide(tool_call(writer, "format_disk", {})).reasons == ["tool format_disk is not in the policy"]
}

test_mcp_request_without_a_method if {
	inp := object.union(request(writer, "POST", "/mcp"), {"mcp": {"id": 7, "name": "get_record", "is_notification": false}})
	d := decide(inp)
	d.verdict == "deny"
	d.reasons == ["MCP JSON-RPC request names no method"]
}

test_tool_call_without_name if {
	decide(tool_call(writer, null, {})).reasons == ["MCP tools/call request names no tool"]
}

test_get_record_remembers_pii if {
	decide(tool_call(reader, "get_record", {"id": "42"})) == {
		"verdict": "allow",
		"reasons": ["agent spiffe://demo.local/agent/reader may call tool get_record"],
		"headers": {"x-authz-rule": "mcp tool get_record"},
		"remember": ["pii_read"],
		"write": false,
	}
}

test_writer_creates_ticket_over_mcp if {
	decide(under(tool_call(writer, "create_ticket", {"title": "Printer on fire"}), ["tickets:write"])).headers == {"x-authz-rule": "mcp tool create_ticket"}
}

test_mcp_path_on_another_path_is_rest if {
	# A JSON-RPC body on a REST path is judged by the REST routes.
	inp := object.union(request(reader, "POST", "/api/search"), {"mcp": {
		"method": "tools/call", "name": "search_docs", "arguments": {}, "id": 1, "is_notification": false,
	}})
	decide(inp).reasons == ["no rule allows POST /api/search"]
}

# ---------------------------------------------------------------------------
# External sends and the ratchet

send(to) := under(tool_call(writer, "send_email", {"to": to, "subject": "hi", "body": "hello"}), ["email:send"])

test_internal_email_is_allowed if {
	decide(send("bob@demo.local")) == {
		"verdict": "allow",
		"reasons": ["agent spiffe://demo.local/agent/writer may call tool send_email"],
		"headers": {"x-authz-rule": "mcp tool send_email"},
		"remember": [],
		"write": true,
		"credential": {"audience": "demo-upstream", "scopes": ["email:send"], "ttl_seconds": 60},
	}
	decide(send("BOB@Demo.Local")).verdict == "allow"
	decide(send(["bob@demo.local", "ann@demo.local"])).verdict == "allow"
}

test_ratchet_after_pii_read if {
	inp := object.union(send("bob@demo.local"), session(["pii_read"]))
	decide(inp) == {
		"verdict": "step_up",
		"reasons": ["agent spiffe://demo.local/agent/writer already read restricted data in this task (pii_read); a human must approve before it may call tool send_email"],
		"step_up": {
			"kind": "approval",
			"ttl_seconds": 900,
			"reason": "agent spiffe://demo.local/agent/writer already read restricted data in this task (pii_read); a human must approve before it may call tool send_email",
			"approvers": {"data_class": "restricted"},
			"data_class": "internal",
			"redact": ["body"],
		},
		"remember": [],
		"write": true,
	}
}

test_ratchet_ignores_other_labels if {
	decide(object.union(send("bob@demo.local"), session(["docs_read"]))).verdict == "allow"
}

test_ratchet_with_approval if {
	inp := object.union_n([send("bob@demo.local"), session(["pii_read"]), approval("approved")])
	decide(inp).reasons == [
		"agent spiffe://demo.local/agent/writer may call tool send_email",
		"a human approved this request",
	]
}

# An approval covers the class it was decided for (approvers.data_class), or a less sensitive one.
# Approved for an outside recipient (internal), then the session read restricted data before the
# retry: the ratchet needs restricted approvers now, so the call steps up again and asks them.
test_an_approval_for_a_lower_class_does_not_cover_a_need_that_rose if {
	inp := object.union_n([send("eve@evil.example"), session(["pii_read"]), approval_for("approved", "internal")])
	d := decide(inp)
	d.verdict == "step_up"
	d.step_up.approvers == {"data_class": "restricted"}
	not authz.fast_allow with input as inp
	decide(object.union(inp, approval_for("approved", "restricted"))).verdict == "allow"
}

test_an_approval_covers_its_class_and_less_sensitive_ones if {
	delete := under(request(writer, "DELETE", "/api/records/42"), ["records:delete"]) # asks restricted approvers
	decide(object.union(delete, approval_for("approved", "restricted"))).verdict == "allow"
	decide(object.union(delete, approval_for("approved", "confidential"))).verdict == "step_up"
	outside := send("eve@evil.example") # asks internal approvers
	higher := object.union(outside, approval_for("approved", "confidential"))
	decide(higher).verdict == "allow"
	not authz.fast_allow with input as higher # the fast path takes only the exact class
}

# A class data_classes does not list, or none at all (a record from before approvers were kept),
# covers only the same unlisted class: never a listed one.
test_an_approval_of_an_unknown_or_missing_class_covers_nothing_else if {
	delete := under(request(writer, "DELETE", "/api/records/42"), ["records:delete"])
	decide(object.union(delete, approval_for("approved", "top-secret"))).verdict == "step_up"
	decide(object.union(delete, {"approval": {"id": "apr-1", "status": "approved"}})).verdict == "step_up"
	decide(object.union(delete, approval_for("approved", null))).verdict == "step_up"
	unlisted := object.union(delete, approval_for("approved", "top-secret"))
	decide(unlisted).verdict == "allow" with data.agent.config.routes.DELETE as [object.union(
		data.agent.config.routes.DELETE[0],
		{"step_up": {"kind": "approval", "ttl_seconds": 900, "approvers": {"data_class": "top-secret"}}},
	)]
}

test_external_recipient if {
	d := decide(send("eve@evil.example"))
	d.verdict == "step_up"
	d.reasons == ["agent spiffe://demo.local/agent/writer wants to call tool send_email for recipients outside demo.local (eve@evil.example); a human must approve"]
	d.step_up.approvers == {"data_class": "internal"}
}

test_lookalike_recipients_are_external if {
	every to in ["bob@evil.demo.local", "bob@demo.local@evil.example", "bob@demo.localhost", "@demo.local", "bob", "bob@demo.local, eve@evil.example", 42] {
		decide(send(to)).verdict == "step_up"
	}
}

test_one_external_recipient_in_a_list if {
	decide(send(["bob@demo.local", "eve@evil.example"])).reasons == ["agent spiffe://demo.local/agent/writer wants to call tool send_email for recipients outside demo.local (eve@evil.example); a human must approve"]
}

test_cc_and_bcc_count if {
	inp := under(tool_call(writer, "send_email", {"to": "bob@demo.local", "bcc": ["eve@evil.example"]}), ["email:send"])
	decide(inp).verdict == "step_up"
}

test_no_recipient if {
	decide(under(tool_call(writer, "send_email", {"subject": "hi"}), ["email:send"])).reasons == ["agent spiffe://demo.local/agent/writer wants to call tool send_email without a recipient the policy can check; a human must approve"]
}

test_ratchet_and_external_recipient_make_one_approval if {
	d := decide(object.union(send("eve@evil.example"), session(["pii_read", "docs_read"])))
	d.verdict == "step_up"
	count(d.reasons) == 2
	d.step_up.kind == "approval"
	d.step_up.approvers == {"data_class": "restricted"}
	d.step_up.reason == concat("; ", d.reasons)
	d.step_up.ttl_seconds == 900
}

test_external_send_approved if {
	inp := object.union_n([send("eve@evil.example"), session(["pii_read"]), approval("approved")])
	decide(inp).verdict == "allow"
}

test_reader_may_not_send_email if {
	decide(object.union(tool_call(reader, "send_email", {"to": "eve@evil.example"}), session(["pii_read"]))).verdict == "deny"
}

test_external_rest_route_reads_the_body if {
	routes := {"POST": [{"name": "send mail", "path": "/api/mail", "roles": ["writer"], "external": true, "scope": "email:send"}]}
	inside := object.union(under(request(writer, "POST", "/api/mail"), ["email:send"]), {"parsed_body": {"to": "bob@demo.local"}})
	decide(inside).verdict == "allow" with data.agent.config.routes as routes
	outside := object.union(under(request(writer, "POST", "/api/mail"), ["email:send"]), {"parsed_body": {"to": "eve@evil.example"}})
	decide(outside).verdict == "step_up" with data.agent.config.routes as routes
	no_body := under(request(writer, "POST", "/api/mail"), ["email:send"])
	decide(no_body).verdict == "step_up" with data.agent.config.routes as routes
}

# Stronger authentication is asked for first, then the approval.
test_acr_before_approval if {
	tools := {"send_email": {
		"class": "write", "roles": ["writer"], "external": true,
		"step_up": {"kind": "acr", "acr_values": ["urn:demo:acr:mfa"]},
	}}
	d := decide(object.union(send("bob@demo.local"), session(["pii_read"]))) with data.agent.config.mcp.tools as tools
	d.step_up == {
		"kind": "acr",
		"acr_values": ["urn:demo:acr:mfa"],
		"max_age": 300,
		"reason": "agent spiffe://demo.local/agent/writer must authenticate with urn:demo:acr:mfa (at most 300 seconds ago) to call tool send_email",
	}
	count(d.reasons) == 2
}

# ---------------------------------------------------------------------------
# Helpers and the shape of every answer

test_highest_class if {
	authz.highest_class({"internal", "restricted", "public"}) == "restricted"
	authz.highest_class({"internal", "top secret"}) == "top secret"
	authz.highest_class({"public"}) == "public"
}

test_default_decision_is_a_deny if {
	# Should every rule fail to produce an answer, the default still denies.
	d := decide(request(writer, "POST", "/mcp")) with authz.deny_reasons as set()
	d == {
		"verdict": "deny",
		"reasons": ["the policy reached no decision for this request, so it is denied"],
		"remember": [],
		"write": true,
	}
}

test_every_answer_is_well_formed if {
	inputs := [
		{},
		request(reader, "GET", "/api/docs"),
		request(reader, "POST", "/api/tickets"),
		request(writer, "DELETE", "/api/records/1"),
		under(request(writer, "POST", "/api/payments"), ["payments:write"]),
		request(writer, "POST", "/api/payments"),
		under(request(writer, "POST", "/api/tickets"), ["tickets:write"]),
		object.union(under(request(writer, "DELETE", "/api/records/1"), ["records:delete"]), approval("approved")),
		request(writer, "GET", "/api/../etc"),
		tool_call(reader, "search_docs", {}),
		tool_call(writer, "send_email", {"to": "eve@evil.example"}),
		rpc_request(reader, "ping", null, {}),
		object.union(request(reader, "GET", "/api/docs"), {"agent": null}),
		object.union(under(request(writer, "POST", "/api/tickets"), ["tickets:write"]), {"session": session_state([], 10, 0)}),
		object.union(request(reader, "GET", "/api/docs"), {"session": session_state([], 0, 120)}),
		object.union(request(reader, "GET", "/api/docs"), {"session": "odd"}),
		object.union(send("eve@evil.example"), session(["pii_read"])),
	]
	every inp in inputs {
		d := decide(inp)
		d.verdict in {"allow", "deny", "step_up"}
		is_boolean(d.write)
		count(d.reasons) > 0
		every reason in d.reasons {
			is_string(reason)
		}
		is_array(d.remember)
		well_formed_step_up(d)
		well_formed_headers(d)
		well_formed_credential(d)
	}
}

# A credential only on allow, with one scope, an audience and a ttl.
well_formed_credential(d) if not "credential" in object.keys(d)

well_formed_credential(d) if {
	d.verdict == "allow"
	is_string(d.credential.audience)
	count(d.credential.scopes) == 1
	d.credential.ttl_seconds > 0
}

well_formed_step_up(d) if {
	d.verdict != "step_up"
	not d.step_up
}

well_formed_step_up(d) if {
	d.verdict == "step_up"
	d.step_up.kind == "acr"
	is_string(d.step_up.reason)
	count(d.step_up.acr_values) > 0
}

well_formed_step_up(d) if {
	d.verdict == "step_up"
	d.step_up.kind == "approval"
	is_string(d.step_up.reason)
	is_string(d.step_up.data_class)
	is_string(d.step_up.approvers.data_class)
	is_array(d.step_up.redact)
	every field in d.step_up.redact {
		is_string(field)
	}
}

well_formed_headers(d) if {
	d.verdict != "allow"
}

well_formed_headers(d) if {
	d.verdict == "allow"
	is_string(d.headers["x-authz-rule"])
}

test_odd_domain_data_still_asks_for_approval if {
	d := decide(send("eve@evil.example")) with data.agent.config.internal_email_domains as ["demo.local", 7]
	d.verdict == "step_up"
	d.reasons == ["agent spiffe://demo.local/agent/writer wants to call tool send_email for recipients outside 7, demo.local (eve@evil.example); a human must approve"]
}

# Every answer names the input it never reads: the fast allow, the full policy's allow, a deny.
test_every_answer_names_the_input_it_never_reads if {
	read := request(reader, "GET", "/api/docs/handbook")
	authz.fast_allow.unread_input == ["session.recent"] with input as read
	authz.full_decision.unread_input == ["session.recent"] with input as read
	denied := request(reader, "DELETE", "/api/records/42")
	d := authz.decision with input as denied
	d.verdict == "deny"
	d.unread_input == ["session.recent"]
}
