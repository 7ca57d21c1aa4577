"""The collector's settings once the sidecar has started (sidecar/heap.py)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from sidecar.heap import YOUNG_THRESHOLD, settle_heap


@pytest.fixture
def restore_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restore_gc")
def test_start_up_objects_are_frozen_and_the_young_generation_widened() -> None:
    class Node:
        def __init__(self) -> None:
            self.me = self

    Node()  # start-up garbage in a cycle: collected before the freeze, never frozen with the rest
    kept = Node()
    _, older, oldest = gc.get_threshold()
    settle_heap()
    assert gc.get_freeze_count() > 0
    assert not [o for o in gc.get_objects() if isinstance(o, Node)], "frozen objects are out of the collector's view"
    assert gc.get_threshold() == (YOUNG_THRESHOLD, older, oldest)
    after = Node()  # an object of a check: still tracked, and its cycles still collected
    assert gc.is_tracked(after) and [o for o in gc.get_objects() if isinstance(o, Node)] == [after]
    del after
    assert gc.collect() >= 1
    assert kept.me is kept
