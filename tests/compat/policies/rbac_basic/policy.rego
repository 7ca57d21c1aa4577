# RBAC with Basic auth, as the opa-envoy-plugin quick start writes it.
package envoy.authz

default allow := false

user_name := name if {
	[_, encoded] := split(input.attributes.request.http.headers.authorization, " ")
	[name, _] := split(base64url.decode(encoded), ":")
}

role_grants := {"admin": [{"method": "GET"}, {"method": "POST"}, {"method": "DELETE"}], "guest": [{"method": "GET"}]}

user_roles := {"alice": ["guest"], "bob": ["admin"]}

allow if {
	some role in user_roles[user_name]
	some grant in role_grants[role]
	input.attributes.request.http.method == grant.method
}
