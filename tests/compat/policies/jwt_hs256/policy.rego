# HS256 JWT verified with io.jwt.decode_verify; an object result with the subject upstream.
package envoy.authz

default allow := {"allowed": false, "body": "token rejected", "http_status": 401}

token := t if {
	[_, t] := split(input.attributes.request.http.headers.authorization, " ")
}

verified := [valid, payload] if {
	[valid, _, payload] := io.jwt.decode_verify(token, {"secret": "compat-hs256-secret-of-32-bytes-at-least", "time": 1700000000000000000})
}

allow := {"allowed": true, "headers": {"x-subject": verified[1].sub}} if {
	verified[0]
	verified[1].role == "admin"
}

allow := {"allowed": true, "headers": {"x-subject": verified[1].sub}} if {
	verified[0]
	input.attributes.request.http.method == "GET"
}
