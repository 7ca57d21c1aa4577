"""Optional webhook for new pending approvals, so a chat or ticket system can ask a human.

POSTs JSON with ``x-authz-event`` and ``x-authz-signature: sha256=<HMAC-SHA256 of the body>``
(the secret from ``approvals.webhook_secret_file``). Fire and forget: a failing webhook is
logged and never changes a decision.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from typing import Any

import aiohttp

log = logging.getLogger(__name__)


def signature(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


class Webhook:
    def __init__(self, url: str, secret: bytes, timeout_s: float = 3.0) -> None:
        self._url = url
        self._secret = secret
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._tasks: set[asyncio.Task[None]] = set()

    def notify(self, event: str, payload: dict[str, Any]) -> None:
        task = asyncio.get_running_loop().create_task(self._send(event, payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, event: str, payload: dict[str, Any]) -> None:
        # ASCII only: whatever shows it to a human (a chat, a ticket) never gets a raw control
        # character or bidirectional override from the agent's request, only its \u escape.
        body = json.dumps({"event": event, "approval": payload}, separators=(",", ":"), ensure_ascii=True).encode()
        headers = {
            "content-type": "application/json",
            "x-authz-event": event,
            "x-authz-signature": signature(self._secret, body),
        }
        try:
            async with (
                aiohttp.ClientSession(timeout=self._timeout) as session,
                session.post(self._url, data=body, headers=headers) as response,
            ):
                if response.status >= 300:
                    log.warning("approval webhook answered %s", response.status, extra={"event": event})
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("approval webhook failed: %s", type(exc).__name__, extra={"event": event})
