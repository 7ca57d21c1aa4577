# RS256 JWT verified against a JWKS with io.jwt.decode_verify; a plain boolean result.
package envoy.authz

default allow := false

token := t if {
	[_, t] := split(input.attributes.request.http.headers.authorization, " ")
}

allow if {
	[valid, _, payload] := io.jwt.decode_verify(token, {"cert": data.compat.jwks, "aud": "compat", "time": 1700000000000000000})
	valid
	payload.scope == "read"
	input.parsed_path[0] == "api"
}
