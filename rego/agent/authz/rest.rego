# REST routes: data.agent.config.routes, first matching route wins.
package agent.authz

# Index of the first route whose method, path glob (and hosts, if given) match.
route_index := min(matched) if {
	not is_mcp
	matched := {i | some i, candidate in cfg.routes; route_matches(candidate)}
	count(matched) > 0
}

route := cfg.routes[route_index]

route_name := sprintf("%v", [object.get(route, "name", sprintf("route %d", [route_index]))])

rule := object.union(object.union(rule_defaults, route), {
	"scoped": true,
	"name": route_name,
	"action": route_name,
	"allow_reason": sprintf(
		"route %q allows agent %s to %v %v",
		[route_name, agent_name, input.action.method, input.action.path],
	),
})

# The arguments of a REST call are its JSON body.
call_arguments := input.parsed_body if {
	route
	is_object(input.parsed_body)
}

access_denies contains msg if {
	not is_mcp
	not route
	msg := sprintf("no rule allows %v %v", [
		object.get(input, ["action", "method"], "(no method)"),
		object.get(input, ["action", "path"], "(no path)"),
	])
}

route_matches(candidate) if {
	input.action.method in candidate.methods
	some pattern in route_patterns(candidate)
	glob.match(pattern, ["/"], input.action.path)
	host_allowed(candidate)
}

# "path": one glob, "paths": several; both may be given.
route_patterns(candidate) := {p | some p in object.get(candidate, "paths", []); is_string(p)} | {p |
	p := object.get(candidate, "path", null)
	is_string(p)
}

# Without "hosts" a route applies to every host; with it, to the hosts its globs name.
host_allowed(candidate) if not "hosts" in object.keys(candidate)

host_allowed(candidate) if {
	some pattern in candidate.hosts
	glob.match(pattern, ["."], input.action.host)
}
