# Who is calling: the verified caller (input.agent) and what the policy knows
# about SPIFFE IDs. Shared by agent.authz (every call) and agent.tasks (the
# task API), whose inputs both carry the caller in input.agent.
package agent.identity

cfg := data.agent.config

# The verified caller (input.agent), when there is one.
agent := input.agent if is_object(input.agent)

spiffe_id := agent.spiffe_id if is_string(agent.spiffe_id)

# How reasons name the caller (its SPIFFE ID as it is, so no sprintf on every call).
agent_name := spiffe_id if {
	spiffe_id
} else := sprintf("%v", [object.get(agent, "spiffe_id", "(without a SPIFFE ID)")])

# The caller's roles (an empty set when it has none or is unknown).
default roles := set()

roles := roles_of(spiffe_id)

# Helpers, so that a missing spiffe_id counts as invalid and unregistered.
valid_id if trust_domain(spiffe_id)

caller_registered if registered(spiffe_id)

# Every reason why the caller is not a trusted, registered agent. A caller that
# passes these quick checks at once (the common case) has none; any other caller
# gets denies_found, the reasons below (the quick checks imply none of them applies).
denies := set() if {
	id := input.agent.spiffe_id
	is_string(id)
	startswith(id, "spiffe://")
	td := split(id, "/")[2] # as trust_domain(id)
	td != ""
	input.agent.trust_domain == td
	td in cfg.trust_domains
	is_object(cfg.agents[id]) # registered by its exact ID (by a pattern: denies_found)
} else := denies_found

denies_found contains "no verified agent identity" if not agent

denies_found contains msg if {
	agent
	not valid_id
	msg := sprintf("agent %s does not have a valid SPIFFE ID", [agent_name])
}

denies_found contains msg if {
	td := trust_domain(spiffe_id)
	not td in cfg.trust_domains
	msg := sprintf("agent %s belongs to trust domain %s, which this policy does not trust", [agent_name, td])
}

denies_found contains msg if {
	td := trust_domain(spiffe_id)
	object.get(agent, "trust_domain", null) != td
	msg := sprintf(
		"agent %s claims trust domain %v, which does not match its SPIFFE ID",
		[agent_name, object.get(agent, "trust_domain", null)],
	)
}

denies_found contains msg if {
	agent
	not caller_registered
	msg := sprintf("agent %s is not registered in the policy", [agent_name])
}

# ---------------------------------------------------------------------------
# Any SPIFFE ID

# The trust domain written in the ID itself: spiffe://<trust domain>/<path>.
trust_domain(id) := td if {
	is_string(id)
	startswith(id, "spiffe://")
	td := split(id, "/")[2] # ["spiffe:", "", <trust domain>, <path segments>...]
	td != ""
}

# A registered agent of a trusted domain.
trusted(id) if {
	trust_domain(id) in cfg.trust_domains
	registered(id)
}

# Registered by exact SPIFFE ID (an object key, never a prefix) ...
registered(id) if is_object(cfg.agents[id])

# ... or by a glob pattern ("*" stays within one path segment, "**" crosses them).
registered(id) if count(matching_patterns(id)) > 0

matching_patterns(id) := {entry |
	is_string(id)
	some entry in cfg.agent_patterns
	is_string(entry.pattern)
	glob.match(entry.pattern, ["/"], id)
}

# An exact entry wins; otherwise the union of the roles of every matching pattern.
roles_of(id) := {role | some role in cfg.agents[id].roles} if {
	is_object(cfg.agents[id])
} else := {role | some entry in matching_patterns(id); some role in entry.roles}
