# Allows when the input says so: exercises parsed_path, parsed_query, parsed_body, truncated_body, size.
package envoy.authz

default allow := false

allow if input.parsed_body.allow == true

allow if "yes" in input.parsed_query.allow

allow if input.parsed_path[0] == "allow"

allow if {
	input.truncated_body
	input.parsed_path[0] == "truncated-ok"
}

allow if input.attributes.request.http.size > 10
