"""Stopping long-running commands (the sidecar, the dev services) cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import signal

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


async def until_signalled() -> None:
    """Return on the first SIGINT or SIGTERM (the way every long-running command here stops)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def announce_drain(draining: asyncio.Event, delay_seconds: float) -> None:
    """Set ``draining`` (readiness fails from now on) and keep serving for ``delay_seconds``, so
    that whoever routes checks here notices before the listeners close. A second signal ends the
    wait early: an operator who asks twice wants it over."""
    draining.set()
    again = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, again.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(again.wait(), delay_seconds)
