"""The state's log and cache: commits are one line each, the parsed state is reused while
nobody else wrote, and a crash at any step leaves the last committed state."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from relance.model import OPEN_STATES, CaseState
from relance.store import state as state_module
from relance.store.state import (
    Cursor,
    StateCorrupt,
    StateLog,
    StateStore,
    _entry_to_doc,
    encode_log_line,
)
from tests.unit.test_state import AT, bare_case, make_case


def count_loads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Record each time a store reads its files (state.json and the log) from disk."""
    loads: list[Path] = []
    real_load = StateStore._load

    def spy(self: StateStore, *args: Any, **kwargs: Any) -> Any:
        loads.append(self.path)
        return real_load(self, *args, **kwargs)

    monkeypatch.setattr(StateStore, "_load", spy)
    return loads


def files_of(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def test_a_commit_appends_one_line_holding_only_what_changed(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    with store.transaction() as tx:
        for i in range(5):
            tx.put_case(bare_case(f"F{i}"))
    snapshot = store.path.read_bytes()
    with store.transaction() as tx:
        tx.put_case(dataclasses.replace(bare_case("F3"), state=CaseState.PAID))
        tx.set_cursor(Cursor("INBOX", 7, 12))
    assert store.path.read_bytes() == snapshot, "the snapshot is not rewritten"
    (line,) = store.log_path.read_bytes().splitlines()
    _crc, seq, payload = line.split(b"\t", 2)
    assert seq == b"1"
    changes = json.loads(payload)
    assert set(changes) == {"cases", "cursors"}
    assert [doc["number"] for doc in changes["cases"].values()] == ["F3"]


def test_cache_is_reused_while_nobody_else_writes(tmp_path: Path, monkeypatch) -> None:
    store = StateStore(tmp_path)
    with store.transaction() as tx:
        tx.put_case(make_case("F1"))
    loads = count_loads(monkeypatch)
    for i in range(3):
        with store.transaction() as tx:
            tx.put_case(make_case("F1", invoice_uid=i))
        with store.reading() as view:
            assert view.get_case("F1").invoice_uid == i  # type: ignore[union-attr]
    assert loads == []


def test_cache_is_reloaded_when_another_process_committed(tmp_path: Path, monkeypatch) -> None:
    store = StateStore(tmp_path)
    with store.transaction() as tx:
        tx.put_case(make_case("F1"))
    with store.reading() as view:
        assert view.get_case("F2") is None
    loads = count_loads(monkeypatch)
    other = StateStore(tmp_path)  # another process: its own cache, the same files
    with other.transaction() as tx:
        tx.put_case(make_case("F2"))
        tx.put_case(make_case("F1", state=CaseState.PAID))
    assert loads == [other.path]
    with store.transaction() as tx:
        assert tx.get_case("F2") is not None
        assert tx.get_case("F1").state is CaseState.PAID  # type: ignore[union-attr]
        tx.put_case(make_case("F3"))
    assert len(loads) == 2
    with other.reading() as view:
        assert sorted(view.cases()) == ["F1", "F2", "F3"]


def test_cache_is_reloaded_after_a_compaction_elsewhere(tmp_path: Path, monkeypatch) -> None:
    store, other = StateStore(tmp_path), StateStore(tmp_path)
    with store.transaction() as tx:
        tx.put_case(make_case("F1"))
    with other.transaction() as tx:
        tx.put_case(make_case("F2"))
    other.compact()
    with store.reading() as view:
        assert sorted(view.cases()) == ["F1", "F2"]


def tables_text(cached: Any) -> str:
    """The cached tables as JSON (decoded cases written as their documents)."""
    return json.dumps(cached.snapshot.tables, sort_keys=True, default=_entry_to_doc)


def test_transaction_that_raises_leaves_files_and_cache_alone(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    with store.transaction() as tx:
        tx.put_case(make_case("F1"))
    with store.transaction() as tx:
        tx.set_cursor(Cursor("INBOX", 1, 5))
    before_files = files_of(tmp_path)
    cached = store._cache
    assert cached is not None
    tables_before = tables_text(cached)
    index_before = dict(cached.snapshot.thread_index)

    with pytest.raises(RuntimeError, match="boom"), store.transaction() as tx:
        tx.put_case(make_case("F1", state=CaseState.STOPPED,
                              thread_ids=("<other@client.fr>",)))
        tx.put_case(make_case("F2"))
        tx.set_cursor(Cursor("INBOX", 1, 9))
        tx.set_meta("digest_at", "x")
        raise RuntimeError("boom")

    assert files_of(tmp_path) == before_files
    assert store._cache is cached
    assert tables_text(cached) == tables_before
    assert cached.snapshot.thread_index == index_before
    with store.reading() as view:
        assert view.get_case("F1") == make_case("F1")
        assert view.get_case("F2") is None
        assert view.cursor("INBOX") == Cursor("INBOX", 1, 5)
        assert view.find_case_by_message_id("<other@client.fr>") is None
        assert view.meta("digest_at") is None


def test_a_view_does_not_see_later_transactions(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    with store.transaction() as tx:
        tx.put_case(make_case("F1"))
        tx.set_cursor(Cursor("INBOX", 1, 5))
    with store.reading() as view:
        pass
    index = view.thread_index()
    with store.transaction() as tx:
        tx.put_case(make_case("F1", state=CaseState.PAID, thread_ids=("<new@client.fr>",)))
        tx.put_case(make_case("F2"))
        tx.set_cursor(Cursor("INBOX", 1, 9))
        tx.send_intent("<r9@a>", "F1", 1, "relance 1", at=AT)
    assert view.get_case("F1") == make_case("F1")
    assert list(view.cases()) == ["F1"]
    assert view.cursor("INBOX") == Cursor("INBOX", 1, 5)
    assert view.sends() == []
    assert view.find_case_by_message_id("<new@client.fr>") is None
    assert "<new@client.fr>" not in index and "<inv-F2@atelier.fr>" not in index
    with store.reading() as fresh:
        assert fresh.get_case("F1").state is CaseState.PAID  # type: ignore[union-attr]
        assert fresh.thread_index()["<new@client.fr>"] == ("F1",)


def test_a_closed_transaction_refuses_writes(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    with store.transaction() as tx:
        tx.put_case(make_case("F1"))
    with pytest.raises(RuntimeError, match="over"):
        tx.put_case(make_case("F2"))
    with store.reading() as view:
        assert list(view.cases()) == ["F1"]


def commit_three(tmp_path: Path) -> StateStore:
    store = StateStore(tmp_path)
    with store.transaction() as tx:  # the snapshot
        tx.put_case(make_case("F1"))
    for number in ("F2", "F3", "F4"):
        with store.transaction() as tx:
            tx.put_case(make_case(number))
    return store


@pytest.mark.parametrize("tail", [
    b'a1b2c3d4\t4\t{"cases": {"9": {"numb',  # the write cut short
    b"\0\0\0\0\0\0\0\0\0\0",  # the size grew but the data never reached the disk
])
def test_a_torn_last_line_is_a_commit_that_never_happened(tmp_path: Path, tail: bytes) -> None:
    store = commit_three(tmp_path)
    with store.log_path.open("ab") as log:
        log.write(tail)
    with StateStore(tmp_path).reading() as view:
        assert sorted(view.cases()) == ["F1", "F2", "F3", "F4"]
    fresh = StateStore(tmp_path)
    with fresh.transaction() as tx:
        tx.put_case(make_case("F5"))
    raw = fresh.log_path.read_bytes()
    assert tail not in raw and raw.endswith(b"\n") and len(raw.splitlines()) == 4
    with StateStore(tmp_path).reading() as view:
        assert sorted(view.cases()) == ["F1", "F2", "F3", "F4", "F5"]


def test_a_last_line_failing_its_checksum_is_ignored(tmp_path: Path) -> None:
    store = commit_three(tmp_path)
    raw = store.log_path.read_bytes()
    store.log_path.write_bytes(raw[:-5] + b"X" + raw[-4:])  # a byte of the last line
    with StateStore(tmp_path).reading() as view:
        assert sorted(view.cases()) == ["F1", "F2", "F3"]


def test_a_damaged_line_before_valid_ones_is_corrupt_and_named(tmp_path: Path) -> None:
    store = commit_three(tmp_path)
    lines = store.log_path.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b"F3", b"F8")
    store.log_path.write_bytes(b"".join(lines))
    before = files_of(tmp_path)
    for action in (StateStore(tmp_path).reading, StateStore(tmp_path).transaction):
        with pytest.raises(StateCorrupt, match="line 2: damaged") as info, action():
            pass
        assert info.value.path == store.log_path
        assert str(store.log_path) in str(info.value)
    assert files_of(tmp_path) == before


def test_a_missing_commit_is_corrupt(tmp_path: Path) -> None:
    store = commit_three(tmp_path)
    lines = store.log_path.read_bytes().splitlines(keepends=True)
    store.log_path.write_bytes(lines[0] + lines[2])
    with pytest.raises(StateCorrupt, match="line 2: commit 3 follows commit 1"), \
            StateStore(tmp_path).reading():
        pass


def test_the_log_is_compacted_into_the_snapshot_when_it_grows(tmp_path: Path,
                                                              monkeypatch) -> None:
    monkeypatch.setattr(state_module, "COMPACT_MIN_BYTES", 4000)
    store = StateStore(tmp_path)
    sizes = []
    for i in range(12):
        with store.transaction() as tx:
            tx.put_case(make_case(f"F{i}"))
        sizes.append(store.log_path.stat().st_size if store.log_path.exists() else 0)
    assert 0 in sizes[2:], "compacted at least once"
    assert max(sizes) <= 4000, "a commit that passes the threshold compacts"
    on_disk = json.loads(store.path.read_text())
    stamped = on_disk["meta"]["1"]["log_seq"]
    assert stamped >= 4
    assert len(store.log_path.read_bytes().splitlines()) == 11 - stamped
    with StateStore(tmp_path).reading() as view:
        assert sorted(view.cases()) == sorted(f"F{i}" for i in range(12))
        assert view.meta("log_seq") is None, "the stamp describes the file, not the state"


class Killed(BaseException):
    """The process dies here."""


def test_a_crash_between_snapshot_and_truncate_replays_nothing_twice(tmp_path: Path,
                                                                    monkeypatch) -> None:
    store = commit_three(tmp_path)
    log_before = store.log_path.read_bytes()

    def killed(self: StateLog) -> None:
        raise Killed

    monkeypatch.setattr(StateLog, "truncate", killed)
    with pytest.raises(Killed):
        store.compact()
    monkeypatch.undo()
    assert store.log_path.read_bytes() == log_before, "the log is as the crash left it"
    assert json.loads(store.path.read_text())["meta"]["1"]["log_seq"] == 3

    restarted = StateStore(tmp_path)
    with restarted.transaction() as tx:
        assert sorted(tx.cases()) == ["F1", "F2", "F3", "F4"]
        tx.put_case(make_case("F2", state=CaseState.PAID))
    (*_, last) = restarted.log_path.read_bytes().splitlines()
    assert last.split(b"\t")[1] == b"4", "the next commit follows the snapshot's seq"
    with StateStore(tmp_path).reading() as view:
        assert view.get_case("F2").state is CaseState.PAID  # type: ignore[union-attr]
        assert len(view.cases()) == 4


def test_a_log_without_a_snapshot_is_replayed_and_folded_in(tmp_path: Path) -> None:
    """state.json moved aside by hand, its log left: the log's first commit is 1, so it
    is the whole state since the beginning."""
    log_path = tmp_path / "state.log"
    doc = state_module.case_to_doc(make_case("F1"))
    log_path.write_bytes(encode_log_line(1, {"cases": {"1": doc}, "meta": {
        "1": {"schema_version": state_module.SCHEMA_VERSION}}}))
    store = StateStore(tmp_path)
    with store.transaction() as tx:
        assert tx.get_case("F1") == make_case("F1")
        tx.put_case(make_case("F2"))
    assert json.loads(store.path.read_text())["meta"]["1"]["log_seq"] == 1
    with StateStore(tmp_path).reading() as view:
        assert sorted(view.cases()) == ["F1", "F2"]


def test_a_transaction_reads_a_batch_through_its_live_indexes(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    with store.transaction() as tx:
        tx.put_case(make_case("F1"))
        tx.put_case(make_case("F2", client_addrs=("x@other.fr",)))
        tx.put_case(make_case("F3", state=CaseState.PAID))
    with store.transaction() as tx:
        index = tx.index
        assert index["<reply-F1@client.fr>"] == ("F1",)
        assert [c.number for c in tx.open_cases_of("compta@client.fr")] == ["F1"]
        assert [c.number for c in tx.open_cases_of("boss@client.fr")] == ["F1"]
        tx.put_case(make_case("F4", thread_ids=("<reply-F1@client.fr>",)))
        tx.put_case(make_case("F2", client_addrs=("compta@client.fr",)))
        assert index["<reply-F1@client.fr>"] == ("F1", "F4")
        assert [c.number for c in tx.open_cases_of("compta@client.fr")] == ["F1", "F2", "F4"]
        assert tx.open_cases_of("x@other.fr") == []
        assert list(tx.cases()) == ["F1", "F2", "F3", "F4"]


def test_the_indexes_are_built_when_first_asked_for_and_agree_with_a_fresh_build(
    tmp_path: Path,
) -> None:
    store = StateStore(tmp_path)
    with store.transaction() as tx:
        tx.put_case(make_case("F1", thread_ids=("<reply-F1@client.fr>",)))
        tx.put_case(make_case("F2", client_addrs=("x@other.fr",)))
        tx.put_case(make_case("F3", state=CaseState.PAID))
    restarted = StateStore(tmp_path)
    with restarted.reading() as view:
        assert sorted(view.cases_in(OPEN_STATES)) == ["F1", "F2"]
        assert view.get_case("F3") is not None
    cached = restarted._cache
    assert cached is not None
    # What a restart on an unchanged mailbox reads leaves both indexes unbuilt.
    assert cached.snapshot._thread_index is None and cached.snapshot._by_address is None

    with restarted.transaction() as tx:  # the first thing asked of them is a write
        tx.put_case(make_case("F4", thread_ids=("<reply-F1@client.fr>",)))
        tx.put_case(make_case("F2", client_addrs=("compta@client.fr",)))
    with restarted.reading() as view:
        assert [c.number for c in view.find_cases_by_message_id("<reply-F1@client.fr>")] \
            == ["F1", "F4"]
        assert [c.number for c in view.open_cases_of("compta@client.fr")] == ["F1", "F2", "F4"]
    kept = restarted._cache
    assert kept is not None
    with StateStore(tmp_path).reading() as fresh:  # kept current, a write appends
        for name in ("thread_index", "by_address"):
            assert {key: sorted(numbers) for key, numbers in getattr(fresh._s, name).items()} \
                == {key: sorted(numbers) for key, numbers
                    in getattr(kept.snapshot, name).items()}


def test_a_malformed_thread_is_reported_when_the_index_is_built(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    with store.transaction() as tx:
        tx.put_case(make_case("F1"))
    data = json.loads(store.path.read_text())
    data["cases"]["1"]["steps"] = [17]  # a step that is not a document
    store.path.write_text(json.dumps(data))
    with StateStore(tmp_path).reading() as view:
        assert view.cursor("INBOX") is None  # the load itself reads no thread
        with pytest.raises(StateCorrupt, match=r"state.json: a case's thread or addresses"):
            view.find_case_by_message_id("<inv-F1@atelier.fr>")


def test_the_open_cases_are_found_once_per_snapshot_and_a_write_is_seen(
    tmp_path: Path,
) -> None:
    store = StateStore(tmp_path)
    with store.transaction() as tx:
        tx.put_case(make_case("F1"))
        tx.put_case(make_case("F2", state=CaseState.PAID))
    with store.reading() as view:
        first = view.cases_in(OPEN_STATES)
        first.pop("F1")  # the caller's own dict
        assert list(view.cases_in(OPEN_STATES)) == ["F1"]
        assert list(view.cases_in({CaseState.PAID})) == ["F2"]
        assert set(view._s.found) == {frozenset(OPEN_STATES)}, "a cold state is not kept"
    with store.transaction() as tx:
        assert list(tx.cases_in(OPEN_STATES)) == ["F1"]
        tx.put_case(make_case("F3"))
        assert list(tx.cases_in(OPEN_STATES)) == ["F1", "F3"]
        tx.put_case(make_case("F1", state=CaseState.STOPPED))
        assert list(tx.cases_in(OPEN_STATES)) == ["F3"]
    with store.reading() as view:
        assert list(view.cases_in(OPEN_STATES)) == ["F3"]
