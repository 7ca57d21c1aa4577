# REST routes: data.agent.config.routes, keyed by HTTP method; in the list of the
# request's method the first matching route wins.
package agent.authz

# The request's method selects its list by key, so OPA reads (and converts from
# the store) only that list, never the routes of other methods, and a request
# pays for no comparison with them.
method_routes := cfg.routes[input.action.method] if not is_mcp

# Index (in method_routes) of the first route whose path glob (and hosts, if given) match.
route_index := min(matched) if {
	matched := {i |
		some i, candidate in method_routes
		route_path_matches(candidate)
		host_allowed(candidate)
	}
	count(matched) > 0
}

route := method_routes[route_index]

# Its "name" (sprintf only when the name is not a string), else "<METHOD> route <index>".
route_name := name if {
	name := route.name
	is_string(name)
} else := sprintf("%v", [object.get(route, "name", sprintf("%v route %d", [input.action.method, route_index]))])

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

# For fast_allow (fast.rego): the route of a REST call, found as route_index finds it but
# without its rule references, when the first route whose path matches has no hosts (else
# the full policy decides), with its name.
fast_route := {"rule": r, "name": name, "route": true, "tool": null} if {
	method := input.action.method
	path := input.action.path
	not path in data.agent.config.mcp.paths
	routes := data.agent.config.routes[method]

	# route_path_matches inline, "path" and "paths"
	i := min({j |
		some j, candidate in routes
		is_string(candidate.path)
		glob.match(candidate.path, ["/"], path)
	} | {j |
		some j, candidate in routes
		some pattern in candidate.paths
		is_string(pattern)
		glob.match(pattern, ["/"], path)
	})
	r := routes[i]
	not "hosts" in object.keys(r) # a route with hosts: the full policy
	name := r.name
	is_string(name)
}
