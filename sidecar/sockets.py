"""Permissions of the unix sockets the sidecar listens on (the check, gRPC and ext_proc sockets)."""

from __future__ import annotations

from pathlib import Path


def restrict_socket(path: Path) -> None:
    """Owner and group only: Envoy reaches the socket through a shared group (an emptyDir with
    fsGroup in Kubernetes); the directory's own permissions keep everyone else out."""
    path.chmod(0o660)
