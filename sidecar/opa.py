"""The OPA seam: what the sidecar asks of OPA (:class:`OpaClient`), and the real client over
OPA's REST API (:class:`HttpOpaClient`, one pooled keep-alive session, fail-closed).

Everything else depends on the protocol only, so unit tests run the pipeline, tasks, approvals
and shadow mode on :class:`sidecar.opa_fake.FakeOpa` (shipped, like httpx's ``MockTransport``).

Any failure (OPA down, slow, non-200, not JSON, no result) raises :class:`OpaError`,
which the pipeline turns into a 503. Nothing here ever produces an allow by itself.

A query at another path than the check's (the task and approver APIs) is logged as one
``authz.opa`` line with OPA's decision id, so every event in OPA's decision log can be traced to
a record of the sidecar's (the checks have their ``authz.decision`` line).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import orjson

from sidecar.errors import Kind, SidecarError
from sidecar.logformat import parse_time
from sidecar.tracing import inject

QUERY_LOGGER = logging.getLogger("authz.opa")


class OpaError(SidecarError):
    """OPA could not give a usable answer; ``reason`` is short and safe to show.

    ``code`` is the metric label: unreachable | timeout | status | malformed | undefined."""

    KIND = Kind.UNAVAILABLE

    def __init__(self, reason: str, code: str) -> None:
        super().__init__(reason, code=code)


@dataclass(frozen=True)
class BundleStatus:
    """One bundle as OPA's Status API reports it; times are Unix seconds, None when OPA has none."""

    revision: str
    activated_at: float | None = None  # last_successful_activation
    last_success_at: float | None = None  # last_successful_request: the bundle service answered (200 or 304)


@dataclass(frozen=True)
class OpaAnswer:
    result: Any
    decision_id: str | None
    seconds: float


def dumps(document: Any) -> bytes:
    """JSON for OPA; orjson is several times faster than the standard library on input documents."""
    try:
        return orjson.dumps(document)
    except TypeError:  # e.g. an integer beyond 64 bits from a request body: json handles it
        return json.dumps(document, separators=(",", ":")).encode()


def loads(raw: bytes) -> Any:
    """Parse OPA's answer; raises ValueError (orjson.JSONDecodeError) when it is not JSON."""
    return orjson.loads(raw)


class OpaClient(Protocol):
    """What the sidecar asks of OPA. ``decide`` raises :class:`OpaError`, never answers on a failure."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def decide(self, input_doc: dict[str, Any], path: str | None = None, *, trace: bool = True) -> OpaAnswer:
        """The result at ``path`` (default: the configured decision path) for ``input_doc``.

        ``trace``: log OPA's decision id of a query at another path (``authz.opa``)."""
        ...

    async def health(self) -> tuple[bool, str]:
        """(ready, why not): ready once OPA serves with its bundles activated."""
        ...

    async def bundle_revisions(self) -> dict[str, str] | None:
        """Active revision per bundle; None when OPA cannot say."""
        ...

    async def bundle_status(self) -> dict[str, BundleStatus] | None:
        """Each bundle's revision, activation and last successful fetch; None when OPA cannot say."""
        ...


