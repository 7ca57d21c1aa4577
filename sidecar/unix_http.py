"""Plain HTTP/1.1 over a unix socket, for the local stack's own sockets (check endpoint, OPA,
Envoy's admin) in tests and readiness waits. Standard library only: ``requests`` has no unix
transport, and these calls need none of its features."""

from __future__ import annotations

import http.client
import json as jsonlib
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


@dataclass(frozen=True)
class UnixResponse:
    """The parts of a ``requests.Response`` the tests read."""

    status_code: int
    headers: dict[str, str]  # lower-case names
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return jsonlib.loads(self.content)


def unix_request(
    socket_path: Path,
    method: str,
    target: str,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    json: Any = None,
    timeout: float = 10.0,
) -> UnixResponse:
    """One request on its own connection; ``json`` is sent as the body when given."""
    sent = dict(headers or {})
    if json is not None:
        body = jsonlib.dumps(json).encode()
        sent.setdefault("content-type", "application/json")
    connection = UnixHTTPConnection(socket_path, timeout)
    try:
        connection.request(method, target, body=body or None, headers=sent)
        response = connection.getresponse()
        return UnixResponse(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        connection.close()
