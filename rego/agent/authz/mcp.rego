# The MCP endpoint (Streamable HTTP): data.agent.config.mcp.
package agent.authz

is_mcp if input.action.path in cfg.mcp.paths

# The JSON-RPC request the sidecar read from the body, when there is one.
rpc := input.mcp if is_object(input.mcp)

mcp_post if {
	is_mcp
	input.action.method == "POST"
	rpc
}

tool_call if {
	mcp_post
	rpc.method == "tools/call"
	is_string(rpc.name)
}

tool := cfg.mcp.tools[rpc.name] if {
	tool_call
	is_object(cfg.mcp.tools[rpc.name])
}

# tools/call: the tool's own rule.
rule := object.union(object.union(rule_defaults, tool), {
	"scoped": true,
	"name": sprintf("mcp tool %s", [rpc.name]),
	"action": sprintf("call tool %s", [rpc.name]),
	"allow_reason": sprintf("agent %s may call tool %s", [agent_name, rpc.name]),
})

# Session set-up, discovery and notifications: open to every registered agent.
rule := object.union(rule_defaults, {
	"name": sprintf("mcp method %v", [rpc.method]),
	"action": sprintf("use MCP method %v", [rpc.method]),
	"class": "read",
	"data_class": "public",
	"allow_reason": sprintf("MCP method %v is open to every registered agent, including %s", [rpc.method, agent_name]),
}) if {
	mcp_post
	rpc.method != "tools/call"
	rpc.method in cfg.mcp.open_methods
}

# GET opens the server-to-client SSE stream, DELETE ends the MCP session.
rule := object.union(rule_defaults, {
	"name": "mcp session stream",
	"action": sprintf("%v %v", [input.action.method, input.action.path]),
	"class": "read",
	"data_class": "public",
	"allow_reason": sprintf(
		"MCP session stream: registered agent %s may %v %v",
		[agent_name, input.action.method, input.action.path],
	),
}) if {
	is_mcp
	input.action.method in {"GET", "DELETE"}
}

# The arguments of a tool call.
call_arguments := rpc.arguments if tool

access_denies contains msg if {
	is_mcp
	not input.action.method in {"POST", "GET", "DELETE"}
	msg := sprintf("MCP endpoint %v accepts POST, GET and DELETE, not %v", [input.action.path, input.action.method])
}

access_denies contains "MCP endpoint requires a JSON-RPC request body" if {
	is_mcp
	input.action.method == "POST"
	not rpc
}

access_denies contains "MCP tools/call request names no tool" if {
	mcp_post
	rpc.method == "tools/call"
	not is_string(rpc.name)
}

access_denies contains msg if {
	tool_call
	not tool
	msg := sprintf("tool %s is not in the policy", [rpc.name])
}

access_denies contains msg if {
	mcp_post
	rpc.method != "tools/call"
	not rpc.method in cfg.mcp.open_methods
	msg := sprintf("MCP method %v is not allowed", [rpc.method])
}
