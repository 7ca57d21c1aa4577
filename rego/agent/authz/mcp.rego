# The MCP endpoint (Streamable HTTP): data.agent.config.mcp.
package agent.authz

is_mcp if input.action.path in cfg.mcp.paths

# The JSON-RPC request the sidecar read from the body, when there is one.
rpc := input.mcp if is_object(input.mcp)

mcp_post if {
	input.action.method == "POST"
	is_mcp
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

# An MCP method other than tools/call that every registered agent may use.
open_method if {
	mcp_post
	rpc.method != "tools/call"
	rpc.method in cfg.mcp.open_methods
}

# GET opens the server-to-client SSE stream, DELETE ends the MCP session.
session_stream if {
	input.action.method in {"GET", "DELETE"}
	is_mcp
}

# tools/call: the tool's own rule.
tool_rule := object.union_n([rule_defaults, tool, {"scoped": true, "name": sprintf("mcp tool %s", [rpc.name])}])

# Session set-up, discovery and notifications: open to every registered agent.
open_method_rule := object.union(rule_defaults, {
	"name": sprintf("mcp method %v", [rpc.method]),
	"class": "read",
	"data_class": "public",
}) if {
	open_method
}

session_stream_rule := object.union(rule_defaults, {
	"name": "mcp session stream",
	"class": "read",
	"data_class": "public",
}) if {
	session_stream
}

# The first reason of an allow (see allow_reason in policy.rego).
tool_allow_reason := sprintf("agent %s may call tool %s", [agent_name, rpc.name]) if tool

open_method_allow_reason := sprintf("MCP method %v is open to every registered agent, including %s", [rpc.method, agent_name]) if {
	open_method
}

session_stream_allow_reason := sprintf(
	"MCP session stream: registered agent %s may %v %v",
	[agent_name, input.action.method, input.action.path],
) if {
	session_stream
}

# The arguments of a tool call.
call_arguments := rpc.arguments if tool

# Why an MCP request has no rule (none for a request that has one).
access_denies contains msg if {
	is_mcp
	not rule
	some msg in mcp_denies
}

mcp_denies contains msg if {
	not input.action.method in {"POST", "GET", "DELETE"}
	msg := sprintf("MCP endpoint %v accepts POST, GET and DELETE, not %v", [input.action.path, input.action.method])
}

mcp_denies contains "MCP endpoint requires a JSON-RPC request body" if {
	input.action.method == "POST"
	not rpc
}

# Any other method, a non-string one too, is "not allowed" (below); a request without one has no
# method to name.
mcp_denies contains "MCP JSON-RPC request names no method" if {
	mcp_post
	not "method" in object.keys(rpc)
}

mcp_denies contains "MCP tools/call request names no tool" if {
	mcp_post
	rpc.method == "tools/call"
	not is_string(rpc.name)
}

mcp_denies contains msg if {
	tool_call
	not tool
	msg := sprintf("tool %s is not in the policy", [rpc.name])
}

mcp_denies contains msg if {
	mcp_post
	rpc.method != "tools/call"
	not rpc.method in cfg.mcp.open_methods
	msg := sprintf("MCP method %v is not allowed", [rpc.method])
}

# For fast_allow (fast.rego): the tool of a tools/call without a changed tool pin.
fast_tool := {
	"rule": r,
	"name": concat("", ["mcp tool ", rpc.name]),
	"route": false,
	"tool": rpc.name,
} if {
	input.action.method == "POST"
	input.action.path in data.agent.config.mcp.paths
	rpc := input.mcp
	rpc.method == "tools/call"
	is_string(rpc.name)
	r := data.agent.config.mcp.tools[rpc.name]
	is_object(r)
	object.get(rpc, "tool_pin", null) != "changed"
}
