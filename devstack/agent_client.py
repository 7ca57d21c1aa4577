"""One agent client for the local stack, shared by the demo, the e2e and adversarial suites and the bench.

An agent calls through Envoy's egress listener with a JWT-SVID (plus a task grant, an approval id
or an MCP JSON-RPC body when it has one), or through the mTLS ingress listener with an
X.509-SVID, and calls the sidecar's own task API directly; a human approver decides approvals with
an OIDC ID token. How a request is built (:func:`agent_headers`, :func:`jsonrpc`) is plain
functions, so the bench's generated load sends exactly what this client sends.

The ``post_*`` methods return the sidecar's answer as it is (the demo shows it); the others check
it and raise :class:`AgentClientError` with the answer when it is not the expected one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import requests

from devstack.stack import Stack

TASK_HEADER = "x-agent-task-token"
APPROVAL_HEADER = "x-agent-approval-id"  # what the agent retries with
PENDING_APPROVAL_HEADER = "x-authz-approval-id"  # what a step-up answer names
DECISION_ID_HEADER = "x-authz-decision-id"
APPROVER_GROUP = "security-approvers"  # the dev OIDC group the shipped approver policy trusts
TIMEOUT_S = 10.0


class AgentClientError(RuntimeError):
    """The sidecar's API did not answer as expected; ``response`` is what it did answer."""

    def __init__(self, what: str, response: requests.Response) -> None:
        super().__init__(f"{what}: {response.status_code} {response.text[:300]}")
        self.response = response


class JwtMinter(Protocol):
    def mint_jwt(self, spiffe_id: str, /, *, ttl: int = ..., extra_claims: dict[str, Any] | None = ...) -> str: ...


