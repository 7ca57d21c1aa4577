# The opa-envoy-plugin side of the benchmark: the same decisions as authz-sidecar's shipped
# policy, for a plugin that only sees Envoy's CheckRequest.
#
# opa-envoy-plugin builds the opa-envoy-plugin-compatible input (attributes, parsed_path,
# parsed_body, ...) but none of the agent fields. This adapter derives them in Rego, doing
# the work the sidecar does in Python, and then asks the unchanged shipped policy
# (data.agent.authz.decision) with that input:
#   - input.agent from the JWT-SVID: io.jwt.decode_verify against the trust domain's JWT
#     bundle (signature, exp/nbf, audience);
#   - input.task from the task token: signature and audience against the sidecar's JWKS, then
#     the grant's details by token id from data.bench.tasks (the sidecar reads them from its
#     state store; the plugin has no store, so the benchmark copies them in as data);
#   - input.mcp from the JSON-RPC body, input.action from method, host and path.
# Query: envoy/authz/result (the plugin's `path` setting).
package envoy.authz

http := input.attributes.request.http

headers := object.get(http, "headers", {})

bearer := token if {
	parts := split(headers.authorization, " ")
	count(parts) == 2
	lower(parts[0]) == "bearer"
	token := parts[1]
}

svid := claims if {
	[valid, _, claims] := io.jwt.decode_verify(bearer, {"cert": data.bench.jwt_bundle, "aud": data.bench.audience})
	valid
	startswith(claims.sub, "spiffe://")
}

trust_domain := split(substring(svid.sub, count("spiffe://"), -1), "/")[0]

agent := {
	"spiffe_id": svid.sub,
	"trust_domain": trust_domain,
	"path": substring(svid.sub, count("spiffe://") + count(trust_domain), -1),
	"identity_source": "jwt_svid",
	"claims": svid,
}

default grant := null

grant := data.bench.tasks[claims.jti] if {
	token := headers["x-agent-task-token"]
	constraints := {"cert": data.bench.sidecar_jwks, "iss": data.bench.issuer, "aud": data.bench.issuer}
	[valid, _, claims] := io.jwt.decode_verify(token, constraints)
	valid
	claims.sub == svid.sub
}

default task := null

task := grant.task if grant != null

default delegation := {"chain": [], "depth": 0}

delegation := {"chain": grant.chain, "depth": count(grant.chain)} if grant != null

default mcp := null

mcp := {
	"method": body.method,
	"name": object.get(body, ["params", "name"], null),
	"arguments": object.get(body, ["params", "arguments"], null),
	"id": object.get(body, "id", null),
	"is_notification": not_has_id,
} if {
	body := input.parsed_body
	body.jsonrpc == "2.0"
}

not_has_id := false if "id" in object.keys(input.parsed_body)

else := true

method := upper(http.method)

agent_input := object.union(input, {
	"action": {
		"method": method,
		"host": lower(split(http.host, ":")[0]),
		"path": concat("/", array.concat([""], input.parsed_path)),
		"read_only": method in {"GET", "HEAD", "OPTIONS"},
	},
	"agent": agent,
	"delegation": delegation,
	"task": task,
	"session": null,
	"mcp": mcp,
	"approval": null,
	"intent": null,
})

decision := d if {
	d := data.agent.authz.decision with input as agent_input
}

summary := json.marshal({"verdict": decision.verdict, "reasons": decision.reasons})

default result := {
	"allowed": false,
	"http_status": 401,
	"headers": {"content-type": "application/json", "www-authenticate": "Bearer realm=\"authz-sidecar\""},
	"body": "{\"verdict\":\"deny\",\"reasons\":[\"no valid JWT-SVID\"]}",
}

result := {
	"allowed": true,
	"headers": object.union(object.get(decision, "headers", {}), {"x-authz-spiffe-id": svid.sub}),
	"request_headers_to_remove": ["authorization", "x-agent-task-token"],
} if {
	svid
	decision.verdict == "allow"
}

result := {
	"allowed": false,
	"http_status": 403,
	"headers": {"content-type": "application/json"},
	"body": summary,
} if {
	svid
	decision.verdict == "deny"
}

result := {
	"allowed": false,
	"http_status": 401,
	"headers": {"content-type": "application/json"},
	"body": summary,
} if {
	svid
	decision.verdict == "step_up"
}
