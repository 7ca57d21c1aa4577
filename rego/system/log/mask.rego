# Masks for OPA decision logs: secrets never reach a log.
#
# OPA evaluates data.system.log.mask for every decision log event; each string
# is a JSON pointer into the event (/input/... or /result/...) to erase.
# x-agent-approval-id and x-forwarded-client-cert are kept on purpose: an approval id
# and a certificate chain are not secrets, and reviewers need them.
package system.log

secret_headers := {
	"authorization",
	"proxy-authorization",
	"cookie",
	"x-agent-task-token",
	"x-api-key",
}

# METADATA
# description: What OPA erases from every decision-log event.
# scope: document
# entrypoint: true
mask contains sprintf("/input/attributes/request/http/headers/%s", [header]) if {
	some header in secret_headers
}

# More pointers to erase, from data: data.agent.config.log_mask, e.g.
# ["/input/parsed_body/password", "/input/attributes/request/http/body"].
mask contains pointer if {
	some pointer in data.agent.config.log_mask
	is_string(pointer)
	maskable(pointer)
}

# The MCP response path's queries (agent.response) carry the check's input under
# input.request: the same pointers are erased there too.
mask contains sprintf("/input/request/attributes/request/http/headers/%s", [header]) if {
	some header in secret_headers
}

mask contains concat("", ["/input/request", trim_prefix(pointer, "/input")]) if {
	some pointer in data.agent.config.log_mask
	is_string(pointer)
	startswith(pointer, "/input/")
}

maskable(pointer) if startswith(pointer, "/input/")

maskable(pointer) if startswith(pointer, "/result/")
