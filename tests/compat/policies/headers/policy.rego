# Header injection: an object or an array of objects, response headers, removals.
package envoy.authz

allow := {
	"allowed": true,
	"headers": {"x-injected": "yes", "x-multi": ["a", "b"]},
	"response_headers_to_add": {"x-client": "seen"},
	"request_headers_to_remove": ["x-remove-me", "authorization"],
} if input.parsed_path[0] == "object"

allow := {
	"allowed": true,
	"headers": [{"x-first": "1"}, {"x-first": "2", "x-second": "b"}],
	"response_headers_to_add": [{"set-cookie": "a=1"}, {"set-cookie": "b=2"}],
} if input.parsed_path[0] == "array"

allow := {"allowed": false, "headers": {"x-denied-why": "path"}, "response_headers_to_add": {"x-never": "sent"}} if {
	not input.parsed_path[0] in {"object", "array", "bad"}
}

allow := {"allowed": true, "headers": {"x-bad": 7}} if input.parsed_path[0] == "bad"
