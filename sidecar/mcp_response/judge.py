"""One MCP response judged: filter listed items, pin tool definitions, redact tool output.

Transport-neutral: bytes and a content type in, a :class:`Judgment` out (the body to send, or a
JSON-RPC error replacing the response). A body that is neither JSON nor an SSE stream, a JSON-RPC
message that is not the answer to this request, a list item without a name, an unreachable
policy or store, a malformed policy answer: each is a refusal, never a pass.

An SSE stream can also be judged as it arrives (:class:`EventStream`): each event once it is
complete, passed on at once (a long tool call's progress notifications reach the agent while it
runs), an incomplete one held back. A failure after events went out cannot replace the response
any more: the stream then ends with an event carrying the JSON-RPC error, and nothing after it."""

from __future__ import annotations

import hashlib
import json
import logging
import re
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
SSE_FIELDS = frozenset({"data", "event", "id", "retry", ""})  # "": a comment
MAX_EVENT_BYTES = 1_048_576  # an event not complete within this many bytes is refused (as Envoy's buffer limit)
# The end of an SSE event: a blank line, whichever line ends the stream uses (HTML, "event stream").
# A lone CR counts only once something other than LF follows it: it may be the first half of a CRLF.
_EVENT_END = re.compile(rb"(?:\r\n|\n|\r(?=[^\n]))(?:\r\n|\n|\r(?=[^\n]))")


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


def is_event_stream(content_type: str | None) -> bool:
    return (content_type or "").split(";", 1)[0].strip().lower() == SSE_MEDIA


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
        if is_event_stream(content_type):
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
        judgment = Judgment()
        new = await self._judge_events(context, body, judgment, Answered())
        if new is not None:
            judgment.body = new
        return judgment

    async def _judge_events(
        self, context: ResponseContext, raw: bytes, judgment: Judgment, answered: Answered
    ) -> bytes | None:
        """Complete events of a stream as the agent may see them; None when unchanged."""
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise Unjudgeable("the event stream is not valid UTF-8") from exc
        events = sse.parse(text)
        changed = False
        for index, event in enumerate(events):
            unknown = sorted({name for name, _ in event.lines} - SSE_FIELDS)
            if unknown:  # a client ignores them, a careless one may read them: nothing passes unjudged
                raise Unjudgeable(f"the event stream has a field SSE does not define: {unknown[0][:40]!r}")
            data = event.data
            if data is None:
                continue
            message = loads_strict(data.encode())
            final = isinstance(message, dict) and ("result" in message or "error" in message)
            if final and answered.yes:
                raise Unjudgeable("the event stream answers the request more than once")
            answered.yes = answered.yes or final
            new = await self._judge_message(context, message, judgment, final=final)
            if new is not message:
                events[index] = event.with_data(json.dumps(new, separators=(",", ":"), ensure_ascii=False))
                changed = True
        return sse.serialize(events).encode() if changed else None

    def stream(self, context: ResponseContext) -> EventStream:
        """Judge an SSE response event by event as its chunks arrive."""
        return EventStream(self, context)

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


@dataclass
class Answered:
    """Whether a stream carried its final answer yet: a second one is refused."""

    yes: bool = False


class EventStream:
    """One SSE response judged as it streams: :meth:`feed` each chunk, send on what it returns.

    Complete events are judged and returned at once (unchanged bytes when nothing in them
    changed); an incomplete event is held until its blank line arrives, or the stream ends. A
    failure returns an event carrying the JSON-RPC error in place of what failed, and every later
    chunk returns nothing. The response's decision-log line is written once, at its end or failure."""

    def __init__(self, judge: ResponseJudge, context: ResponseContext) -> None:
        self._judge = judge
        self._context = context
        self._held = b""
        self._answered = Answered()
        self._seconds = 0.0
        self.done = False  # ended or failed: nothing more is sent
        self.judgment = Judgment()

    async def feed(self, chunk: bytes, end_of_stream: bool) -> bytes:
        """What the agent may see of the stream so far that it has not seen yet."""
        if self.done:
            return b""
        started = time.perf_counter()
        start = max(0, len(self._held) - 3)  # a blank line may straddle the chunks ("\r\n" + "\r\n")
        self._held += chunk
        ready, self._held = _complete_events(self._held, end_of_stream, start)
        try:
            if len(self._held) > MAX_EVENT_BYTES:
                raise Unjudgeable(f"an event of the stream is larger than {MAX_EVENT_BYTES} bytes")
            out = ready
            if ready.strip():
                judged = await self._judge._judge_events(self._context, ready, self.judgment, self._answered)
                out = ready if judged is None else judged
        except (Unjudgeable, BodyError, SidecarError) as exc:
            return self._fail(exc.reason, started)
        except Exception:  # a bug must fail closed too
            log.exception("response judge failed", extra={"decision_id": self._context.decision_id})
            return self._fail("internal error while judging the response", started)
        self._seconds += time.perf_counter() - started
        if end_of_stream:
            self.done = True
            self._judge._record(self._context, self.judgment, self._seconds)
        return out

    def close(self) -> None:
        """The stream ended before its last chunk (the client left, a timeout): its line is written."""
        if not self.done:
            self.done = True
            self.judgment.reason = self.judgment.reason or "the stream ended before its last chunk"
            self._judge._record(self._context, self.judgment, self._seconds)

    def _fail(self, reason: str, started: float) -> bytes:
        context = self._context
        self.judgment.error = unjudged_error(context.request_id, context.decision_id, reason)
        self.judgment.reason = reason
        self.done, self._held = True, b""
        self._seconds += time.perf_counter() - started
        self._judge._record(context, self.judgment, self._seconds)
        return sse.serialize([sse.Event([("event", "message"), ("data", self.judgment.error.decode())])]).encode()


def _complete_events(buffer: bytes, end_of_stream: bool, start: int = 0) -> tuple[bytes, bytes]:
    """(the complete events at the start of ``buffer``, the rest); at the stream's end, all of it.
    ``start``: where a blank line may begin (what was held before had none)."""
    if end_of_stream:
        return buffer, b""
    ends = [match.end() for match in _EVENT_END.finditer(buffer, start)]
    if not ends:
        return b"", buffer
    return buffer[: ends[-1]], buffer[ends[-1] :]
