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
#   challenge.rego the MCP scope challenge (403 insufficient_scope) of a deny
#
# Who is calling comes from package agent.identity (rego/agent/identity), which
# the task API's decision (agent.tasks) shares. Who may approve a step-up is
# package agent.approvals (rego/agent/approvals).
#
# Order: identity denies, then request denies, then access denies; the first
# non-empty group is the answer and lists all of its reasons. Only when nothing
# denies can a step-up be asked for; only when no step-up is needed is the
# request allowed. Anything unforeseen ends in the default deny.

# METADATA
# description: |
#   The input is the sidecar's check input (sidecar/schema/input.schema.json):
#   `opa check --strict --schema sidecar/schema` (./taskw rego) type-checks every
#   input reference of this package against it, so a misspelt field is an error.
# scope: package
# schemas:
#   - input: schema["input.schema"]
package agent.authz

import data.agent.identity

cfg := data.agent.config

# ---------------------------------------------------------------------------
# The decision document

# Every answer says whether the call is a write (see write below), so the
# sidecar counts the session's writes the way the policy judges them.
#
# The common allow is answered by one rule body (fast_allow, fast.rego); every other call by
# full_decision, the rules below. Both give the same document where fast_allow is defined.

# METADATA
# description: What the sidecar asks for every call (opa.decision_path).
# entrypoint: true
decision := fast_allow if {
	fast_allow
} else := full_decision

full_decision := object.union(verdict_document, {"write": write, "unread_input": unread_input})

# Input this policy never reads, named for the sidecar (decision document, `unread_input`): it
# leaves them out of the next calls' input, so OPA decodes and logs fewer bytes (the recent window
# is over half of a typical input). An answer that stops naming one makes the sidecar ask again
# with it, so a policy that starts reading input.session.recent must drop it here, and
# tests/fuzz/test_unread_input.py fails while a rule of this bundle may read it.
unread_input := ["session.recent"]

default verdict_document := {
	"verdict": "deny",
	"reasons": ["the policy reached no decision for this request, so it is denied"],
	"remember": [],
}

# One answer, tried in order: deny, else step-up, else allow.
verdict_document := object.union(
	{
		"verdict": "deny",
		"reasons": sort(deny_reasons),
		"remember": [],
	},
	scope_challenge,
) if {
	count(deny_reasons) > 0
} else := {
	"verdict": "step_up",
	"reasons": sort({s.reason | some s in step_ups}),
	"step_up": step_up_document,
	"remember": [],
} if {
	count(step_ups) > 0
} else := allow_document

# On allow, a rule with a credential also asks the sidecar to mint one (task.rego).
allow_document := object.union(
	{
		"verdict": "allow",
		"reasons": allow_reasons,
		"headers": {"x-authz-rule": rule.name},
		"remember": remember,
	},
	credential_document,
)

# The first reason names the rule (its allow_reason, rest.rego and mcp.rego).
allow_reasons := [allow_reason] if {
	count(allow_notes) == 0
} else := array.concat([allow_reason], sort(allow_notes))

remember := [] if {
	rule.remember == []
} else := sort({label | some label in rule.remember; is_string(label)})

# Is the call a write: the matched rule's class (a rule without one is a write);
# without a rule, any HTTP method that is not read-only. Never undefined.
write if {
	is_write
} else := false if {
	rule
} else := false if {
	input.action.read_only == true
} else := true

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

# The caller's roles. For an agent registered by its exact ID this is the list in
# data as it is (the checks only ask whether a role is in it), which saves
# building identity.roles on every call; otherwise identity.roles.
agent_roles := roles if {
	roles := cfg.agents[input.agent.spiffe_id].roles
	is_array(roles)
} else := identity.roles

identity_denies := identity.denies

# ---------------------------------------------------------------------------
# Is the request itself judgeable

# None of the request reasons (request_problems, here and in task.rego and
# session.rego) for a request that passes these quick checks at once, the common
# case; otherwise every reason request_problems finds. Each quick check implies
# that its request_problems rules find nothing; one that fails only means the
# rules are asked (a delegated call, the root path "/", an odd field ...).
request_denies := set() if {
	input.truncated_body == false
	is_array(input.parsed_path)
	input.action.path == concat("/", array.concat([""], input.parsed_path))
	not regex.match(`//|/\.{0,2}$|/\.{1,2}/|[\\;]`, input.action.path) # see odd_segment
	upper(input.action.method) == input.action.method
	type_name(input.task) in {"null", "object"}
	input.delegation == {"chain": [], "depth": 0}
	readable_session_input
	readable_agent_history_input
} else := request_problems

request_problems contains "request body is larger than the inspection limit; a partial body is never judged" if {
	input.truncated_body == true
}

request_problems contains msg if {
	not path_normalised
	msg := sprintf(
		"path %v is not normalised (it has a \".\", \"..\", empty, backslash or ';' segment)",
		[object.get(input, ["action", "path"], "(none)")],
	)
}

# Methods are case-sensitive and servers disagree on lower-case ones: the method judged is
# the method sent, and only an upper-case one is judged at all.
request_problems contains msg if {
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

# An odd segment is "." or "..", empty ("//", a trailing "/"; except the root path "/"
# itself), or has a "\" (some servers read it as "/") or a ";" (Tomcat, Jetty and Spring
# strip ";params" from a segment, so "..;" becomes ".."; Envoy does not: a path parameter is
# never judged, and Envoy's route and the sidecar refuse it too). One regex per segment.
odd_segment if {
	input.parsed_path != [""]
	some segment in input.parsed_path
	regex.match(`^\.{0,2}$|[\\;]`, segment)
}

# ---------------------------------------------------------------------------
# The rule that covers the request (REST route, MCP tool, MCP method)

# A REST route (rest.rego), else an MCP tool, an MCP method open to every
# registered agent, or the MCP session stream (mcp.rego). They exclude each other;
# the chain stops at the one that applies instead of asking all of them.
rule := route_rule if {
	route
} else := tool_rule if {
	tool
} else := open_method_rule if {
	open_method
} else := session_stream_rule if {
	session_stream
}

# How reasons name what the request does, for the same rule: built only when a
# deny or step-up reason needs it.
rule_action := route_name if {
	route
} else := sprintf("call tool %s", [rpc.name]) if {
	tool
} else := sprintf("use MCP method %v", [rpc.method]) if {
	open_method
} else := sprintf("%v %v", [input.action.method, input.action.path]) if {
	session_stream
}

# The first reason of an allow, for the same rule.
allow_reason := route_allow_reason if {
	route
} else := tool_allow_reason if {
	tool
} else := open_method_allow_reason if {
	open_method
} else := session_stream_allow_reason if {
	session_stream
}

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
