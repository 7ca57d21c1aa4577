# Dynamic metadata, merged with decision_id, on allow and on deny.
package envoy.authz

allow := {
	"allowed": input.attributes.request.http.method == "GET",
	"dynamic_metadata": {"user": "u1", "tags": ["a", "b"], "nested": {"ok": true}, "path": input.parsed_path},
} if not input.parsed_query.override

allow := {"allowed": true, "dynamic_metadata": {"decision_id": "from-policy"}} if input.parsed_query.override

allow := {"allowed": true, "dynamic_metadata": "not an object"} if input.parsed_query.bad
