"""OPA's config for the local stack: the signed bundle (built by :mod:`sidecar.policy.bundle`)
from the bundle service (``authz-bundle-server``), decision logs to the receiver, with signature
verification and polling exactly as a cluster would.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from sidecar.policy.bundle import SIGNING_ALG

BUNDLE_NAME = "authz"
BUNDLE_RESOURCE = f"bundles/{BUNDLE_NAME}.tar.gz"
KEY_ID = "authz-bundle"
# OPA keeps decision-log events it could not upload yet in memory up to this size, then drops the
# oldest (counted in its metrics); the same limit as charts/authz-sidecar/files/opa.yaml.
DECISION_LOG_BUFFER_BYTES = 16 * 1024 * 1024


def opa_config(
    *,
    bundle_service_url: str | None,
    public_key: Path | None,
    decision_log_url: str | None,
    polling: tuple[int, int] = (1, 3),
    token_path: Path | None = None,
) -> dict[str, Any]:
    """OPA's config file: the signed bundle from a bundle service, decision logs to a receiver.

    Either part may be left out (``None``). The status plugin is on so the sidecar's ``/readyz``
    can report the active revision from ``/v1/status``.
    """
    config: dict[str, Any] = {"services": {}, "status": {"prometheus": True}, **decision_log_identity()}
    if bundle_service_url is not None:
        if public_key is None:
            raise ValueError("a bundle service needs the public key its bundles are verified with")
        config["services"]["bundles"] = {"url": bundle_service_url, **_bearer(token_path)}
        config["bundles"] = {
            BUNDLE_NAME: {
                "service": "bundles",
                "resource": BUNDLE_RESOURCE,
                "persist": False,
                "polling": {"min_delay_seconds": polling[0], "max_delay_seconds": polling[1]},
                "signing": {"keyid": KEY_ID},
            }
        }
        config["keys"] = {KEY_ID: {"algorithm": SIGNING_ALG, "key": public_key.read_text()}}
    if decision_log_url is not None:
        config["services"]["decision_logs"] = {"url": decision_log_url, **_bearer(token_path)}
        config["decision_logs"] = {
            "service": "decision_logs",
            "console": True,
            "reporting": {
                "min_delay_seconds": 1,
                "max_delay_seconds": 2,
                "buffer_size_limit_bytes": DECISION_LOG_BUFFER_BYTES,
            },
        }
    else:
        config["decision_logs"] = {"console": True}
    return config


def _bearer(token_path: Path | None) -> dict[str, Any]:
    """OPA reads the services' bearer token from a file only its user can open."""
    return {"credentials": {"bearer": {"token_path": str(token_path)}}} if token_path else {}


def decision_log_identity() -> dict[str, Any]:
    """What makes a decision-log event traceable and replayable, for every OPA of the local stack:
    ``labels`` naming where it ran (as the pod, namespace and deployment do in Kubernetes; OPA
    adds its own ``id`` and ``version``), and ``nd_builtin_cache``: the values of non-deterministic
    built-ins (``time.now_ns``) in each event, so ``authz-sidecar policy replay`` decides at the
    recorded time."""
    labels = {"pod": socket.gethostname(), "namespace": "local", "deployment": "authz-dev-stack"}
    return {"labels": labels, "nd_builtin_cache": True}


def decision_log_flags() -> list[str]:
    """:func:`decision_log_identity` as ``opa run --set`` flags, for an OPA without a config file."""
    identity = decision_log_identity()
    flags = [f"labels.{name}={value}" for name, value in identity["labels"].items()]
    flags.append(f"nd_builtin_cache={str(identity['nd_builtin_cache']).lower()}")
    return [arg for flag in flags for arg in ("--set", flag)]
