"""Adversarial suite fixtures: one real stack (OPA, sidecar, Envoy, demo upstream) per module.

Every attack goes through real Envoy. Besides the answer the client saw, a case can read what
the policy was asked (OPA's console decision log, by decision id) and what the upstream
received (the demo upstream's JSON access line, by decision id), so "safe handling" is checked
where it happens, not inferred from a status code.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from devstack.agent_client import AgentClient, jsonrpc
from devstack.stack import Ports, Stack

pytestmark = [pytest.mark.e2e, pytest.mark.adversarial]

READER = "spiffe://demo.local/agent/reader"
WRITER = "spiffe://demo.local/agent/writer"
ASSISTANT = "spiffe://demo.local/agent/assistant"


class Attacker(AgentClient):
    """The shared agent client, plus what attacks need: bytes sent as they are, and the evidence the stack logged."""

    def send(self, method: str, path: str, headers: dict[str, str] | None = None, **kw: Any) -> requests.Response:
        """Exactly ``headers`` (no token of the client's own) through the egress listener."""
        return self.request(method, path, None, headers, **kw)

    def mcp_body(self, tool: str, arguments: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
        return jsonrpc("tools/call", tool, arguments, 7, **extra)[1]

    def raw(self, data: bytes, port: int | None = None) -> tuple[int, dict[str, str], bytes]:
        """Send bytes as they are (requests would normalise them); (status, headers, body)."""
        with socket.create_connection(("127.0.0.1", port or self.stack.ports.egress), timeout=10) as conn:
            conn.sendall(data)
            received = b""
            while True:
                chunk = conn.recv(65_536)
                if not chunk:
                    break
                received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(lines[0].split()[1]), headers, body

    def raw_request(self, line: str, headers: list[str], body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
        head = "\r\n".join([line, *headers, "Connection: close", "", ""]).encode("latin-1")
        return self.raw(head + body)

    # -- evidence ---------------------------------------------------------------------
    def opa_event(self, decision_id: str, timeout: float = 5.0) -> dict[str, Any]:
        """OPA's decision-log event for ``decision_id`` (console log, written asynchronously)."""
        return _wait_for_line(self.stack.logs / "opa.log", "decision_id", decision_id, timeout)

    def upstream_saw(self, decision_id: str, timeout: float = 5.0) -> dict[str, Any]:
        """The demo upstream's access line for the request allowed under ``decision_id``."""
        return _wait_for_line(self.stack.logs / "upstream.log", "decision_id", decision_id, timeout)

    def upstream_lines(self) -> list[dict[str, Any]]:
        return _json_lines(self.stack.logs / "upstream.log")


def _json_lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue
    return lines


def _wait_for_line(path: Path, key: str, value: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        for line in _json_lines(path):
            if line.get(key) == value:
                return line
        if time.monotonic() > deadline:
            raise AssertionError(f"no line with {key}={value} in {path.name}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, opa_bin: str, envoy_bin: str) -> Iterator[Stack]:
    with Stack(tmp_path_factory.mktemp("adversarial"), Ports.free()) as running:
        yield running


@pytest.fixture(scope="module")
def attacker(stack: Stack) -> Attacker:
    return Attacker(stack)


def verdict(response: requests.Response) -> dict[str, Any]:
    """The deny document, whether plain JSON or the ``data`` of a JSON-RPC error."""
    document: dict[str, Any] = response.json()
    if "jsonrpc" in document:
        data: dict[str, Any] = document["error"]["data"]
        return data
    return document