class HttpOpaClient:
    """Queries ``POST {url}/v1/data/{decision_path}``; ``unix://`` URLs use a unix socket."""

    def __init__(
        self,
        url: str,
        decision_path: str,
        timeout_ms: int,
        max_connections: int,
        trace_configs: Sequence[aiohttp.TraceConfig] = (),
    ) -> None:
        """``trace_configs``: client hooks that record a span per query (tracing on)."""
        self._trace_configs = list(trace_configs)
        self._unix_path = url[len("unix://") :] if url.startswith("unix://") else None
        self._base = "http://opa" if self._unix_path else url
        self._decision_path = decision_path
        self._timeout = aiohttp.ClientTimeout(total=timeout_ms / 1000)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector: aiohttp.BaseConnector
        if self._unix_path:
            connector = aiohttp.UnixConnector(path=self._unix_path, limit=self._max_connections)
        else:
            connector = aiohttp.TCPConnector(limit=self._max_connections, keepalive_timeout=60)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=self._timeout, trace_configs=self._trace_configs or None
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def decide(self, input_doc: dict[str, Any], path: str | None = None, *, trace: bool = True) -> OpaAnswer:
        """Evaluate the decision at ``path`` (default: the configured decision path) for ``input_doc``.
        ``trace=False``: the caller logs OPA's decision id itself (the AuthZEN evaluations do)."""
        session = self._require_session()
        payload = dumps({"input": input_doc})
        headers = {"content-type": "application/json"}
        inject(headers)  # OPA (with distributed_tracing on) puts the check's trace id in its decision log
        started = time.perf_counter()
        try:
            async with session.post(
                f"{self._base}/v1/data/{path or self._decision_path}", data=payload, headers=headers
            ) as response:
                raw = await response.read()
                status = response.status
        except TimeoutError as exc:
            raise OpaError("policy engine timed out", "timeout") from exc
        except aiohttp.ClientError as exc:
            raise OpaError("policy engine is unreachable", "unreachable") from exc
        seconds = time.perf_counter() - started
        if status != 200:
            raise OpaError(f"policy engine answered HTTP {status}", "status")
        try:
            document = loads(raw)
        except ValueError as exc:
            raise OpaError("policy engine answered with invalid JSON", "malformed") from exc
        if not isinstance(document, dict):
            raise OpaError("policy engine answer is not a JSON object", "malformed")
        if "result" not in document:
            raise OpaError("policy defines no decision at the configured path", "undefined")
        decision_id = document.get("decision_id")
        answer = OpaAnswer(
            result=document["result"],
            decision_id=decision_id if isinstance(decision_id, str) and decision_id else None,
            seconds=seconds,
        )
        if trace and path is not None and path != self._decision_path and answer.decision_id:
            QUERY_LOGGER.info("policy query", extra={"decision_id": answer.decision_id, "path": path})
        return answer

    async def health(self) -> tuple[bool, str]:
        """Ready when OPA answers ``/health?bundles`` with 200 (server up, bundles activated)."""
        session = self._require_session()
        try:
            async with session.get(f"{self._base}/health?bundles") as response:
                if response.status == 200:
                    return True, "ok"
                return False, f"OPA /health?bundles answered {response.status}"
        except (TimeoutError, aiohttp.ClientError) as exc:
            return False, f"OPA unreachable ({type(exc).__name__})"

    async def bundle_revisions(self) -> dict[str, str] | None:
        """Active revision per bundle from OPA's ``/v1/status``; ``None`` when OPA cannot say.

        The Status API (OPA's ``status`` plugin) is used because it is not a Data API query:
        asking ``/v1/data/system/bundles`` would put a decision into the decision log on every probe.
        """
        status = await self.bundle_status()
        return None if status is None else {name: bundle.revision for name, bundle in status.items()}

    async def bundle_status(self) -> dict[str, BundleStatus] | None:
        """Each bundle's status from OPA's ``/v1/status``; ``None`` when OPA cannot say."""
        session = self._require_session()
        try:
            async with session.get(f"{self._base}/v1/status") as response:
                if response.status != 200:
                    return None
                document = loads(await response.read())
        except (TimeoutError, aiohttp.ClientError, ValueError):
            return None
        bundles = document.get("result", {}).get("bundles") if isinstance(document, dict) else None
        if not isinstance(bundles, dict):
            return None
        return {
            str(name): BundleStatus(
                revision=str(status.get("active_revision", "")),
                activated_at=_timestamp(status.get("last_successful_activation")),
                last_success_at=_timestamp(status.get("last_successful_request")),
            )
            for name, status in bundles.items()
            if isinstance(status, dict)
        }

    def _require_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("HttpOpaClient.start() was not awaited")
        return self._session


def _timestamp(value: Any) -> float | None:
    """An OPA status time (RFC 3339, nanoseconds) as Unix seconds; None for none or Go's zero time."""
    if not isinstance(value, str):
        return None
    try:
        seconds = parse_time(value).timestamp()
    except ValueError:
        return None
    return seconds if seconds > 0 else None
