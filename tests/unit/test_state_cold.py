"""Settled cases leave the hot state for `closed.jsonl` and come back whole when asked for.

Why it matters: a restart parsed and indexed every case ever closed (10k of them took it
from 0.43 to 0.94 s); with the stubs, a pass never reads the cold file, yet a late answer
still finds its case by Message-ID and `status --all` still shows every case.
"""

from __future__ import annotations

import errno
import itertools
import json
import multiprocessing
import os
import random
import signal
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from relance.archive import cases_to_chill
from relance.model import OPEN_STATES, CaseState
from relance.store import state as state_module
from relance.store.state import (
    COLD_FILE,
    ColdFile,
    StateCorrupt,
    StateStore,
    case_to_doc,
)
from tests.unit.test_state import AT, make_case

FORK = multiprocessing.get_context("fork")
PAID = {"state": CaseState.PAID, "paused_until": None, "reason": "paid (owner)"}


def filled(tmp_path: Path) -> StateStore:
    """Three paid cases, one open, one in formal notice."""
    store = StateStore(tmp_path)
    with store.transaction() as tx:
        for n in range(1, 4):
            tx.put_case(make_case(f"P-{n}", **PAID))
        tx.put_case(make_case("OPEN-1"))
        tx.put_case(make_case("LETTER-1", state=CaseState.FORMAL_NOTICE))
    return store


def stored_cases(store: StateStore) -> dict[str, Any]:
    """The `cases` table as the files hold it (snapshot and log replayed)."""
    data = json.loads(store.path.read_text())
    cases: dict[str, Any] = data["cases"]
    if store.log_path.exists():
        for line in store.log_path.read_bytes().splitlines():
            decoded = state_module._decode_log_line(line)
            assert decoded is not None
            cases.update(decoded[1].get("cases", {}))
    return {doc["number"]: doc for doc in cases.values()}


def test_settled_cases_move_and_come_back_whole(tmp_path: Path) -> None:
    store = filled(tmp_path)
    with store.reading() as view:
        before = view.cases()

    moved = store.move_cold(["P-1", "P-2", "OPEN-1", "LETTER-1", "NOT-A-CASE"])

    assert moved == ["P-1", "P-2"], "only settled cases move: open and letter stay hot"
    docs = stored_cases(store)
    assert set(docs["P-1"]) == {"number", "state", "cold", "ids"}
    assert docs["P-1"]["state"] == "paid"
    assert docs["OPEN-1"] == case_to_doc(before["OPEN-1"])
    for fresh in (store, StateStore(tmp_path)):  # this process's cache, and a restart
        with fresh.reading() as view:
            assert view.cases() == before
            assert list(view.cases()) == list(before), "stored order is kept"
            assert view.get_case("P-2") == before["P-2"]
            assert view.cold_count() == 2
    store.compact()
    with StateStore(tmp_path).reading() as view:
        assert view.cases() == before, "the stubs survive compaction"


def test_a_late_answer_finds_its_cold_case_by_message_id(tmp_path: Path) -> None:
    store = filled(tmp_path)
    store.move_cold(["P-1"])
    with StateStore(tmp_path).reading() as view:
        for message_id in ("<inv-P-1@atelier.fr>", "<reply-P-1@client.fr>",
                           "<r2-P-1@atelier.fr>"):
            assert [c.number for c in view.find_cases_by_message_id(message_id)] == ["P-1"]
        assert "<r1-P-1@atelier.fr>" in view.index
        assert view.case_numbers_for_address("compta@client.fr") == (
            "P-2", "P-3", "OPEN-1", "LETTER-1"), "a cold case is closed: no address lookups"


def test_a_pass_never_reads_the_cold_file(tmp_path: Path) -> None:
    store = filled(tmp_path)
    store.move_cold(["P-1", "P-2", "P-3"])
    (tmp_path / COLD_FILE).unlink()
    with StateStore(tmp_path).reading() as view:
        assert list(view.cases_in(OPEN_STATES)) == ["OPEN-1"]
        assert list(view.closed_cases_since(AT - timedelta(days=365))) == ["LETTER-1"]
        assert view.open_cases_of("compta@client.fr")[0].number == "OPEN-1"
        with pytest.raises(StateCorrupt, match=f"{COLD_FILE}: case P-1: its line"):
            view.get_case("P-1")


