"""The MCP response path: what the agent may see of a tool server's answer.

Envoy's ext_proc filter (on the MCP route only) streams each allowed MCP response to
:mod:`sidecar.mcp_response.ext_proc` in this process. The request's check left a
:class:`~sidecar.mcp_response.pending.ResponseContext` under its decision id
(:mod:`sidecar.phases.response`); :class:`~sidecar.mcp_response.judge.ResponseJudge` reads the
body (JSON or an SSE stream), asks the policy once per response (``agent/response/decision``:
which listed items stay visible, what tool output is redacted), pins tool definitions, and
answers the new body — or a JSON-RPC error when it cannot judge the response (fail closed).
"""
