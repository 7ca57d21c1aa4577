"""Free loopback TCP ports for local processes."""

from __future__ import annotations

import socket


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports free on 127.0.0.1 now: all held open until every one is picked, since
    the kernel may hand a port just closed to the next ``bind(0)`` (a server would then find its
    second port taken by its first)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()