def test_a_cold_case_changed_is_hot_again_and_an_unchanged_one_stays_cold(
    tmp_path: Path,
) -> None:
    store = filled(tmp_path)
    store.move_cold(["P-1"])
    with store.transaction() as tx:
        case = tx.get_case("P-1")
        assert case is not None
        tx.put_case(case)
        assert not tx.changed, "putting back the same case is not a change"
    with store.transaction() as tx:
        tx.put_case(replace(case, thread_ids=(*case.thread_ids, "<late@client.fr>")))
    docs = stored_cases(store)
    assert "cold" not in docs["P-1"] and "<late@client.fr>" in docs["P-1"]["thread_ids"]
    with StateStore(tmp_path).reading() as view:
        assert view.find_case_by_message_id("<late@client.fr>").number == "P-1"  # type: ignore[union-attr]
        assert view.cold_count() == 0
    assert store.move_cold(["P-1"]) == ["P-1"], "and it can go cold again"
    with StateStore(tmp_path).reading() as view:
        assert "<late@client.fr>" in view.get_case("P-1").thread_ids  # type: ignore[union-attr]


def test_a_failed_append_leaves_the_cases_hot_and_the_file_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = filled(tmp_path)
    store.move_cold(["P-1"])
    cold = tmp_path / COLD_FILE
    size = cold.stat().st_size
    real_fsync = os.fsync

    def full_disk(fd: int) -> None:
        if os.fstat(fd).st_ino == cold.stat().st_ino:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(state_module.os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space"):
        store.move_cold(["P-2"])
    monkeypatch.undo()
    assert cold.stat().st_size == size
    with StateStore(tmp_path).reading() as view:
        assert view.cold_count() == 1 and view.get_case("P-2") is not None
    assert store.move_cold(["P-2"]) == ["P-2"]


def test_a_line_no_stub_points_to_is_harmless(tmp_path: Path) -> None:
    """A kill after the append and before the commit, then a kill mid-append."""
    store = filled(tmp_path)
    ColdFile(tmp_path / COLD_FILE).append([("P-1", case_to_doc(make_case("P-1", **PAID)))])
    with (tmp_path / COLD_FILE).open("ab") as torn:
        torn.write(b"0badc0de\t0\t{\"cases\": {\"P-2\"")
    with StateStore(tmp_path).reading() as view:
        assert view.cold_count() == 0
    assert store.move_cold(["P-1", "P-2"]) == ["P-1", "P-2"]
    with StateStore(tmp_path).reading() as view:
        assert view.get_case("P-2") == make_case("P-2", **PAID)
        assert [c.number for c in view.cases().values()] == [
            "P-1", "P-2", "P-3", "OPEN-1", "LETTER-1"]


def test_a_damaged_cold_line_or_stub_is_reported_with_the_file(tmp_path: Path) -> None:
    store = filled(tmp_path)
    store.move_cold(["P-1"])
    cold = tmp_path / COLD_FILE
    raw = bytearray(cold.read_bytes())
    raw[40] ^= 0x01
    cold.write_bytes(bytes(raw))
    with StateStore(tmp_path).reading() as view:
        assert view.get_case("OPEN-1") is not None
        with pytest.raises(StateCorrupt, match="case P-1: its line at byte 0 is missing or "
                                               "damaged"):
            view.get_case("P-1")
        with pytest.raises(StateCorrupt, match=COLD_FILE):
            view.cases()

    store.compact()
    data = json.loads(store.path.read_text())
    for doc in data["cases"].values():
        if doc["number"] == "P-1":
            doc["cold"] = ["zero", 12]
    store.path.write_text(json.dumps(data))
    with StateStore(tmp_path).reading() as view:
        assert view.get_case("OPEN-1") is not None
        with pytest.raises(StateCorrupt, match=r"state.json: case P-1: its stub for "
                                               r"closed.jsonl is damaged \(cold: \['zero', 12\]"):
            view.get_case("P-1")


def test_settled_numbers_are_quiet_settled_hot_cases(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    with store.transaction() as tx:
        tx.put_case(make_case("OLD", **PAID))  # last touched AT + 2 days
        tx.put_case(make_case("RECENT", **PAID, last_contact_at=AT + timedelta(days=40)))
        tx.put_case(make_case("STOPPED", state=CaseState.STOPPED))
        tx.put_case(make_case("DONE", state=CaseState.DONE, steps=(), last_contact_at=None))
        tx.put_case(make_case("OPEN"))
    store.move_cold(["STOPPED"])
    with store.reading() as view:
        assert view.settled_numbers(AT + timedelta(days=30)) == ["OLD", "DONE"]


def test_cases_to_chill_waits_for_the_seal() -> None:
    entries = [
        {"case": "SEALED", "event": "invoice-found"},
        {"case": "SEALED", "event": "owner-paid"},
        {"case": "SEALED", "event": "evidence-written"},
        {"case": "SEALED", "event": "thread-archived"},
        {"case": "NEWS", "event": "invoice-found"},
        {"case": "NEWS", "event": "evidence-written"},
        {"case": "NEWS", "event": "client-replied"},
        {"case": "HISTORY", "event": "invoice-found"},
        {"case": "NOT-SETTLED", "event": "invoice-found"},
    ]
    cases = {"SEALED": make_case("SEALED", **PAID), "NEWS": make_case("NEWS", **PAID),
             "HISTORY": make_case("HISTORY", state=CaseState.DONE, steps=()),
             "HISTORY-ANSWERED": make_case("HISTORY-ANSWERED", state=CaseState.DONE, steps=()),
             "UNKNOWN": make_case("UNKNOWN", **PAID)}
    entries += [{"case": "HISTORY-ANSWERED", "event": "invoice-found"},
                {"case": "HISTORY-ANSWERED", "event": "client-replied"}]
    assert cases_to_chill(["SEALED", "NEWS", "HISTORY", "HISTORY-ANSWERED", "UNKNOWN"], cases,
                          entries) == ["SEALED", "HISTORY", "HISTORY-ANSWERED", "UNKNOWN"], (
        "news waits for a seal, unless relance never seals the case (an invoice adopted as "
        "history); a case the journal does not name has no news")


def test_a_v2_state_is_upgraded_with_a_backup(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    v2 = {"cases": {"1": case_to_doc(make_case("P-1", **PAID))}, "cursors": {}, "sends": {},
          "meta": {"1": {"schema_version": 2, "log_seq": 0}}}
    raw = json.dumps(v2).encode()
    store.path.write_bytes(raw)
    assert store.upgrade() == 2
    assert (tmp_path / "state.json.v2.bak").read_bytes() == raw
    assert json.loads(store.path.read_text())["meta"]["1"]["schema_version"] == 3
    assert store.move_cold(["P-1"]) == ["P-1"]


def _heat_and_chill_forever(state_dir: Path) -> None:
    """Each round: every case changed (hot again, reason v<round>), then all moved cold."""
    store = StateStore(state_dir)
    with store.reading() as view:
        start = max(int(c.reason[1:]) for c in view.cases().values())
    for round_ in itertools.count(start + 1):
        with store.transaction() as tx:
            for n in range(40):
                tx.put_case(make_case(f"P-{n}", **{**PAID, "reason": f"v{round_}"}))
        store.move_cold([f"P-{n}" for n in range(40)], batch=15)


def test_a_move_killed_at_random_instants_loses_nothing_and_never_goes_back(
    tmp_path: Path,
) -> None:
    """SIGKILL during the heat-and-chill cycle: after each kill every case reads back
    whole, hot or cold, and no case is older than what the last reading saw."""
    store = StateStore(tmp_path)
    with store.transaction() as tx:
        for n in range(40):
            tx.put_case(make_case(f"P-{n}", **{**PAID, "reason": "v0"}))
    rng = random.Random(7)
    seen = dict.fromkeys(range(40), 0)
    colds = 0
    for _ in range(25):
        worker = FORK.Process(target=_heat_and_chill_forever, args=(tmp_path,))
        worker.start()
        time.sleep(rng.uniform(0.02, 0.15))
        os.kill(worker.pid, signal.SIGKILL)  # type: ignore[arg-type]
        worker.join()
        with StateStore(tmp_path).reading() as view:
            cases = view.cases()
            colds += view.cold_count()
        assert sorted(cases) == sorted(f"P-{n}" for n in range(40))
        for n in range(40):
            version = int(cases[f"P-{n}"].reason[1:])
            assert version >= seen[n], f"P-{n} went back from v{seen[n]} to v{version}"
            seen[n] = version
    assert min(seen.values()) > 0 and colds > 0, "the worker should have got somewhere"


def test_a_large_move_is_folded_into_the_snapshot(tmp_path: Path) -> None:
    """Moving most of the state leaves `state.json` small at once: otherwise the next
    start reads every moved document in the snapshot and every stub in the log."""
    store = StateStore(tmp_path)
    with store.transaction() as tx:
        for n in range(200):
            tx.put_case(make_case(f"P-{n}", **PAID))
    store.compact()
    before = store.path.stat().st_size
    store.move_cold([f"P-{n}" for n in range(100)])  # half: folded
    assert store.path.stat().st_size < before * 0.8
    assert store.log_path.stat().st_size == 0
    store.move_cold(["P-100"])  # one: a log line, the snapshot as it is
    assert store.log_path.stat().st_size > 0
    with StateStore(tmp_path).reading() as view:
        assert view.cold_count() == 101 and len(view.cases()) == 200
