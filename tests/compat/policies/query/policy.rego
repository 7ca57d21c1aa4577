# Query rewriting: set and remove query parameters from what the policy read.
package envoy.authz

allow := {
	"allowed": true,
	"query_parameters_to_set": {"tenant": "t1", "page": object.get(input.parsed_query, "page", ["1"])},
	"query_parameters_to_remove": [k | some k, _ in input.parsed_query; startswith(k, "debug")],
} if not input.parsed_query.deny

allow := {"allowed": false, "body": json.marshal({"query": input.parsed_query})} if input.parsed_query.deny
