"""The opa-envoy-plugin profile's phases: the plugin's input, an optional identity, its result.

read the request as the plugin does (400 on a parse error) → the SPIFFE identity when one is
presented (never required; credentials stay in the headers for the policy) → ask OPA → answer
as the plugin answers (dry-run: always allow).
"""

from __future__ import annotations

import contextlib
from dataclasses import replace

from sidecar import metrics, plugin_result
from sidecar.call import Call
from sidecar.decision import DecisionError
from sidecar.identity import IdentityError
from sidecar.input import agent_input
from sidecar.opa import OpaClient, OpaError
from sidecar.outcome import Decision, PluginEffect
from sidecar.phases.identity import Resolver
from sidecar.phases.policy import ask_opa
from sidecar.plugin_input import RequestParseError, plugin_input
from sidecar.request import PARTIAL_BODY_HEADER

# Where a request the plugin could not parse is logged: OPA logs every data query, defined or not.
PARSE_ERROR_PATH = "authz_sidecar/request_parse_error"


class ReadPluginRequest:
    """The plugin's input document; what it cannot parse is its 400 ``request_parse_error``, and
    it appears in OPA's decision log (path :data:`PARSE_ERROR_PATH`, the error in the input)."""

    stage = "body"

    def __init__(
        self, opa: OpaClient, *, skip_body_parse: bool, hidden_headers: frozenset[str], body_buffer_limit: int
    ) -> None:
        self._opa = opa
        self._skip_body_parse = skip_body_parse
        self._hidden_headers = hidden_headers
        self._body_buffer_limit = body_buffer_limit

    async def run(self, call: Call) -> Decision | None:
        request = call.request
        # HTTP mode: Envoy rewrites content-length to what it sent and flags a partial body only
        # when it holds more, so a body that filled its buffer may be cut: never judged as whole.
        if request.attributes is None and len(request.body) >= self._body_buffer_limit:
            call.request = request = replace(request, headers={**request.headers, PARTIAL_BODY_HEADER: "true"})
        try:
            call.input_doc = plugin_input(
                request, skip_body_parse=self._skip_body_parse, hidden_headers=self._hidden_headers
            )
        except RequestParseError as exc:
            await self._log(call, exc)
            body = exc.body.encode()
            effect = PluginEffect(message=exc.body)  # the plugin answers before it has a decision id
            return Decision("deny", 400, call.decision_id, (exc.body,), body=body, plugin=effect)
        return None

    async def _log(self, call: Call, error: RequestParseError) -> None:
        attributes = call.request.attributes or {"request": {"http": {"method": call.request.method}}}
        document = {"error": {"code": error.CODE, "message": error.reason}, "attributes": attributes}
        # Undefined (no rule there) is the usual answer; OPA has logged the event all the same.
        with contextlib.suppress(OpaError):
            await self._opa.decide(document, PARSE_ERROR_PATH)


class OptionalIdentity:
    """``input.agent`` when a verified SPIFFE identity is presented; otherwise the policy decides alone."""

    stage = "identity"

    def __init__(self, resolver: Resolver) -> None:
        self._resolver = resolver

    async def run(self, call: Call) -> Decision | None:
        try:
            call.identity = self._resolver.resolve(call.request.headers, call.request.peer_principal)
        except IdentityError:  # a plugin policy reads the credential itself (io.jwt.decode_verify …)
            call.identity = None
        if call.identity is not None and call.input_doc is not None:
            call.input_doc["agent"] = agent_input(call.identity)
        return None


class AskPluginPolicy:
    """POST the input to the decision path; no answer is a 503, as in every profile."""

    stage = "opa"

    def __init__(self, opa: OpaClient) -> None:
        self._opa = opa

    async def run(self, call: Call) -> Decision | None:
        if call.input_doc is None:
            return call.unavailable("no input document to ask the policy about")
        return await ask_opa(self._opa, call, call.input_doc)


class AnswerLikePlugin:
    """The plugin's answer to the result; an unreadable result is a 503, never an allow."""

    stage = "decision"

    def __init__(self, *, dry_run: bool) -> None:
        self._dry_run = dry_run

    async def run(self, call: Call) -> Decision | None:
        try:
            return plugin_result.answer(call.policy_answer, decision_id=call.decision_id, dry_run=self._dry_run)
        except DecisionError as exc:
            metrics.OPA_ERRORS.labels(exc.code).inc()
            return call.refused(exc, f"policy answer unusable: {exc}")
