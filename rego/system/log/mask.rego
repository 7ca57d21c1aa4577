# Masks for OPA decision logs: secrets never reach a log.
#
# OPA evaluates data.system.log.mask for every decision log event; each string
# is a JSON pointer into the event (/input/... or /result/...) to erase.
# x-agent-approval-id and x-forwarded-client-cert are kept on purpose: an approval id
# and a certificate chain are not secrets, and reviewers need them.
package system.log

# The secret headers where the check's input has them. Written out: OPA evaluates this for every
# event, and a literal costs it no string building.

# METADATA
# description: What OPA erases from every decision-log event.
# scope: document
# entrypoint: true
mask contains pointer if {
	some pointer in {
		"/input/attributes/request/http/headers/authorization",
		"/input/attributes/request/http/headers/proxy-authorization",
		"/input/attributes/request/http/headers/cookie",
		"/input/attributes/request/http/headers/x-agent-task-token",
		"/input/attributes/request/http/headers/x-api-key",
	}
}

# The same headers where the MCP response path's queries (agent.response) carry the check's input
# (input.request). Only in those events: a pointer to nothing erases nothing, and each pointer
# costs OPA parsing and a walk of the event for every decision (the check's events are most).
mask contains pointer if {
	input.input.request
	some pointer in {
		"/input/request/attributes/request/http/headers/authorization",
		"/input/request/attributes/request/http/headers/proxy-authorization",
		"/input/request/attributes/request/http/headers/cookie",
		"/input/request/attributes/request/http/headers/x-agent-task-token",
		"/input/request/attributes/request/http/headers/x-api-key",
	}
}

# More pointers to erase, from data: data.agent.config.log_mask, e.g.
# ["/input/parsed_body/password", "/input/attributes/request/http/body"].
mask contains pointer if {
	some pointer in data.agent.config.log_mask
	is_string(pointer)
	maskable(pointer)
}

# The response path's copy of the check's input: the same pointers from data, in its events only.
mask contains concat("", ["/input/request", trim_prefix(pointer, "/input")]) if {
	input.input.request
	some pointer in data.agent.config.log_mask
	is_string(pointer)
	startswith(pointer, "/input/")
}

maskable(pointer) if startswith(pointer, "/input/")

maskable(pointer) if startswith(pointer, "/result/")
