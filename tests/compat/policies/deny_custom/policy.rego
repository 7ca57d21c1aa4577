# Custom deny status and body, chosen from the path.
package envoy.authz

default allow := {"allowed": false}

allow := {"allowed": true} if input.parsed_path == ["public"]

allow := {"allowed": false, "http_status": to_number(input.parsed_path[1]), "body": "status from path"} if {
	input.parsed_path[0] == "status"
}

allow := {"allowed": false, "http_status": 429, "body": "{\"error\":\"slow down\"}", "headers": {"retry-after": "5"}} if {
	input.parsed_path == ["json"]
}

allow := {"allowed": false, "body": 42} if input.parsed_path == ["badbody"]
