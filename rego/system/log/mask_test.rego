package system.log_test

import data.system.log

headers := "/input/attributes/request/http/headers"

secret_headers := ["authorization", "proxy-authorization", "cookie", "x-agent-task-token", "x-api-key"]

# A decision-log event of the MCP response path: its query's input carries the check's input.
response_event := {"path": "agent/response/decision", "input": {"request": {"attributes": {}}}}

# A check's event: no input.request.
check_event := {"path": "agent/authz/decision", "input": {"attributes": {}}}

test_secret_headers_are_erased if {
	every header in secret_headers {
		sprintf("%s/%s", [headers, header]) in log.mask
	}
}

# The same headers where the MCP response path's queries carry the check's input (input.request).
test_secret_headers_are_erased_in_the_response_paths_copy_too if {
	m := log.mask with input as response_event
	every header in secret_headers {
		sprintf("/input/request%s/%s", [trim_prefix(headers, "/input"), header]) in m
	}
}

# A pointer into input.request erases nothing in a check's event: OPA is not given any there.
test_a_checks_event_gets_no_pointers_into_the_response_paths_copy if {
	m := log.mask with input as check_event
	count(m) == 8
	every pointer in m {
		not startswith(pointer, "/input/request/")
	}
	all_of_them := log.mask with input as response_event
	count(all_of_them) == 16
}

test_approval_id_and_xfcc_are_kept if {
	not sprintf("%s/x-agent-approval-id", [headers]) in log.mask
	not sprintf("%s/x-forwarded-client-cert", [headers]) in log.mask
}

# The shipped data also erases raw bodies and the JSON-RPC arguments duplicated in parsed_body;
# reviewers see input.mcp.arguments once, minus the fields a policy author marks secret.
test_shipped_mask_is_the_secret_headers_and_raw_bodies if {
	m := log.mask with input as response_event
	count(m) == 16
	"/input/attributes/request/http/body" in m
	"/input/attributes/request/http/rawBody" in m
	"/input/parsed_body/params/arguments" in m
}

test_data_adds_pointers if {
	extra := ["/input/parsed_body/password", "/result/headers/x-secret"]
	m := log.mask with data.agent.config.log_mask as extra with input as response_event
	"/input/parsed_body/password" in m
	"/result/headers/x-secret" in m
	"/input/request/parsed_body/password" in m
	count(m) == 13
	in_a_check := log.mask with data.agent.config.log_mask as extra with input as check_event
	count(in_a_check) == 7
}

test_data_pointers_outside_the_event_are_ignored if {
	m := log.mask with data.agent.config.log_mask as ["/labels/id", "input/parsed_body", 42, ""]
		with input as response_event
	count(m) == 10
}

test_mask_without_data if {
	m := log.mask with data.agent.config as {} with input as response_event
	count(m) == 10
}

# The MCP response path's queries carry the check input under input.request.
test_the_response_paths_copy_of_the_check_input_is_masked_the_same if {
	m := log.mask with input as response_event
	"/input/request/attributes/request/http/headers/authorization" in m
	"/input/request/parsed_body/params/arguments" in m
	"/input/request/attributes/request/http/body" in m
}
