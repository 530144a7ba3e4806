"""relance.heap: the start-up state is frozen out of the cyclic collector, nothing else."""

from __future__ import annotations

import gc

import pytest

from relance import heap


def test_objects_made_inside_are_frozen_and_the_collector_runs_again() -> None:
    gc.unfreeze()
    with heap.long_lived():
        assert not gc.isenabled()
        kept = [{"case": n} for n in range(1000)]
    assert gc.isenabled()
    assert gc.get_freeze_count() >= len(kept)
    heap.thaw()
    assert gc.get_freeze_count() == 0


def test_a_body_that_raises_freezes_nothing() -> None:
    gc.unfreeze()
    with pytest.raises(RuntimeError, match="state unreadable"), heap.long_lived():
        raise RuntimeError("state unreadable")
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0


def test_a_paused_collector_stays_paused() -> None:
    gc.disable()
    try:
        with heap.long_lived():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
        gc.unfreeze()


def test_frozen_objects_are_still_freed_when_nothing_holds_them() -> None:
    import weakref

    class Doc:
        pass

    gc.unfreeze()
    with heap.long_lived():
        doc = Doc()
    alive = weakref.ref(doc)
    del doc  # no cycle: reference counting frees it, frozen or not
    assert alive() is None
    heap.thaw()

