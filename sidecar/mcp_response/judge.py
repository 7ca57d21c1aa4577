"""One MCP response judged: filter listed items, pin tool definitions, redact tool output.

Transport-neutral: bytes and a content type in, a :class:`Judgment` out (the body to send, or a
JSON-RPC error replacing the response). A body that is neither JSON nor an SSE stream, a JSON-RPC
message that is not the answer to this request, a list item without a name, an unreachable
policy or store, a malformed policy answer: each is a refusal, never a pass."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sidecar.errors import SidecarError
from sidecar.mcp import BodyError, is_json_content_type, loads_strict
from sidecar.mcp_headers import encode_declared
from sidecar.mcp_response import sse
from sidecar.mcp_response.pending import ResponseContext
from sidecar.mcp_response.policy import ResponseVerdict, read_verdict, response_input
from sidecar.mcp_response.redact import redact
from sidecar.opa import OpaClient
from sidecar.state import Store

log = logging.getLogger("authz.response")

# The list methods, the key of their items and the field that names an item.
LISTS = {"tools/list": ("tools", "name"), "prompts/list": ("prompts", "name"), "resources/list": ("resources", "uri")}
TOOL_CALL = "tools/call"
JUDGED = frozenset({*LISTS, TOOL_CALL})
SSE_MEDIA = "text/event-stream"
UNJUDGED_CODE = -32603  # JSON-RPC internal error: the answer exists but may not be shown


class Unjudgeable(SidecarError):
    """The response cannot be judged: it is replaced by a JSON-RPC error."""

    CODE = "response_unjudged"


@dataclass
class Judgment:
    body: bytes | None = None  # the new body; None: unchanged
    error: bytes | None = None  # a JSON-RPC error that replaces the response
    reason: str = ""
    hidden: list[str] = field(default_factory=list)
    changed_tools: list[str] = field(default_factory=list)
    redactions: Counter[str] = field(default_factory=Counter)
    verdict: ResponseVerdict | None = None  # asked once per response, however many messages it has

    @property
    def refused(self) -> bool:
        return self.error is not None


def definition_hash(tool: dict[str, Any]) -> str:
    """The pinned part of a tool: its name, description and input schema, canonically."""
    pinned = {k: tool.get(k) for k in ("name", "description", "inputSchema")}
    return hashlib.sha256(json.dumps(pinned, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def unjudged_error(request_id: str | int | None, decision_id: str | None, reason: str) -> bytes:
    error = {
        "code": UNJUDGED_CODE,
        "message": f"the authorization sidecar withheld the response: {reason}",
        "data": {"verdict": "error", "reasons": [reason], "decision_id": decision_id},
    }
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "error": error}, separators=(",", ":")).encode()


class ResponseJudge:
    def __init__(self, opa: OpaClient, store: Store, decision_path: str, pin_ttl_seconds: int) -> None:
        self._opa = opa
        self._store = store
        self._path = decision_path
        self._pin_ttl = pin_ttl_seconds

    async def judge(self, context: ResponseContext | None, content_type: str | None, body: bytes) -> Judgment:
        """The body the agent may see of this response, or the error that replaces it."""
        started = time.perf_counter()
        if context is None:
            judgment = Judgment(error=unjudged_error(None, None, "no authorized MCP request matches this response"))
            judgment.reason = "no authorized MCP request matches this response"
            return judgment
        try:
            judgment = await self._judge(context, content_type, body)
        except (Unjudgeable, BodyError, SidecarError) as exc:
            judgment = Judgment(error=unjudged_error(context.request_id, context.decision_id, exc.reason))
            judgment.reason = exc.reason
        except Exception:  # a bug must fail closed too
            log.exception("response judge failed", extra={"decision_id": context.decision_id})
            reason = "internal error while judging the response"
            judgment = Judgment(error=unjudged_error(context.request_id, context.decision_id, reason), reason=reason)
        self._record(context, judgment, time.perf_counter() - started)
        return judgment

    async def _judge(self, context: ResponseContext, content_type: str | None, body: bytes) -> Judgment:
        if not body.strip():
            return Judgment(reason="empty body")
        media = (content_type or "").split(";", 1)[0].strip().lower()
        if media == SSE_MEDIA:
            return await self._judge_stream(context, body)
        if is_json_content_type(content_type):
            message = loads_strict(body)
            judgment = Judgment()
            new = await self._judge_message(context, message, judgment, final=True)
            if new is not message:
                judgment.body = json.dumps(new, separators=(",", ":"), ensure_ascii=False).encode()
            return judgment
        raise Unjudgeable(f"an MCP response of content type {media or 'none'!r} cannot be judged")

    async def _judge_stream(self, context: ResponseContext, body: bytes) -> Judgment:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise Unjudgeable("the event stream is not valid UTF-8") from exc
        events = sse.parse(text)
        judgment, changed, answered = Judgment(), False, False
        for index, event in enumerate(events):
            data = event.data
            if data is None:
                continue
            message = loads_strict(data.encode())
            final = isinstance(message, dict) and ("result" in message or "error" in message)
            if final and answered:
                raise Unjudgeable("the event stream answers the request more than once")
            answered = answered or final
            new = await self._judge_message(context, message, judgment, final=final)
            if new is not message:
                events[index] = event.with_data(json.dumps(new, separators=(",", ":"), ensure_ascii=False))
                changed = True
        if changed:
            judgment.body = sse.serialize(events).encode()
        return judgment

    async def _judge_message(self, context: ResponseContext, message: Any, judgment: Judgment, *, final: bool) -> Any:
        """The message as the agent may see it (``message`` itself when unchanged)."""
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
            raise Unjudgeable("the response is not a JSON-RPC 2.0 message")
        if final:
            if message.get("id") != context.request_id:
                raise Unjudgeable("the response answers another JSON-RPC request")
            if "error" in message:
                return message
            if not isinstance(message.get("result"), dict):
                raise Unjudgeable("the JSON-RPC result is not an object")
        if context.method in LISTS:
            return await self._filter(context, message, judgment) if final else message
        if context.method == TOOL_CALL:
            return await self._redact(context, message, judgment)
        return message

    async def _ask(self, context: ResponseContext, items: list[dict[str, Any]] | None) -> ResponseVerdict:
        document = response_input(
            context.decision_id, context.request_input, context.method, items=items, tool=context.name
        )
        answer = await self._opa.decide(document, self._path)  # one query for the whole list
        return read_verdict(answer.result)

    async def _filter(self, context: ResponseContext, message: dict[str, Any], judgment: Judgment) -> Any:
        key, name_field = LISTS[context.method]
        items = message["result"].get(key)
        if not isinstance(items, list) or not all(
            isinstance(i, dict) and isinstance(i.get(name_field), str) for i in items
        ):
            raise Unjudgeable(f"{context.method} result has no list of {key} with a {name_field} each")
        names = [i[name_field] for i in items]
        if len(set(names)) != len(names):
            raise Unjudgeable(f"{context.method} lists an item twice")
        pins: dict[str, str] = {}
        if context.method == "tools/list" and context.pin_scope is not None:
            hashes = {i["name"]: definition_hash(i) for i in items}
            # Kept with each pin: how the client mirrors the tool's arguments into Mcp-Param-* headers.
            listed = {i["name"]: encode_declared(i.get("inputSchema")) for i in items}
            pins = dict(await self._store.pin_tools(context.pin_scope, hashes, self._pin_ttl, listed))
            judgment.changed_tools = [n for n, state in pins.items() if state == "changed"]
        described = [{"name": n, "pin": pins.get(n)} if pins else {"name": n} for n in names]
        verdict = await self._ask(context, described)
        kept = [i for i in items if i[name_field] in verdict.visible]
        judgment.hidden = [n for n in names if n not in verdict.visible]
        judgment.reason = f"{len(kept)} of {len(items)} listed items visible"
        if len(kept) == len(items):
            return message
        return {**message, "result": {**message["result"], key: kept}}

    async def _redact(self, context: ResponseContext, message: dict[str, Any], judgment: Judgment) -> Any:
        if judgment.verdict is None:
            judgment.verdict = await self._ask(context, None)
        verdict = judgment.verdict
        if not verdict.redact:
            return message
        counts: Counter[str] = Counter()
        part = "result" if "result" in message else "params"
        if part not in message:
            return message
        new_part = redact(message[part], verdict.redact, counts)
        if not counts:
            return message
        judgment.redactions.update(counts)
        judgment.reason = "redacted " + ", ".join(f"{cls}: {n}" for cls, n in sorted(judgment.redactions.items()))
        return {**message, part: new_part}

    def _record(self, context: ResponseContext, judgment: Judgment, seconds: float) -> None:
        """The response's line in the decision log, under the request's decision id."""
        log.info(
            "response",
            extra={
                "event": "response",
                "decision_id": context.decision_id,
                "agent": context.agent,
                "mcp_method": context.method,
                "tool": context.name,
                "verdict": "error" if judgment.refused else "allow",
                "reasons": [judgment.reason] if judgment.reason else [],
                "hidden": judgment.hidden,
                "changed_tools": judgment.changed_tools,
                "redactions": dict(judgment.redactions),
                "latency_ms": round(seconds * 1000, 3),
            },
        )
