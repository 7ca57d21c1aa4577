"""The phases of the request path: small objects with one ``run`` each (see :mod:`sidecar.pipeline`).

A phase reads the facts earlier phases put on the :class:`~sidecar.call.Call`, adds its own,
and either answers (returns a :class:`~sidecar.outcome.Decision`, which ends the call) or passes
(returns None). ``stage`` names the phase in the decision record and the metrics.
"""

from __future__ import annotations

from typing import Protocol

from sidecar.call import Call
from sidecar.outcome import Decision


class Phase(Protocol):
    """One step of the request path."""

    stage: str

    async def run(self, call: Call) -> Decision | None:
        """Answer the call, or add facts to it and return None to pass it on."""
        ...
