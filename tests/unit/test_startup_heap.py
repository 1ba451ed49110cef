"""``make run`` keeps its start-up heap out of the collector's full passes once the stack is up."""

from __future__ import annotations

import gc

from local.stack import freeze_startup_heap


def test_the_startup_heap_is_frozen_out_of_the_collectors_passes() -> None:
    gc.collect()
    alive = len(gc.get_objects())
    try:
        freeze_startup_heap()
        assert gc.get_freeze_count() >= alive * 0.9
        assert len(gc.get_objects()) < alive * 0.1  # what the collector still walks
    finally:
        gc.unfreeze()
