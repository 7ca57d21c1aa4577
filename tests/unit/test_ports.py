"""Free ports for the local processes the tests start (Redis Cluster nodes with their bus ports,
sentinels, the stack's listeners): distinct within one pick, and free when picked."""

from __future__ import annotations

import socket

from devstack.ports import free_ports


def test_one_pick_never_repeats_a_port() -> None:
    ports = free_ports(64)
    assert len(ports) == 64 and len(set(ports)) == 64


def test_the_ports_are_free() -> None:
    sockets = [socket.socket() for _ in range(8)]
    try:
        for s, port in zip(sockets, free_ports(8), strict=True):
            s.bind(("127.0.0.1", port))
    finally:
        for s in sockets:
            s.close()
