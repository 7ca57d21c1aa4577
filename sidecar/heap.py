"""The garbage collector, set for a long-running server once it has started.

What start-up builds (modules, the config's models, compiled schemas, the apps: about 150,000
objects) lives as long as the process. Frozen (:func:`gc.freeze`), a full collection no longer walks
it: with the default settings one came every few thousand checks and walked all of it, a 50-85 ms
pause. A larger young generation lets most of a check's short-lived objects die by reference count
before a collection visits them. In a microbenchmark of the pipeline (memory store, decision log
on), the collector took 84-100 ms per 4,000 checks before, 15-17 ms after (README, Performance).
Cyclic garbage is still collected, only less often.
"""

from __future__ import annotations

import gc

# Objects allocated (net of those freed) between young-generation collections; CPython's default is 700.
YOUNG_THRESHOLD = 10_000


def settle_heap() -> None:
    """Collect what start-up left behind, freeze the rest and widen the young generation."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
