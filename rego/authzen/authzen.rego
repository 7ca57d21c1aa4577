# The AuthZEN entrypoint of the shipped bundle: OpenID AuthZEN 1.0 questions about
# agents, answered by the same decision (data.agent.authz.decision) and the same data
# (data.agent.config) as every ext_authz check. docs/authzen.md has the contract.
#
# Input: {subject, action, resource, context}, as the PEP sent them.
#   subject   {"type": "agent", "id": "<the agent's SPIFFE ID>"}
#   a route   action {"name": "<HTTP method>"},
#             resource {"type": "route", "id": "<path>", "properties": {"host": "<host>"}}
#   a tool    action {"name": "<MCP tool>", "properties": {"arguments": {...}}},
#             resource {"type": "mcp_server", "id": "<MCP endpoint path>", "properties": {"host": "<host>"}}
# Output: {"decision": bool, "context": {"verdict", "reasons"[, "step_up"]}}.
#
# The question is asked as of a call outside any task, before any session history, with
# no human approval and no declared intent: what needs one of those (a task for writes,
# an approval, stronger authentication) is not permitted here, and the reasons say why.
# A step-up is `false`: the PEP cannot enforce it by itself.
package authzen

import data.agent.authz
import data.agent.identity

cfg := data.agent.config

# METADATA
# description: What the sidecar asks for every AuthZEN evaluation (authzen.decision_path).
# entrypoint: true
default decision := {"decision": false, "context": {"verdict": "deny", "reasons": ["the AuthZEN input is incomplete"]}}

decision := {"decision": false, "context": {"verdict": "deny", "reasons": sort(problems)}} if {
	count(problems) > 0
} else := {"decision": verdict.verdict == "allow", "context": verdict_context}

# The check's decision for the call the AuthZEN request describes.
verdict := answer if {
	# The one way to ask the check's rules about a call that is not this input.
	# regal ignore:with-outside-test-context
	answer := authz.decision with input as check_input
}

verdict_context := object.filter(verdict, {"verdict", "reasons", "step_up"})

# METADATA
# description: Candidate actions for the Action Search API (authzen.actions_path); each is then evaluated.
# entrypoint: true
default actions := []

actions := [{"name": method} | some method in route_methods] if input.resource.type == "route"

actions := [{"name": name} | some name in object.keys(cfg.mcp.tools)] if input.resource.type == "mcp_server"

# routes is keyed by method: a method with at least one route is a candidate.
route_methods contains method if {
	some method, method_routes in cfg.routes
	count(method_routes) > 0
}

# Questions this entrypoint does not answer (each a reason, so the PEP learns which).
problems contains msg if {
	input.subject.type != "agent"
	msg := sprintf("subject type %v is not answered here; this policy answers questions about agents (type agent)", [input.subject.type])
}

problems contains msg if {
	not input.resource.type in {"route", "mcp_server"}
	msg := sprintf("resource type %v is not answered here (route or mcp_server)", [input.resource.type])
}

problems contains msg if {
	not regex.match(`^/[^?#]*$`, input.resource.id)
	msg := sprintf("resource id %v is not a path (it starts with / and has no query or fragment)", [input.resource.id])
}

# ---------------------------------------------------------------------------
# The check input (sidecar/schema/input.schema.json) for the call described

is_tool if input.resource.type == "mcp_server"

method := "POST" if is_tool

else := input.action.name

host := object.get(input.resource, ["properties", "host"], "")

arguments := object.get(input.action, ["properties", "arguments"], {})

# An ID that is not a SPIFFE ID has none: the check's identity rules then deny it, saying why.
default subject_trust_domain := ""

subject_trust_domain := identity.trust_domain(input.subject.id)

mcp := {"method": "tools/call", "name": input.action.name, "arguments": arguments, "id": 1, "is_notification": false} if is_tool

else := null

check_input := {
	"attributes": {"request": {"http": {"method": method, "path": input.resource.id, "host": host, "headers": {}}}},
	"parsed_path": split(trim_prefix(input.resource.id, "/"), "/"),
	"parsed_query": {},
	"parsed_body": body,
	"truncated_body": false,
	"version": {"ext_authz": "v3", "encoding": "protojson"},
	"action": {"method": method, "host": host, "path": input.resource.id, "read_only": method in {"GET", "HEAD", "OPTIONS"}},
	"agent": {
		"spiffe_id": input.subject.id,
		"trust_domain": subject_trust_domain,
		"path": agent_path,
		"identity_source": "authzen",
		"claims": {},
	},
	"delegation": {"chain": [], "depth": 0},
	"task": null,
	"session": null,
	"agent_history": null,
	"mcp": mcp,
	"approval": null,
	"approval_view": null,
	"intent": null,
}

body := {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": input.action.name, "arguments": arguments}} if {
	is_tool
} else := null

agent_path := concat("", ["/", concat("/", array.slice(split(input.subject.id, "/"), 3, 1000))])