# -- building requests ------------------------------------------------------------------------------
def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def agent_headers(
    token: str | None,
    *,
    task: str | None = None,
    approval: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Headers of an agent's call: its JWT-SVID, task grant and approval id when it has them, then
    ``extra`` (which wins, so a test can send a wrong one on purpose)."""
    headers = bearer(token) if token is not None else {}
    if task is not None:
        headers[TASK_HEADER] = task
    if approval is not None:
        headers[APPROVAL_HEADER] = approval
    return {**headers, **(extra or {})}


def jsonrpc(
    method: str, tool: str | None = None, arguments: Any = None, rpc_id: int | str = 1, **params: Any
) -> tuple[dict[str, str], dict[str, Any]]:
    """(headers, body) of an MCP JSON-RPC request; ``tool`` names a ``tools/call``'s tool."""
    headers = {"mcp-method": method}
    if tool is not None:
        params = {"name": tool, "arguments": arguments or {}, **params}
        headers["mcp-name"] = tool
    return headers, {"jsonrpc": "2.0", "id": rpc_id, "method": method, "params": params}


def approval_id(response: requests.Response) -> str | None:
    """The pending approval a step-up answer asks the agent to wait for, if any."""
    return response.headers.get(PENDING_APPROVAL_HEADER)


# -- credentials ------------------------------------------------------------------------------------
class Tokens:
    """JWT-SVIDs for agents: a fresh one per call, or with ``reuse_s`` one per agent reused that long
    (re-minted before it expires, as a long-running agent does). Thread-safe."""

    def __init__(
        self,
        minter: JwtMinter,
        *,
        ttl: int = 300,
        reuse_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,  # only differences are used
    ) -> None:
        if reuse_s is not None and reuse_s >= ttl:
            raise ValueError("a reused token must be re-minted before it expires (reuse_s < ttl)")
        self._minter, self._ttl, self._reuse_s, self._clock = minter, ttl, reuse_s, clock
        self._lock = threading.Lock()
        self._cached: dict[str, tuple[float, str]] = {}  # agent → (re-mint at, token)

    def token(self, agent: str, **claims: Any) -> str:
        """A token for ``agent``; one with extra ``claims`` is always fresh and never reused."""
        if claims:
            return self._minter.mint_jwt(agent, ttl=self._ttl, extra_claims=claims)
        if self._reuse_s is None:
            return self._minter.mint_jwt(agent, ttl=self._ttl)
        with self._lock:
            now = self._clock()
            cached = self._cached.get(agent)
            if cached is None or now >= cached[0]:
                cached = (now + self._reuse_s, self._minter.mint_jwt(agent, ttl=self._ttl))
                self._cached[agent] = cached
            return cached[1]


# -- the client -------------------------------------------------------------------------------------
class AgentClient:
    """Calls a running :class:`Stack` as its agents and approvers do."""

    def __init__(
        self,
        stack: Stack,
        *,
        tokens: Tokens | None = None,
        http: requests.Session | None = None,
        timeout: float = TIMEOUT_S,
    ) -> None:
        self.stack = stack
        self.tokens = tokens or Tokens(stack.trust_domain)
        self.http = http  # None: a new connection per request, so a restarted process never meets a stale one
        self.timeout = timeout
        self._svids: dict[str, tuple[str, str]] = {}

    # -- credentials ----------------------------------------------------------------------------
    def token(self, agent: str, **claims: Any) -> str:
        return self.tokens.token(agent, **claims)

    def bearer(self, agent: str, **claims: Any) -> dict[str, str]:
        return bearer(self.token(agent, **claims))

    def svid(self, agent: str) -> tuple[str, str]:
        """(cert, key) files of an X.509-SVID for the mTLS ingress listener, minted once per agent."""
        if agent not in self._svids:
            out = self.stack.workdir / "agent-svids" / agent.rsplit("/", 1)[-1]
            files = self.stack.trust_domain.mint_x509(agent, out)
            self._svids[agent] = (str(files.cert), str(files.key))
        return self._svids[agent]

    def human(self, subject: str = "alice", groups: tuple[str, ...] = (APPROVER_GROUP,)) -> dict[str, str]:
        """An approver's headers: an OIDC ID token of the dev issuer."""
        return bearer(self.stack.oidc.mint(subject, list(groups)))

    # -- through Envoy --------------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        agent: str | None = None,
        headers: Mapping[str, str] | None = None,
        *,
        task: str | None = None,
        approval: str | None = None,
        **kw: Any,
    ) -> requests.Response:
        """``method path`` through the egress listener as ``agent`` (no token when None)."""
        token = self.token(agent) if agent is not None else None
        sent = agent_headers(token, task=task, approval=approval, extra=headers)
        return self._send(method, self.stack.egress_url + path, headers=sent, **kw)

    def mcp(
        self,
        agent: str | None,
        method: str,
        tool: str | None = None,
        arguments: Any = None,
        *,
        rpc_id: int | str = 1,
        headers: Mapping[str, str] | None = None,
        **kw: Any,
    ) -> requests.Response:
        """An MCP JSON-RPC request to ``/mcp`` (``kw`` as for :meth:`request`)."""
        mcp_headers, body = jsonrpc(method, tool, arguments, rpc_id)
        return self.request("POST", "/mcp", agent, {**mcp_headers, **(headers or {})}, json=body, **kw)

    def ingress(self, agent: str, method: str, path: str, **kw: Any) -> requests.Response:
        """``method path`` through the mTLS ingress listener with ``agent``'s X.509-SVID."""
        verify = str(self.stack.trust_domain.ca_cert)
        return self._send(method, self.stack.ingress_url + path, cert=self.svid(agent), verify=verify, **kw)

    # -- the sidecar's task API -----------------------------------------------------------------
    def post_task(self, agent: str, purpose: str, scopes: list[str], ttl: int = 300) -> requests.Response:
        body = {"purpose": purpose, "scopes": scopes, "ttl_seconds": ttl}
        return self._api("POST", "/v1/tasks", self.bearer(agent), body)

    def post_delegation(
        self, agent: str, task_id: str, to: str, scopes: list[str], ttl: int = 120
    ) -> requests.Response:
        body = {"to": to, "scopes": scopes, "ttl_seconds": ttl}
        return self._api("POST", f"/v1/tasks/{task_id}/delegate", self.bearer(agent), body)

    def post_completion(self, agent: str, task_id: str) -> requests.Response:
        return self._api("POST", f"/v1/tasks/{task_id}/complete", self.bearer(agent))

    def open_task(self, agent: str, purpose: str, scopes: list[str], ttl: int = 300) -> dict[str, Any]:
        """The grant (``id``, ``token``, …) of a task opened for ``agent``."""
        return _expect(201, "open a task", self.post_task(agent, purpose, scopes, ttl))

    def task_token(self, agent: str, purpose: str, scopes: list[str], ttl: int = 300) -> str:
        """The token of a task opened for ``agent``: it goes in ``x-agent-task-token``."""
        return str(self.open_task(agent, purpose, scopes, ttl)["token"])

    def delegate(self, agent: str, task_id: str, to: str, scopes: list[str], ttl: int = 120) -> dict[str, Any]:
        return _expect(201, "delegate a task", self.post_delegation(agent, task_id, to, scopes, ttl))

    def task(self, agent: str, task_id: str) -> dict[str, Any]:
        """The task as the sidecar's API shows it to its holder or a delegator."""
        return _expect(200, "read a task", self._api("GET", f"/v1/tasks/{task_id}", self.bearer(agent)))

    def complete(self, agent: str, task_id: str) -> dict[str, Any]:
        return _expect(200, "complete a task", self.post_completion(agent, task_id))

    # -- approvals ------------------------------------------------------------------------------
    def decide_approval(
        self,
        approval: str,
        approve: bool = True,
        who: Mapping[str, str] | None = None,
        reason: str = "checked by the agent client",
    ) -> requests.Response:
        """An approver (``who``: its headers; a dev OIDC approver by default) decides ``approval``."""
        verb = "approve" if approve else "reject"
        return self._api("POST", f"/v1/approvals/{approval}/{verb}", who or self.human(), {"reason": reason})

    # -- the demo upstream ----------------------------------------------------------------------
    def upstream_credential(self) -> str:
        """The last just-in-time credential the demo upstream accepted (its dev-only debug endpoint)."""
        url = f"http://127.0.0.1:{self.stack.ports.upstream}/debug/last-credential"
        token: str = self._send("GET", url).json()["token"]
        return token

    def _api(
        self, method: str, path: str, headers: Mapping[str, str], body: dict[str, Any] | None = None
    ) -> requests.Response:
        url = self.stack.sidecar_url + path
        return self._send(method, url, headers=dict(headers), json=body)

    def _send(self, method: str, url: str, timeout: float | None = None, **kw: Any) -> requests.Response:
        if self.http is None:
            return requests.request(method, url, timeout=timeout or self.timeout, **kw)
        return self.http.request(method, url, timeout=timeout or self.timeout, **kw)


def _expect(status: int, what: str, response: requests.Response) -> dict[str, Any]:
    if response.status_code != status:
        raise AgentClientError(f"could not {what}", response)
    document: dict[str, Any] = response.json()
    return document
