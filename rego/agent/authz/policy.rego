# The default authorization policy shipped with authz-sidecar.
#
# Query: data.agent.authz.decision (the sidecar's default decision_path
# agent/authz/decision). Everything the policy knows about agents, routes and
# tools is data: data.agent.config (rego/agent/config/data.json).
#
# Files of this package:
#   policy.rego   the decision document, identity and request checks (this file)
#   rest.rego     REST routes
#   mcp.rego      the MCP (JSON-RPC) endpoint
#   checks.rego   roles, writes and declared intent
#   step_up.rego  human approval, stronger authentication, the external-send ratchet
#   task.rego     task grants (scopes), delegation depth, just-in-time credentials
#   session.rego  what the agent already did in this session: write and rate limits
#
# Who is calling comes from package agent.identity (rego/agent/identity), which
# the task API's decision (agent.tasks) shares. Who may approve a step-up is
# package agent.approvals (rego/agent/approvals).
#
# Order: identity denies, then request denies, then access denies; the first
# non-empty group is the answer and lists all of its reasons. Only when nothing
# denies can a step-up be asked for; only when no step-up is needed is the
# request allowed. Anything unforeseen ends in the default deny.
package agent.authz

import data.agent.identity

cfg := data.agent.config

# ---------------------------------------------------------------------------
# The decision document

# Every answer says whether the call is a write (see write below), so the
# sidecar counts the session's writes the way the policy judges them.
decision := object.union(verdict_document, {"write": write})

default verdict_document := {
	"verdict": "deny",
	"reasons": ["the policy reached no decision for this request, so it is denied"],
	"remember": [],
}

verdict_document := {
	"verdict": "deny",
	"reasons": sort(deny_reasons),
	"remember": [],
} if {
	count(deny_reasons) > 0
}

verdict_document := {
	"verdict": "step_up",
	"reasons": sort({s.reason | some s in step_ups}),
	"step_up": step_up_document,
	"remember": [],
} if {
	count(deny_reasons) == 0
	count(step_ups) > 0
}

# On allow, a rule with a credential also asks the sidecar to mint one (task.rego).
verdict_document := object.union(
	{
		"verdict": "allow",
		"reasons": array.concat([rule.allow_reason], sort(allow_notes)),
		"headers": {"x-authz-rule": rule.name},
		"remember": sort({label | some label in rule.remember; is_string(label)}),
	},
	credential_document,
) if {
	count(deny_reasons) == 0
	count(step_ups) == 0
}

# Is the call a write: the matched rule's class (a rule without one is a write);
# without a rule, any HTTP method that is not read-only. Never undefined.
default write := true

write := false if {
	rule
	not is_write
}

write := false if {
	not rule
	input.action.read_only == true
}

# The first group of deny reasons that is not empty.
deny_reasons := identity_denies if {
	count(identity_denies) > 0
} else := request_denies if {
	count(request_denies) > 0
} else := access_denies

# ---------------------------------------------------------------------------
# Who is calling (package agent.identity, shared with agent.tasks)

agent := identity.agent

# How reasons name the agent.
agent_name := identity.agent_name

agent_roles := identity.roles

identity_denies := identity.denies

# ---------------------------------------------------------------------------
# Is the request itself judgeable

request_denies contains "request body is larger than the inspection limit; a partial body is never judged" if {
	input.truncated_body == true
}

request_denies contains msg if {
	not path_normalised
	msg := sprintf(
		"path %v is not normalised (it has a \".\", \"..\", empty, backslash or ';' segment)",
		[object.get(input, ["action", "path"], "(none)")],
	)
}

# Methods are case-sensitive and servers disagree on lower-case ones: the method judged is
# the method sent, and only an upper-case one is judged at all.
request_denies contains msg if {
	method := object.get(input, ["action", "method"], "")
	upper(method) != method
	msg := sprintf("method %v has lower-case letters; only upper-case methods are judged", [method])
}

# action.path is exactly "/" + parsed_path joined with "/", and no segment is odd.
path_normalised if {
	is_array(input.parsed_path)
	input.action.path == concat("/", array.concat([""], input.parsed_path))
	not odd_segment
}

odd_segment if {
	some segment in input.parsed_path
	segment in {".", ".."}
}

# An empty segment ("//", a trailing "/"), except the root path "/" itself.
odd_segment if {
	input.parsed_path != [""]
	some segment in input.parsed_path
	segment == ""
}

# Some servers read "\" as "/".
odd_segment if {
	some segment in input.parsed_path
	contains(segment, "\\")
}

# Tomcat, Jetty and Spring strip ";params" from a segment ("..;" becomes ".."), Envoy does not:
# a path parameter is never judged (Envoy's route and the sidecar refuse it too).
odd_segment if {
	some segment in input.parsed_path
	contains(segment, ";")
}

# ---------------------------------------------------------------------------
# The rule that covers the request (REST route, MCP tool, MCP method)

# Every rule object has at least these fields; data overrides them.
# A rule without a class is a write: a missing field never loosens a check.
# "scoped" is set by the policy (never by data) on routes and tools: a task must
# grant their scope. The MCP methods open to every agent are not scoped.
rule_defaults := {
	"class": "write",
	"data_class": "unclassified",
	"roles": [],
	"step_up": null,
	"remember": [],
	"external": false,
	"recipient_arguments": ["to"],
	"scope": null,
	"scoped": false,
	"credential": null,
	"redact": [],
}
