"""relance.heap: the start-up state is frozen out of the cyclic collector, nothing else."""

from __future__ import annotations

import gc
from pathlib import Path
from types import SimpleNamespace

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


def test_a_warm_start_decodes_the_open_cases_and_freezes_them(tmp_path: Path) -> None:
    from relance.app import Daemon
    from relance.model import Case, CaseState
    from relance.store.state import StateStore
    from tests.unit.test_state import make_case

    store = StateStore(tmp_path)
    with store.transaction() as tx:
        tx.put_case(make_case("OPEN-1", state=CaseState.CHASING))
        tx.put_case(make_case("PAID-1", state=CaseState.PAID))
    restarted = StateStore(tmp_path)
    gc.unfreeze()
    assert Daemon.warm_start(SimpleNamespace(store=restarted)) is None  # type: ignore[arg-type]
    assert gc.isenabled() and gc.get_freeze_count() > 0
    cached = restarted._cache
    assert cached is not None
    entries = {e.number if isinstance(e, Case) else e["number"]: e
               for e in cached.snapshot.tables["cases"].values()}
    assert isinstance(entries["OPEN-1"], Case), "decoded once, for the first plan"
    assert not isinstance(entries["PAID-1"], Case), "a closed case is left as stored"
    heap.thaw()


@pytest.mark.parametrize("decode_open", [True, False])
def test_a_warm_start_decodes_the_open_cases_only_when_asked(
    tmp_path: Path, decode_open: bool
) -> None:
    from relance.app import Daemon
    from relance.model import Case, CaseState
    from relance.store.state import StateStore
    from tests.unit.test_state import make_case

    store = StateStore(tmp_path)
    with store.transaction() as tx:
        tx.put_case(make_case("OPEN-1", state=CaseState.CHASING))
        tx.put_case(make_case("PAID-1", state=CaseState.PAID))
    restarted = StateStore(tmp_path)
    gc.unfreeze()
    daemon = SimpleNamespace(store=restarted)
    assert Daemon.warm_start(daemon, decode_open=decode_open) is None  # type: ignore[arg-type]
    assert gc.isenabled() and gc.get_freeze_count() > 0
    cached = restarted._cache
    assert cached is not None
    entries = {e.number if isinstance(e, Case) else e["number"]: e
               for e in cached.snapshot.tables["cases"].values()}
    assert isinstance(entries["OPEN-1"], Case) is decode_open
    assert not isinstance(entries["PAID-1"], Case), "a closed case is left as stored"
    heap.thaw()
