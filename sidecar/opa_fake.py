"""A fake OPA behind the :class:`sidecar.opa.OpaClient` seam, shipped like httpx's ``MockTransport``.

``FakeOpa(handler)`` answers each query with ``handler(query)``: the result document (what OPA's
``result`` would hold), or an :class:`OpaAnswer` to set the decision id, or an awaitable of either;
raising :class:`OpaError` stands for a failing OPA. Helpers build the common handlers::

    opa = FakeOpa(always({"verdict": "allow", "reasons": ["ok"]}))
    opa = FakeOpa(in_order(True, unreachable(), False))
    opa = FakeOpa(routes({"agent/authz/decision": always(True), "agent/tasks/decision": grant}))

Every query is recorded in ``queries`` with the input as OPA would receive it (a JSON round trip,
so a document the real client could not send fails here too, and later changes to it do not show).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sidecar.opa import BundleStatus, OpaAnswer, OpaError, dumps, loads

DEFAULT_DECISION_PATH = "agent/authz/decision"


@dataclass(frozen=True)
class Query:
    """One question the sidecar asked: at ``path`` (never None: the default is resolved), about ``input``."""

    path: str
    input: dict[str, Any]


Handler = Callable[[Query], Any]


class FakeOpa:
    """An in-process OPA: answers from ``handler``, records every query; see the module docstring."""

    def __init__(
        self,
        handler: Handler,
        *,
        decision_path: str = DEFAULT_DECISION_PATH,
        timeout_ms: int | None = None,
        healthy: tuple[bool, str] = (True, "ok"),
        revisions: dict[str, str] | None = None,
    ) -> None:
        self.handler = handler
        self.created_at = time.time()
        self.decision_path = decision_path
        self.timeout_ms = timeout_ms  # an async handler slower than this fails as the real client does
        self.healthy = healthy
        self.revisions = revisions
        self.queries: list[Query] = []
        self.started = False
        self.closed = False

    @property
    def inputs(self) -> list[dict[str, Any]]:
        """The input of every query, in order."""
        return [query.input for query in self.queries]

    async def start(self) -> None:
        self.started = True

    async def close(self) -> None:
        self.closed = True

    async def decide(self, input_doc: dict[str, Any], path: str | None = None, *, trace: bool = True) -> OpaAnswer:
        query = Query(path or self.decision_path, loads(dumps(input_doc)))
        self.queries.append(query)
        started = time.perf_counter()
        answer = self.handler(query)
        if inspect.isawaitable(answer):
            answer = await self._in_time(answer)
        if isinstance(answer, OpaAnswer):
            return answer
        return OpaAnswer(answer, None, time.perf_counter() - started)

    async def health(self) -> tuple[bool, str]:
        return self.healthy

    async def bundle_revisions(self) -> dict[str, str] | None:
        return self.revisions

    async def bundle_status(self) -> dict[str, BundleStatus] | None:
        """The revisions, activated when this fake was made (bundles fetched from nowhere)."""
        if self.revisions is None:
            return None
        return {name: BundleStatus(revision, activated_at=self.created_at) for name, revision in self.revisions.items()}

    async def _in_time(self, pending: Any) -> Any:
        if self.timeout_ms is None:
            return await pending
        try:
            async with asyncio.timeout(self.timeout_ms / 1000):
                return await pending
        except TimeoutError as exc:
            raise timed_out() from exc


# -- handlers ---------------------------------------------------------------------------------------
def always(result: Any) -> Handler:
    """Every query gets ``result``; an :class:`OpaError` is raised instead of returned."""

    def handler(query: Query) -> Any:
        return _give(result)

    return handler


def in_order(*results: Any) -> Handler:
    """The n-th query gets the n-th result (an :class:`OpaError` is raised); one query too many is an error."""
    remaining = list(results)

    def handler(query: Query) -> Any:
        if not remaining:
            raise LookupError(f"FakeOpa: no answer left for a query at {query.path}")
        return _give(remaining.pop(0))

    return handler


def routes(by_path: Mapping[str, Handler]) -> Handler:
    """Dispatch on the decision path; a path with no handler is undefined, as in OPA."""

    def handler(query: Query) -> Any:
        route = by_path.get(query.path)
        if route is None:
            raise undefined()
        return route(query)

    return handler


def _give(result: Any) -> Any:
    if isinstance(result, OpaError):
        raise result
    return result


# -- failures, with the real client's reasons and kinds ---------------------------------------------
def unreachable() -> OpaError:
    return OpaError("policy engine is unreachable", "unreachable")


def timed_out() -> OpaError:
    return OpaError("policy engine timed out", "timeout")


def bad_status(status: int) -> OpaError:
    return OpaError(f"policy engine answered HTTP {status}", "status")


def malformed() -> OpaError:
    return OpaError("policy engine answered with invalid JSON", "malformed")


def undefined() -> OpaError:
    return OpaError("policy defines no decision at the configured path", "undefined")
