# MCP authorization, "Scope Challenge Handling" (specification 2026-07-28,
# basic/authorization): a tool call refused only because its task does not grant
# the tool's scope is a 403 whose WWW-Authenticate names that scope (RFC 6750
# section 3.1, error="insufficient_scope") and the endpoint's protected-resource
# metadata (RFC 9728), so the agent knows what to obtain: a task granting the
# scope (POST /v1/tasks). Any other deny has no challenge.
package agent.authz

default scope_challenge := {}

scope_challenge := {"response_headers_to_add": {"www-authenticate": challenge}} if {
	challenge := sprintf(
		`Bearer error="insufficient_scope", scope="%s", resource_metadata="%s", error_description="%s"`,
		[scope_shortfall, resource_metadata_url, sprintf("a task granting %s is needed to call %s", [scope_shortfall, rpc.name])],
	)
}

# The one scope the call lacks, when that is its only reason to be denied.
scope_shortfall := rule.scope if {
	tool_call
	task
	rule.scoped
	is_string(rule.scope)
	not task_grants(rule.scope)
	count(deny_reasons) == 1
}

# RFC 9728 section 3.1: the well-known URI with the resource's path appended.
resource_metadata_url := sprintf(
	"%s://%s/.well-known/oauth-protected-resource%s",
	[input.attributes.request.http.scheme, input.attributes.request.http.host, input.action.path],
)
