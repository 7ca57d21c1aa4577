package agent.response_test

import data.agent.authz_test
import data.agent.response

reader := authz_test.reader

writer := authz_test.writer

tools := ["search_docs", "get_record", "create_ticket", "delete_record", "send_email"]

listing(id, method, items) := {
	"decision_id": "d-1",
	"request": authz_test.rpc_request(id, method, null, {}),
	"response": {"method": method, "items": items},
}

named(names) := [{"name": n, "pin": "same"} | some n in names]

output(id) := {
	"decision_id": "d-2",
	"request": authz_test.tool_call(id, "get_record", {"id": "42"}),
	"response": {"method": "tools/call", "tool": "get_record"},
}

test_reader_sees_no_write_tools if {
	d := response.decision with input as listing(reader, "tools/list", named(tools))
	d.visible == {"search_docs", "get_record"}
	object.keys(d.hidden) == {"create_ticket", "delete_record", "send_email"}
	d.redact == set()
}

test_writer_without_a_task_sees_no_task_bound_tools if {
	d := response.decision with input as listing(writer, "tools/list", named(tools))
	d.visible == {"search_docs", "get_record"}
}

test_writer_under_a_task_sees_the_tools_it_may_use if {
	inp := listing(writer, "tools/list", named(tools))
	tasked := object.union(inp, {"request": authz_test.under(inp.request, ["docs:read", "records:read", "tickets:write", "records:delete", "email:send"])})
	d := response.decision with input as tasked
	d.visible == {"search_docs", "get_record", "create_ticket", "delete_record", "send_email"}
}

test_a_changed_tool_is_hidden_until_re_approved if {
	items := [{"name": "search_docs", "pin": "changed"}, {"name": "get_record", "pin": "new"}]
	d := response.decision with input as listing(reader, "tools/list", items)
	d.visible == {"get_record"}
	contains(d.hidden.search_docs, "changed since this session first listed it")
}

test_prompts_and_resources_are_filtered_by_their_use if {
	d := response.decision with input as listing(reader, "resources/list", [{"name": "file:///etc/passwd"}])
	d.visible == set()
	contains(d.hidden["file:///etc/passwd"], "resources/read")
}

test_an_empty_list_and_no_items if {
	d := response.decision with input as listing(reader, "tools/list", [])
	d.visible == set()
	e := response.decision with input as object.union(output(reader), {"response": {"method": "tools/list"}})
	e.visible == set()
}

test_reader_output_is_redacted_by_data_class if {
	d := response.decision with input as output(reader)
	d.redact == {{
		"data_class": "pii",
		"fields": ["owner_email"],
		"patterns": ["[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9.-]{1,253}\\.[A-Za-z]{2,24}"],
	}}
}

test_a_cleared_role_sees_the_output_whole if {
	d := response.decision with input as output(writer)
	d.redact == set()
}

test_a_data_class_without_patterns_or_fields if {
	d := response.decision with input as output(reader) with data.agent.config as object.union(
		object.remove(data.agent.config, ["response"]),
		{"response": {"redact": {"x": {"cleared_roles": []}}}},
	)
	d.redact == {{"data_class": "x", "fields": [], "patterns": []}}
}
