"""The RFC 8693 ``act`` chain of a verified token, outermost (current) actor first."""

from __future__ import annotations

from typing import Any

from sidecar.errors import Kind, SidecarError


class DelegationError(SidecarError, ValueError):
    """The ``act`` claim is malformed or deeper than allowed."""

    KIND = Kind.UNAUTHENTICATED
    CODE = "delegation"


def actor_chain(claims: dict[str, Any], max_depth: int) -> list[str]:
    """Walk nested ``act`` claims; only verified claims may be passed in."""
    chain: list[str] = []
    node = claims.get("act")
    while node is not None:
        if not isinstance(node, dict) or not isinstance(node.get("sub"), str):
            raise DelegationError("'act' claim must be an object with a string 'sub'")
        chain.append(node["sub"])
        if len(chain) > max_depth:
            raise DelegationError(f"delegation chain is deeper than {max_depth}")
        node = node.get("act")
    return chain
