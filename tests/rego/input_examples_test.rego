# The shipped policy's decisions on input documents the sidecar really builds.
#
# The inputs are sidecar/schema/examples/*.json: tests/unit/test_input_examples.py runs each
# described request through the sidecar's pipeline and fails when a committed example is not
# what it sends to OPA. `./taskw rego` (Taskfile.yml, task rego) loads every example as
# data.input_examples[NAME], one copy, outside the shipped bundle (rego/).
package input_examples_test

import data.agent.authz

# The examples were built at 2026-01-01T00:00:00Z; their task grants are judged at that time.
built_at_ns := 1767225600 * 1000000000

decide(inp) := d if {
	d := authz.decision with input as inp with time.now_ns as built_at_ns
}

example(name) := data.input_examples[name]

writer := "spiffe://demo.local/agent/writer"

# A new example needs a test here (and one that disappears takes its test along).
test_every_example_is_judged if {
	object.keys(data.input_examples) == {
		"rest-read-jwt",
		"mcp-tools-call-xfcc",
		"rest-write-under-task-jwt",
		"mcp-send-email-after-pii-read-jwt",
		"rest-delete-approved-jwt",
	}
}

test_reader_reads_a_handbook_page if {
	decide(example("rest-read-jwt")) == {
		"verdict": "allow",
		"reasons": [`route "read docs" allows agent spiffe://demo.local/agent/reader to GET /api/docs/handbook`],
		"headers": {"x-authz-rule": "read docs"},
		"remember": [],
		"write": false,
		"unread_input": ["session.recent"],
	}
}

test_mcp_write_without_a_task_is_denied if {
	decide(example("mcp-tools-call-xfcc")) == {
		"verdict": "deny",
		"reasons": [`writes need a task grant: open one with POST /v1/tasks (rule "mcp tool create_ticket")`],
		"remember": [],
		"write": true,
		"unread_input": ["session.recent"],
	}
}

test_write_under_the_task_gets_a_credential if {
	decide(example("rest-write-under-task-jwt")) == {
		"verdict": "allow",
		"reasons": [`route "create ticket" allows agent spiffe://demo.local/agent/writer to POST /api/tickets`],
		"headers": {"x-authz-rule": "create ticket"},
		"remember": [],
		"write": true,
		"credential": {"audience": "demo-upstream", "scopes": ["tickets:write"], "ttl_seconds": 60},
		"unread_input": ["session.recent"],
	}
}

# The same request once its task grant expired (the sidecar refuses it first; the policy too).
test_write_after_the_task_expired_is_denied if {
	inp := example("rest-write-under-task-jwt")
	d := authz.decision with input as inp with time.now_ns as inp.task.expires_at * 1000000000
	d.verdict == "deny"
	d.reasons == [sprintf("task %s (purpose triage) is not active: it expires at %d", [inp.task.id, inp.task.expires_at])]
}

# The session the sidecar reports counts this task's writes: at the limit, the next is denied.
test_write_at_the_session_limit_is_denied if {
	inp := example("rest-write-under-task-jwt")
	d := decide(object.union(inp, {"session": {"writes": 10}}))
	d.reasons == [sprintf("agent %s reached the limit of 10 writes in this session (%s)", [writer, inp.session.key])]
}

test_email_after_reading_a_record_needs_a_human if {
	d := decide(example("mcp-send-email-after-pii-read-jwt"))
	d.verdict == "step_up"
	d.step_up == {
		"kind": "approval",
		"ttl_seconds": 900,
		"reason": sprintf(
			"agent %s already read restricted data in this task (pii_read); a human must approve before it may call tool send_email",
			[writer],
		),
		"approvers": {"data_class": "restricted"},
		"data_class": "internal",
		"redact": ["body"],
	}
}

test_approved_delete_is_allowed if {
	decide(example("rest-delete-approved-jwt")) == {
		"verdict": "allow",
		"reasons": [
			`route "delete record" allows agent spiffe://demo.local/agent/writer to DELETE /api/records/42`,
			"a human approved this request",
		],
		"headers": {"x-authz-rule": "delete record"},
		"remember": [],
		"write": true,
		"credential": {"audience": "demo-upstream", "scopes": ["records:delete"], "ttl_seconds": 60},
		"unread_input": ["session.recent"],
	}
}

# Without the approval the same request is a step-up: the approval is what allowed it.
test_delete_without_the_approval_needs_one if {
	d := decide(object.union(example("rest-delete-approved-jwt"), {"approval": null}))
	d.verdict == "step_up"
	d.step_up.kind == "approval"
}

# checks.rego: a human said no ("denied" or "rejected"), whatever else would allow the call.
test_denied_or_rejected_approval_denies if {
	inp := example("rest-delete-approved-jwt")
	every status in ["denied", "rejected"] {
		d := decide(object.union(inp, {"approval": {"status": status}}))
		d.verdict == "deny"
		d.reasons == [sprintf("a human rejected this request (approval %s)", [inp.approval.id])]
		not d.credential
	}
}
