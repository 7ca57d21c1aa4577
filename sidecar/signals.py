"""Stopping long-running commands (the sidecar, the dev services) cleanly."""

from __future__ import annotations

import asyncio
import signal


async def until_signalled() -> None:
    """Return on the first SIGINT or SIGTERM (the way every long-running command here stops)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
