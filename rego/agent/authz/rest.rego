# REST routes: data.agent.config.routes, first matching route wins.
package agent.authz

# Index of the first route whose method, path glob (and hosts, if given) match.
# The method is compared first, so most routes cost one comparison.
route_index := min(matched) if {
	not is_mcp
	matched := {i |
		some i, candidate in cfg.routes
		input.action.method in candidate.methods
		route_path_matches(candidate)
		host_allowed(candidate)
	}
	count(matched) > 0
}

route := cfg.routes[route_index]

# Its "name" (sprintf only when the name is not a string), else "route <index>".
route_name := name if {
	name := route.name
	is_string(name)
} else := sprintf("%v", [object.get(route, "name", sprintf("route %d", [route_index]))])

route_rule := object.union_n([rule_defaults, route, {"scoped": true, "name": route_name}])

# The first reason of an allow (see allow_reason in policy.rego).
route_allow_reason := sprintf(
	"route %q allows agent %s to %v %v",
	[route_name, agent_name, input.action.method, input.action.path],
) if {
	route
}

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

# "path": one glob, "paths": several; both may be given.
route_path_matches(candidate) if {
	pattern := candidate.path
	is_string(pattern)
	glob.match(pattern, ["/"], input.action.path)
}

route_path_matches(candidate) if {
	some pattern in candidate.paths
	is_string(pattern)
	glob.match(pattern, ["/"], input.action.path)
}

# Without "hosts" a route applies to every host; with it, to the hosts its globs name.
host_allowed(candidate) if not "hosts" in object.keys(candidate)

host_allowed(candidate) if {
	some pattern in candidate.hosts
	glob.match(pattern, ["."], input.action.host)
}
