"""The MCP response path through real Envoy: lists filtered per agent, tool output redacted (JSON
and SSE), 2026-07-28 header/body mismatches, a changed tool definition, ext_proc down, an
oversized response."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import requests

from devstack.agent_client import AgentClient, approval_id, jsonrpc
from devstack.mcp_tools import OWNER, RUG_PULL
from devstack.stack import Ports, Stack
from sidecar.mcp_headers import HEADER_MISMATCH, PROTOCOL_META
from tests.e2e.conftest import READER, WRITER
from tests.e2e.test_access_log import access_line

WRITE_TOOLS = {"create_ticket", "delete_record", "send_email"}
V2026 = "2026-07-28"


def session() -> dict[str, str]:
    """A fresh MCP session: its own pinned tool definitions."""
    return {"mcp-session-id": str(uuid.uuid4())}


def tool_names(response: requests.Response) -> set[str]:
    assert response.status_code == 200, response.text
    return {t["name"] for t in response.json()["result"]["tools"]}


def response_events(stack: Stack, decision_id: str) -> list[dict[str, Any]]:
    lines = (stack.logs / "sidecar.log").read_text().splitlines()
    events = [json.loads(line) for line in lines if '"event": "response"' in line]
    return [e for e in events if e.get("decision_id") == decision_id]


def test_tools_list_is_filtered_per_agent(client: AgentClient, stack: Stack) -> None:
    reader = client.mcp(READER, "tools/list", headers=session())
    assert tool_names(reader) == {"search_docs", "get_record"}
    assert int(reader.headers["content-length"]) == len(reader.content)
    decision_id = reader.headers["x-authz-decision-id"]
    [event] = response_events(stack, decision_id)
    assert set(event["hidden"]) == WRITE_TOOLS and event["verdict"] == "allow"
    task = client.task_token(WRITER, "triage", ["docs:read", "records:read", "tickets:write"])
    writer = client.mcp(WRITER, "tools/list", task=task)
    assert tool_names(writer) == {"search_docs", "get_record", "create_ticket"}


def test_tool_output_is_redacted_for_agents_without_the_data_class(client: AgentClient, stack: Stack) -> None:
    reader = client.mcp(READER, "tools/call", "get_record", {"id": "42"})
    assert reader.status_code == 200, reader.text
    result = reader.json()["result"]
    assert OWNER not in reader.text
    assert result["structuredContent"]["owner_email"] == "[redacted:pii]"
    assert result["content"][0]["text"] == "record 42: owner [redacted:pii], status active"
    [event] = response_events(stack, reader.headers["x-authz-decision-id"])
    assert event["redactions"] == {"pii": 2} and event["tool"] == "get_record"
    writer = client.mcp(WRITER, "tools/call", "get_record", {"id": "42"})
    assert writer.status_code == 200 and writer.json()["result"]["structuredContent"]["owner_email"] == OWNER


def test_tool_output_in_an_sse_stream_is_redacted(client: AgentClient) -> None:
    response = client.mcp(READER, "tools/call", "get_record", {"id": "7"}, headers={"x-demo-stream": "sse"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert OWNER not in response.text and "[redacted:pii]" in response.text
    assert "notifications/progress" in response.text
    data = [line[len("data: ") :] for line in response.text.splitlines() if line.startswith("data: ")]
    assert json.loads(data[-1])["result"]["structuredContent"]["owner_email"] == "[redacted:pii]"


def test_an_sse_stream_reaches_the_agent_event_by_event(client: AgentClient, stack: Stack) -> None:
    assert_streams_event_by_event(client, stack)


def assert_streams_event_by_event(client: AgentClient, stack: Stack) -> None:
    """The tool server sends a progress notification and holds its response until told: the agent
    reads the notification while the call still runs (a buffered stream would hold it back with
    the response), then the redacted response, and the stream has no length to get wrong."""
    hold = str(uuid.uuid4())
    headers = {"x-demo-stream": "sse-held", "x-demo-hold": hold}
    with client.mcp(
        READER, "tools/call", "get_record", {"id": "7"}, headers=headers, stream=True, timeout=5
    ) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        assert "content-length" not in response.headers
        lines = response.iter_lines(decode_unicode=True)
        first = next(line for line in lines if line.startswith("data: "))  # within the read timeout, or never
        assert json.loads(first[len("data: ") :])["method"] == "notifications/progress"
        url = f"http://127.0.0.1:{stack.ports.upstream}/debug/release/{hold}"
        requests.post(url, timeout=5).raise_for_status()
        rest = [line[len("data: ") :] for line in lines if line.startswith("data: ")]
    final = json.loads(rest[-1])
    assert final["id"] == 1 and final["result"]["structuredContent"]["owner_email"] == "[redacted:pii]"
    assert OWNER not in "".join(rest)
    [event] = response_events(stack, response.headers["x-authz-decision-id"])
    assert event["redactions"] == {"pii": 2} and event["verdict"] == "allow"


def test_a_long_call_that_reports_progress_outlasts_the_routes_15_s_and_a_silent_one_does_not(
    client: AgentClient, stack: Stack
) -> None:
    """Two held calls at once. One reports progress every second: it streams past 15 s (the other
    routes' whole-response bound) and then delivers its redacted response. The other stays silent
    after its first event: 15 s of silence end it (Envoy's stream idle timeout, ``SI``) before its
    tool server would answer."""
    holds = {"reporting": str(uuid.uuid4()), "silent": str(uuid.uuid4())}
    request_ids = {kind: str(uuid.uuid4()) for kind in holds}

    def call(kind: str, extra: dict[str, str]) -> requests.Response:
        headers = {"x-demo-stream": "sse-held", "x-demo-hold": holds[kind], "x-demo-hold-seconds": "40"}
        headers |= {"x-request-id": request_ids[kind], **extra}
        return client.mcp(READER, "tools/call", "get_record", {"id": "7"}, headers=headers, stream=True, timeout=20)

    def reporting() -> list[dict[str, Any]]:
        with call("reporting", {"x-demo-progress-every": "1"}) as response:
            assert response.status_code == 200
            lines = response.iter_lines(decode_unicode=True)
            events = []
            for line in lines:
                if line.startswith("data: "):
                    events.append(json.loads(line[len("data: ") :]))
                    if len(events) == 18:  # the first event, then one a second: 17 s in
                        break
            assert all(e["method"] == "notifications/progress" for e in events)
            url = f"http://127.0.0.1:{stack.ports.upstream}/debug/release/{holds['reporting']}"
            requests.post(url, timeout=5).raise_for_status()
            rest = [json.loads(line[len("data: ") :]) for line in lines if line.startswith("data: ")]
        return events + rest

    def silent() -> list[str]:
        seen: list[str] = []
        with call("silent", {}) as response, contextlib.suppress(requests.exceptions.ChunkedEncodingError):
            assert response.status_code == 200
            seen.extend(line for line in response.iter_lines(decode_unicode=True) if line.startswith("data: "))
        return seen

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        long_call, quiet_call = pool.submit(reporting), pool.submit(silent)
        events, cut = long_call.result(timeout=60), quiet_call.result(timeout=60)
    final = events[-1]
    assert final["id"] == 1 and final["result"]["structuredContent"]["owner_email"] == "[redacted:pii]"
    assert len(events) >= 19, "17 s of progress, then the response"
    assert len(cut) == 1 and "notifications/progress" in cut[0], "the silent call never answered"
    assert "SI" in access_line(stack, request_ids["silent"])["flags"], "Envoy's stream idle timeout ended it"
    assert access_line(stack, request_ids["reporting"])["flags"] == "-"


def test_a_list_in_an_sse_stream_is_filtered(client: AgentClient) -> None:
    response = client.mcp(READER, "tools/list", headers={"x-demo-stream": "sse", **session()})
    assert response.status_code == 200 and "search_docs" in response.text
    assert not any(tool in response.text for tool in WRITE_TOOLS)


def test_header_body_mismatch_is_the_specs_error_with_the_request_id(client: AgentClient) -> None:
    body = {"jsonrpc": "2.0", "id": "req-9", "method": "tools/call", "params": {"name": "search_docs", "arguments": {}}}
    headers = {"mcp-method": "tools/call", "mcp-name": "delete_record", "content-type": "application/json"}
    response = client.request("POST", "/mcp", READER, headers=headers, data=json.dumps(body))
    assert response.status_code == 400
    answer = response.json()
    assert answer["id"] == "req-9" and answer["error"]["code"] == HEADER_MISMATCH
    param = client.request(
        "POST",
        "/mcp",
        READER,
        headers={**headers, "mcp-name": "search_docs", "mcp-param-q": "vpn"},
        data=json.dumps({**body, "params": {"name": "search_docs", "arguments": {"q": "payroll"}}}),
    )
    assert param.status_code == 400 and param.json()["error"]["code"] == HEADER_MISMATCH
    old_client = client.request("POST", "/mcp", READER, headers={"content-type": "application/json"}, json=body)
    assert old_client.status_code == 200  # a 2025-06-18 client sends no Mcp-* headers


def test_a_2026_client_mirrors_annotated_arguments_under_the_names_the_tool_declares(client: AgentClient) -> None:
    """search_docs declares ``index_name`` with ``x-mcp-header: Index``: once the session listed it,
    ``Mcp-Param-Index`` must carry that argument, and nothing else will do."""
    mine = {**session(), "mcp-protocol-version": V2026}

    def call(arguments: dict[str, Any], headers: dict[str, str]) -> requests.Response:
        mcp_headers, body = jsonrpc("tools/call", "search_docs", arguments, "p-1", _meta={PROTOCOL_META: V2026})
        return client.request("POST", "/mcp", READER, {**mcp_headers, **mine, **headers}, json=body)

    def refused(response: requests.Response) -> bool:
        answer = response.json()
        return response.status_code == 400 and answer["id"] == "p-1" and answer["error"]["code"] == HEADER_MISMATCH

    searched = {"q": "vpn", "index_name": "eu"}
    # Not listed in this session yet: the sidecar cannot know the header's argument, and refuses it.
    assert refused(call(searched, {"mcp-param-index": "eu"}))
    assert "search_docs" in tool_names(client.mcp(READER, "tools/list", headers=mine))
    allowed = call(searched, {"mcp-param-index": "eu"})
    assert allowed.status_code == 200, allowed.text
    assert '"index_name": "eu"' in allowed.json()["result"]["content"][0]["text"]  # the call it was judged as
    assert refused(call({"q": "vpn"}, {"mcp-param-zone": "x"}))  # declared by nobody, yet a router may read it
    assert refused(call(searched, {"mcp-param-index": "us"}))  # a router would send it to "us"
    assert refused(call(searched, {}))  # the header a router routes by, left out
    assert refused(call({"q": "vpn"}, {"mcp-param-index": "us"}))  # a header with no argument behind it


@contextmanager
def rug_pulled(stack: Stack) -> Iterator[None]:
    url = f"http://127.0.0.1:{stack.ports.upstream}/debug/rug-pull"
    requests.post(url, timeout=5).raise_for_status()
    try:
        yield
    finally:
        requests.delete(url, timeout=5).raise_for_status()


def test_a_changed_tool_definition_is_hidden_and_stepped_up_until_re_approved(
    client: AgentClient, stack: Stack
) -> None:
    mine = session()
    assert "search_docs" in tool_names(client.mcp(READER, "tools/list", headers=mine))  # pinned now
    with rug_pulled(stack):
        assert "search_docs" not in tool_names(client.mcp(READER, "tools/list", headers=mine))
        assert "search_docs" in tool_names(client.mcp(READER, "tools/list", headers=session()))  # another session
        call = client.mcp(READER, "tools/call", "search_docs", {"q": "vpn"}, headers=mine)
        assert call.status_code == 401, call.text
        assert "changed since" in call.text
        approval = approval_id(call)
        assert approval is not None
        assert client.decide_approval(approval).status_code == 200
        retry = client.mcp(READER, "tools/call", "search_docs", {"q": "vpn"}, headers=mine, approval=approval)
        assert retry.status_code == 200, retry.text
        relisted = client.mcp(READER, "tools/list", headers=mine)  # the approved definition is the pin now
        assert "search_docs" in tool_names(relisted)
        assert RUG_PULL in relisted.text


@pytest.fixture(scope="module")
def no_response_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentClient]:
    """A stack whose sidecar serves the check but no ext_proc: Envoy's response path is down."""
    env = {"AUTHZ_MCP_RESPONSES__ENABLED": "false"}
    with Stack(tmp_path_factory.mktemp("no-ext-proc"), Ports.free(), sidecar_env=env) as down:
        yield AgentClient(down)


def envoys_own_error(response: requests.Response) -> None:
    """Envoy's own failure on the MCP endpoint is a JSON-RPC error an MCP client can read."""
    assert response.headers["content-type"].startswith("application/json"), response.headers
    answer = response.json()
    assert answer["jsonrpc"] == "2.0" and answer["id"] is None and answer["error"]["code"] == -32603
    assert answer["error"]["message"].startswith("the MCP response could not be delivered (")
    assert "sock" not in response.text and "/tmp" not in response.text, "no detail names the pod's sockets"
    assert answer["error"]["data"]["request_id"]


def test_the_response_path_down_fails_closed_on_the_mcp_route_only(no_response_path: AgentClient) -> None:
    client = no_response_path
    response = client.mcp(READER, "tools/call", "get_record", {"id": "42"})
    assert response.status_code == 503
    assert OWNER not in response.text and "record 42" not in response.text
    envoys_own_error(response)
    assert "search_docs" not in client.mcp(READER, "tools/list").text
    assert client.request("GET", "/api/docs/handbook", READER).status_code == 200  # not on the MCP route


def test_an_unreachable_tool_server_is_a_json_rpc_error(no_response_path: AgentClient) -> None:
    """Envoy's own reply when the tool server is gone: a JSON-RPC error on the MCP endpoint (the
    REST routes keep Envoy's plain one)."""
    client = no_response_path
    client.stack.stop_process("upstream")
    try:
        response = client.mcp(READER, "tools/call", "search_docs", {"q": "vpn"})
        assert response.status_code >= 500
        envoys_own_error(response)
        rest = client.request("GET", "/api/docs/handbook", READER)
        assert rest.status_code >= 500 and "jsonrpc" not in rest.text
    finally:
        client.stack.start_upstream()


def test_an_oversized_response_is_refused_not_passed(client: AgentClient) -> None:
    response = client.mcp(READER, "tools/call", "search_docs", {"q": "vpn", "pad": 2 * 1024 * 1024})
    assert response.status_code >= 500
    assert "xxxxxxxx" not in response.text
    envoys_own_error(response)
    small = client.mcp(READER, "tools/call", "search_docs", {"q": "vpn", "pad": 1000})
    assert small.status_code == 200 and "x" * 1000 in small.text


def test_an_agent_cannot_name_the_decision_its_response_is_judged_under(client: AgentClient) -> None:
    """The decision id is the sidecar's own: an agent naming another cannot fetch an unjudged answer."""
    forged = client.mcp(READER, "tools/call", "get_record", {"id": "1"}, headers={"x-authz-decision-id": "forged"})
    assert forged.status_code == 200 and OWNER not in forged.text  # the check overwrote it: judged as usual
    assert forged.headers["x-authz-decision-id"] != "forged"


def test_protected_resource_metadata_behind_the_ingress_listener(client: AgentClient, stack: Stack) -> None:
    metadata = client.ingress(WRITER, "GET", "/.well-known/oauth-protected-resource/mcp")
    assert metadata.status_code == 200 and metadata.headers["content-type"].startswith("application/json")
    assert metadata.json()["resource"] == stack.ingress_url + "/mcp"
    assert metadata.json()["bearer_methods_supported"] == ["header"]


def test_a_tool_call_short_of_a_scope_is_a_scope_challenge(client: AgentClient) -> None:
    task = client.task_token(WRITER, "triage", ["docs:read"])
    response = client.mcp(WRITER, "tools/call", "create_ticket", {"title": "x"}, task=task, rpc_id=5)
    assert response.status_code == 403
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('Bearer error="insufficient_scope", scope="tickets:write", resource_metadata="')
    assert "/.well-known/oauth-protected-resource/mcp" in challenge
    assert response.json()["id"] == 5
