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
#
# Order: identity denies, then request denies, then access denies; the first
# non-empty group is the answer and lists all of its reasons. Only when nothing
# denies can a step-up be asked for; only when no step-up is needed is the
# request allowed. Anything unforeseen ends in the default deny.
package agent.authz

cfg := data.agent.config

# ---------------------------------------------------------------------------
# The decision document

default decision := {
	"verdict": "deny",
	"reasons": ["the policy reached no decision for this request, so it is denied"],
	"remember": [],
}

decision := {
	"verdict": "deny",
	"reasons": sort(deny_reasons),
	"remember": [],
} if {
	count(deny_reasons) > 0
}

decision := {
	"verdict": "step_up",
	"reasons": sort({s.reason | some s in step_ups}),
	"step_up": step_up_document,
	"remember": [],
} if {
	count(deny_reasons) == 0
	count(step_ups) > 0
}

decision := {
	"verdict": "allow",
	"reasons": array.concat([rule.allow_reason], sort(allow_notes)),
	"headers": {"x-authz-rule": rule.name},
	"remember": sort({label | some label in rule.remember; is_string(label)}),
} if {
	count(deny_reasons) == 0
	count(step_ups) == 0
}

# The first group of deny reasons that is not empty.
deny_reasons := identity_denies if {
	count(identity_denies) > 0
} else := request_denies if {
	count(request_denies) > 0
} else := access_denies

# ---------------------------------------------------------------------------
# Who is calling

# The verified caller (input.agent), when there is one.
agent := input.agent if is_object(input.agent)

spiffe_id := agent.spiffe_id if is_string(agent.spiffe_id)

# How reasons name the agent.
agent_name := sprintf("%v", [object.get(agent, "spiffe_id", "(without a SPIFFE ID)")])

# The trust domain written in the SPIFFE ID itself: spiffe://<trust domain>/<path>.
id_trust_domain := td if {
	startswith(spiffe_id, "spiffe://")
	td := split(substring(spiffe_id, count("spiffe://"), -1), "/")[0]
	td != ""
}

# Registered by exact SPIFFE ID (an object key, never a prefix) ...
registered if is_object(cfg.agents[spiffe_id])

# ... or by a glob pattern ("*" stays within one path segment, "**" crosses them).
registered if count(matching_patterns) > 0

matching_patterns contains entry if {
	some entry in cfg.agent_patterns
	is_string(entry.pattern)
	glob.match(entry.pattern, ["/"], spiffe_id)
}

# An exact entry wins; otherwise the union of the roles of every matching pattern.
agent_roles := {role | some role in cfg.agents[spiffe_id].roles} if {
	is_object(cfg.agents[spiffe_id])
} else := {role | some entry in matching_patterns; some role in entry.roles}

identity_denies contains "no verified agent identity" if not agent

identity_denies contains msg if {
	agent
	not id_trust_domain
	msg := sprintf("agent %s does not have a valid SPIFFE ID", [agent_name])
}

identity_denies contains msg if {
	td := id_trust_domain
	not td in cfg.trust_domains
	msg := sprintf("agent %s belongs to trust domain %s, which this policy does not trust", [agent_name, td])
}

identity_denies contains msg if {
	td := id_trust_domain
	object.get(agent, "trust_domain", null) != td
	msg := sprintf(
		"agent %s claims trust domain %v, which does not match its SPIFFE ID",
		[agent_name, object.get(agent, "trust_domain", null)],
	)
}

identity_denies contains msg if {
	agent
	not registered
	msg := sprintf("agent %s is not registered in the policy", [agent_name])
}

# ---------------------------------------------------------------------------
# Is the request itself judgeable

request_denies contains "request body is larger than the inspection limit; a partial body is never judged" if {
	input.truncated_body == true
}

request_denies contains msg if {
	not path_normalised
	msg := sprintf(
		"path %v is not normalised (it has a \".\", \"..\", empty or backslash segment)",
		[object.get(input, ["action", "path"], "(none)")],
	)
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

# ---------------------------------------------------------------------------
# The rule that covers the request (REST route, MCP tool, MCP method)

# Every rule object has at least these fields; data overrides them.
# A rule without a class is a write: a missing field never loosens a check.
rule_defaults := {
	"class": "write",
	"data_class": "unclassified",
	"roles": [],
	"step_up": null,
	"remember": [],
	"external": false,
	"recipient_arguments": ["to"],
}
