# METADATA
# description: |
#   The MCP response path's decision: what an agent may see of a tool server's answer.
#   The sidecar's ext_proc server asks it once per response
#   (sidecar/schema/response-input.schema.json): for tools/list, prompts/list and
#   resources/list with every listed item (one batched query, never one per item), for
#   tools/call once for its output. `request` is the request's own check input.
# scope: package
# schemas:
#   - input: schema["response-input.schema"]
package agent.response

import data.agent.authz
import data.agent.identity

cfg := data.agent.config

# METADATA
# description: What the sidecar asks for every MCP response (mcp_responses.decision_path).
# entrypoint: true
decision := {"visible": visible, "hidden": hidden, "redact": redact}

# How an agent uses an item of each list: the call the request policy judges.
use_method := {"tools/list": "tools/call", "prompts/list": "prompts/get", "resources/list": "resources/read"}

items := input.response.items if is_array(input.response.items)

else := []

# A listed item stays visible only if the policy would let this agent use it now.
visible contains item.name if {
	some item in items
	not hidden[item.name]
}

# A tool whose definition changed since the session first listed it is not shown
# until a human re-approves a call to it (the "rug pull" defence).
hidden[item.name] := sprintf(
	"the definition of %s changed since this session first listed it; a human must approve a call to it",
	[item.name],
) if {
	some item in items
	item.pin == "changed"
}

hidden[name] := concat("; ", use.reasons) if {
	some name, use in uses
	use.verdict == "deny"
}

# The request policy's answer about using each (unchanged) item, in one evaluation.
uses[item.name] := answer if {
	some item in items
	not item.pin == "changed"
	call := {
		"method": use_method[input.response.method],
		"name": item.name,
		"arguments": {},
		"id": null,
		"is_notification": false,
		"tool_pin": null,
	}

	# The one way to ask the check's rules about a call that is not this input.
	# regal ignore:with-outside-test-context
	answer := authz.decision with input as object.union(input.request, {"mcp": call})
}

# Tool output: each data class the agent is not cleared for is redacted.
redact contains rule if {
	input.response.method == "tools/call"
	some data_class, spec in object.get(cfg, ["response", "redact"], {})
	not cleared(spec)
	rule := {
		"data_class": data_class,
		"fields": object.get(spec, "fields", []),
		"patterns": object.get(spec, "patterns", []),
	}
}

cleared(spec) if {
	some role in roles
	role in spec.cleared_roles
}

roles := found if {
	# regal ignore:with-outside-test-context
	found := identity.roles with input as input.request
}
