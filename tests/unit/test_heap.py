"""heap.freeze_startup_heap: what exists once the server started is left out of collections."""

from __future__ import annotations

import gc

from stepline_server.heap import freeze_startup_heap


class Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the collector frees it


def test_the_startup_heap_is_frozen_and_later_garbage_still_collected() -> None:
    kept = Node()
    try:
        freeze_startup_heap()
        assert gc.get_freeze_count() > 0
        assert not any(o is kept for g in range(3) for o in gc.get_objects(generation=g))
        later = Node()
        assert any(o is later for o in gc.get_objects(generation=0))
        del later
        assert gc.collect() >= 1  # the cycle made after the freeze is collected
    finally:
        gc.unfreeze()
