"""The state file: what a pass writes survives kills, concurrent writers and bad files."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import time
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from relance.model import OPEN_STATES, Case, CaseState, StepRecord
from relance.store import state as state_module
from relance.store.state import (
    SCHEMA_VERSION,
    AlreadyRunning,
    AtomicJSONStorage,
    Cursor,
    IntentExists,
    StateCorrupt,
    StateStore,
    StateView,
    case_from_doc,
    case_to_doc,
)

PARIS_WINTER = timezone(timedelta(hours=1))
AT = datetime(2025, 3, 14, 9, 0, tzinfo=PARIS_WINTER)
FORK = multiprocessing.get_context("fork")


def make_case(number: str = "F2025-001", **overrides: Any) -> Case:
    """A case as it looks after two reminders, with every field filled in."""
    fields: dict[str, Any] = {
        "number": number,
        "client_addrs": ("compta@client.fr", "dg@client.fr"),
        "subject": f"Facture {number} — Atelier Dupont",
        "root_message_id": f"<inv-{number}@atelier.fr>",
        "root_references": ("<devis-12@atelier.fr>",),
        "client_name": "Société Élan",
        "amount": Decimal("1234.50"),
        "paid": Decimal("200.00"),
        "currency": "EUR",
        "issue_date": date(2025, 1, 10),
        "due_date": date(2025, 2, 9),
        "state": CaseState.PAUSED,
        "thread_ids": (f"<inv-{number}@atelier.fr>", f"<reply-{number}@client.fr>"),
        "steps": (
            StepRecord(1, "relance 1", AT, f"<r1-{number}@atelier.fr>", "sent"),
            StepRecord(2, "relance 2", AT.astimezone(UTC), f"<r2-{number}@atelier.fr>", "unknown"),
        ),
        "last_contact_at": AT + timedelta(days=2),
        "paused_until": datetime(2025, 4, 1, 8, 30, tzinfo=timezone(timedelta(hours=2))),
        "reason": "le client a répondu",
        "invoice_folder": "Envoyés",
        "invoice_uid": 4242,
        "language": "fr",
        "opened_at": AT - timedelta(days=60),
    }
    fields.update(overrides)
    return Case(**fields)


def bare_case(number: str = "F2025-002") -> Case:
    """A case with every optional field left at its default (amounts and dates None)."""
    return Case(
        number=number,
        client_addrs=("a@b.fr",),
        subject="Facture",
        root_message_id=f"<{number}@atelier.fr>",
        state=CaseState.NEEDS_FACTS,
    )


def counting_replace(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Count the atomic replaces, i.e. the file writes, while letting them happen."""
    calls: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy(src: Any, dst: Any) -> None:
        calls.append((str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(state_module.os, "replace", spy)
    return calls


# --- serialisation ---------------------------------------------------------------------


@pytest.mark.parametrize("case", [make_case(), bare_case()], ids=["full", "bare"])
def test_case_round_trips_through_json(case: Case) -> None:
    doc = json.loads(json.dumps(case_to_doc(case)))
    assert case_from_doc(doc) == case


def test_case_doc_keeps_money_as_strings_and_instants_with_offsets() -> None:
    doc = case_to_doc(make_case())
    assert doc["amount"] == "1234.50"
    assert doc["paid"] == "200.00"
    assert doc["steps"][0]["at"] == "2025-03-14T09:00:00+01:00"
    assert doc["paused_until"] == "2025-04-01T08:30:00+02:00"
    assert doc["state"] == "paused"
    assert doc["thread_ids"] == ["<inv-F2025-001@atelier.fr>", "<reply-F2025-001@client.fr>"]


def test_bare_case_stores_none_not_empty_strings() -> None:
    doc = case_to_doc(bare_case())
    assert doc["amount"] is None
    assert doc["due_date"] is None
    assert doc["last_contact_at"] is None
    assert doc["steps"] == []


def test_case_from_an_older_doc_takes_defaults_for_missing_fields() -> None:
    doc = {
        "number": "F1",
        "client_addrs": ["a@b.fr"],
        "subject": "Facture F1",
        "root_message_id": "<f1@x>",
    }
    assert case_from_doc(doc) == Case("F1", ("a@b.fr",), "Facture F1", "<f1@x>")


def test_naive_datetime_is_refused_before_it_reaches_disk() -> None:
    with pytest.raises(ValueError, match="naive"):
        case_to_doc(make_case(last_contact_at=datetime(2025, 3, 1, 9, 0)))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("amount", 1234.5, "not a decimal string"),
        ("amount", "12,50", "not a decimal"),
        ("state", "lost", "lost"),
        ("opened_at", "2025-03-01T09:00:00", "no UTC offset"),
    ],
)
def test_bad_case_doc_names_case_and_field(field: str, value: Any, message: str) -> None:
    doc = case_to_doc(make_case())
    doc[field] = value
    with pytest.raises(ValueError, match=message) as info:
        case_from_doc(doc)
    assert f"case F2025-001: field {field}" in str(info.value)


# --- transactions ----------------------------------------------------------------------


def test_case_put_in_one_transaction_is_read_in_the_next(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    with store.transaction() as tx:
        tx.put_case(make_case("F1"))
        tx.put_case(bare_case("F2"))
        assert tx.get_case("F1") == make_case("F1")
    with StateStore(tmp_path).reading() as view:
        assert view.cases() == {"F1": make_case("F1"), "F2": bare_case("F2")}
        assert view.get_case("F3") is None


def test_put_case_replaces_by_number(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    with store.transaction() as tx:
        tx.put_case(make_case("F1"))
    with store.transaction() as tx:
        tx.put_case(make_case("F1", state=CaseState.PAID, paid=Decimal("1234.50")))
    with store.reading() as view:
        assert list(view.cases()) == ["F1"]
        case = view.get_case("F1")
        assert case is not None
        assert case.state is CaseState.PAID
        assert case.balance == Decimal("0.00")


def test_transaction_that_raises_writes_nothing(tmp_path: Path, monkeypatch) -> None:
    store = StateStore(tmp_path)
    with store.transaction() as tx:
        tx.put_case(make_case("F1"))
    before = store.path.read_bytes()
    replaces = counting_replace(monkeypatch)

    with pytest.raises(RuntimeError, match="boom"), store.transaction() as tx:
        tx.put_case(make_case("F1", state=CaseState.STOPPED))
        tx.put_case(make_case("F2"))
        tx.set_cursor(Cursor("INBOX", 1, 10))
        raise RuntimeError("boom")

    assert replaces == []
    assert store.path.read_bytes() == before
    with store.reading() as view:
        assert list(view.cases()) == ["F1"]
        assert view.cursor("INBOX") is None


def test_transaction_without_changes_does_not_write(tmp_path: Path, monkeypatch) -> None:
    store = StateStore(tmp_path)
    with store.transaction() as tx:
        tx.put_case(make_case("F1"))
        tx.set_cursor(Cursor("INBOX", 7, 10))
    replaces = counting_replace(monkeypatch)
    with store.transaction() as tx:
        tx.cases()
        tx.put_case(make_case("F1"))  # the same value again
        tx.set_cursor(Cursor("INBOX", 7, 10))
        assert not tx.changed
    assert replaces == []


def test_empty_store_transaction_creates_no_file(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    with store.transaction() as tx:
        assert tx.cases() == {}
    assert not store.path.exists()


def test_many_changes_make_exactly_one_atomic_write(tmp_path: Path, monkeypatch) -> None:
    store = StateStore(tmp_path)
    replaces = counting_replace(monkeypatch)
    with store.transaction() as tx:
        for i in range(20):
            tx.put_case(make_case(f"F{i}"))
        tx.set_cursor(Cursor("Sent", 3, 99, highestmodseq=1234))
        tx.send_intent("<r1-F1@atelier.fr>", "F1", 1, "relance 1", at=AT)
    assert replaces == [(replaces[0][0], str(store.path))]
    assert Path(replaces[0][0]).parent == tmp_path


def test_state_file_carries_schema_version(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    with store.transaction() as tx:
        tx.put_case(bare_case())
    data = json.loads(store.path.read_text())
    assert list(data["meta"].values()) == [{"schema_version": SCHEMA_VERSION, "log_seq": 0}]
    assert set(data) >= {"cases", "meta"}


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.path.write_text(f'{{"meta": {{"1": {{"schema_version": {SCHEMA_VERSION + 1}}}}}}}')
    with pytest.raises(StateCorrupt, match="schema version"), store.reading():
        pass


def test_find_case_by_any_thread_message_id(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    with store.transaction() as tx:
        tx.put_case(make_case("F1"))
        tx.put_case(make_case("F2"))
    with store.reading() as view:
        for message_id in (
            "<inv-F1@atelier.fr>",
            "<reply-F1@client.fr>",
            "<r2-F1@atelier.fr>",
        ):
            found = view.find_case_by_message_id(message_id)
            assert found is not None and found.number == "F1"
        # the invoice's own References name earlier mail, not this case
        assert view.find_case_by_message_id("<devis-12@atelier.fr>") is None
        assert view.find_case_by_message_id("<nobody@x>") is None


def test_message_id_index_follows_replaced_case(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    with store.transaction() as tx:
        tx.put_case(make_case("F1"))
        tx.put_case(make_case("F1", thread_ids=("<inv-F1@atelier.fr>", "<new@client.fr>")))
        assert tx.find_case_by_message_id("<reply-F1@client.fr>") is None
        found = tx.find_case_by_message_id("<new@client.fr>")
        assert found is not None and found.number == "F1"


def test_one_mail_with_two_invoices_finds_both_cases(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    shared = "<two-invoices@atelier.fr>"
    with store.transaction() as tx:
        tx.put_case(replace(bare_case("F1"), root_message_id=shared))
        tx.put_case(replace(bare_case("F2"), root_message_id=shared))
    with store.reading() as view:
        assert [c.number for c in view.find_cases_by_message_id(shared)] == ["F1", "F2"]
        found = view.find_case_by_message_id(shared)
        assert found is not None and found.number == "F1"


def test_cursor_round_trip_and_replace(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    with store.transaction() as tx:
        tx.set_cursor(Cursor("INBOX", 1700000000, 12))
        tx.set_cursor(Cursor("Envoyés", 5, 40, highestmodseq=9001))
    with store.transaction() as tx:
        tx.set_cursor(Cursor("INBOX", 1700000000, 15, highestmodseq=77))
    with store.reading() as view:
        assert view.cursor("INBOX") == Cursor("INBOX", 1700000000, 15, 77)
        assert view.cursor("Envoyés") == Cursor("Envoyés", 5, 40, 9001)
        assert view.cursor("Junk") is None


def test_send_intent_is_on_disk_when_its_transaction_ends(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    with store.transaction() as tx:
        tx.send_intent("<r1@atelier.fr>", "F1", 1, "relance 1", at=AT)
    # a fresh process (here: a fresh store reading the file) sees the intent
    data = json.loads(store.path.read_text())
    assert [d["status"] for d in data["sends"].values()] == ["intent"]
    with StateStore(tmp_path).reading() as view:
        (record,) = view.sends("intent")
    assert record.message_id == "<r1@atelier.fr>"
    assert record.created_at == AT


def test_send_result_records_reply_and_filters_by_status(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    later = AT + timedelta(seconds=3)
    with store.transaction() as tx:
        tx.send_intent("<r1@a>", "F1", 1, "relance 1", at=AT)
        tx.send_intent("<r2@a>", "F2", 1, "relance 1", at=AT)
        tx.send_intent("<r3@a>", "F3", 2, "relance 2", at=AT)
    with store.transaction() as tx:
        tx.send_result("<r1@a>", "sent", "250 2.0.0 Ok: queued as 4F2", at=later)
        tx.send_result("<r2@a>", "unknown", "timeout after DATA", at=later)
    with store.reading() as view:
        assert [s.message_id for s in view.sends()] == ["<r1@a>", "<r2@a>", "<r3@a>"]
        (sent,) = view.sends("sent")
        assert sent.smtp_reply == "250 2.0.0 Ok: queued as 4F2"
        assert (sent.created_at, sent.recorded_at) == (AT, later)
        assert [s.message_id for s in view.sends("unknown")] == ["<r2@a>"]
        assert [s.message_id for s in view.sends("intent")] == ["<r3@a>"]
        assert view.sends("failed") == []


def test_second_intent_for_same_message_id_is_refused(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    with store.transaction() as tx:
        tx.send_intent("<r1@a>", "F1", 1, "relance 1", at=AT)
    with pytest.raises(IntentExists, match="already recorded"), store.transaction() as tx:
        tx.send_intent("<r1@a>", "F1", 1, "relance 1", at=AT)


def test_sent_record_cannot_be_downgraded(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    with store.transaction() as tx:
        tx.send_intent("<r1@a>", "F1", 1, "relance 1", at=AT)
        tx.send_result("<r1@a>", "sent", "250 ok", at=AT)
        with pytest.raises(ValueError, match="already sent"):
            tx.send_result("<r1@a>", "failed", at=AT)
        with pytest.raises(ValueError, match="expected sent, unknown or failed"):
            tx.send_result("<r1@a>", "intent", at=AT)
        with pytest.raises(KeyError, match="no intent"):
            tx.send_result("<never@a>", "sent", at=AT)


def test_nested_transaction_is_refused_instead_of_deadlocking(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    with store.transaction():
        with pytest.raises(RuntimeError, match="deadlock"), StateStore(tmp_path).transaction():
            pass
        with pytest.raises(RuntimeError, match="deadlock"), store.reading():
            pass


def test_reading_view_offers_no_writes(tmp_path: Path) -> None:
    with StateStore(tmp_path).reading() as view:
        assert type(view) is StateView
        assert not hasattr(view, "put_case")


# --- bad files and killed writers ------------------------------------------------------


def test_corrupt_state_file_raises_with_path_and_is_left_alone(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.path.write_text('{"cases": {"1": {"number": "F1",\n  "subject": }}}')
    before = store.path.read_bytes()
    with pytest.raises(StateCorrupt) as info, store.transaction():
        pass
    assert info.value.path == store.path
    message = str(info.value)
    assert str(store.path) in message
    assert "line 2" in message
    assert "journal" in message and "mailbox" in message
    assert store.path.read_bytes() == before


def test_non_utf8_state_file_is_corrupt(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_bytes(b'{"cases": "\xff"}')
    with pytest.raises(StateCorrupt, match="UTF-8"), StateStore(tmp_path).reading():
        pass


def test_case_doc_missing_its_number_is_corrupt(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text('{"cases": {"1": {"subject": "x"}}}')
    with pytest.raises(StateCorrupt, match="number"), StateStore(tmp_path).reading():
        pass


def test_missing_or_empty_file_reads_as_empty_state(tmp_path: Path) -> None:
    storage = AtomicJSONStorage(tmp_path / "state.json")
    assert storage.read() is None
    storage.path.write_text("  \n")
    assert storage.read() is None


def test_failed_replace_leaves_old_file_intact_and_no_temp(tmp_path: Path, monkeypatch) -> None:
    store = StateStore(tmp_path)
    before_case = make_case("F1")

    def killed(src: Any, dst: Any) -> None:
        raise OSError("killed between fsync and rename")

    monkeypatch.setattr(state_module.os, "replace", killed)
    with pytest.raises(OSError, match="killed"), store.transaction() as tx:
        tx.put_case(before_case)  # the first commit writes the snapshot itself
    monkeypatch.undo()

    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.lock"]
    with store.reading() as view:
        assert view.cases() == {}


def test_failed_log_append_leaves_the_state_as_it_was(tmp_path: Path, monkeypatch) -> None:
    store = StateStore(tmp_path)
    with store.transaction() as tx:
        tx.put_case(make_case("F1"))
    with store.transaction() as tx:
        tx.put_case(make_case("F2"))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def disk_failed(fd: int) -> None:
        raise OSError("fsync failed")

    monkeypatch.setattr(state_module.os, "fsync", disk_failed)
    with pytest.raises(OSError, match="fsync failed"), store.transaction() as tx:
        tx.put_case(make_case("F1", state=CaseState.STOPPED))
    monkeypatch.undo()

    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    for reader in (store, StateStore(tmp_path)):
        with reader.reading() as view:
            case = view.get_case("F1")
            assert case is not None and case.state is CaseState.PAUSED


def test_leftover_temp_files_are_swept_under_the_lock(tmp_path: Path) -> None:
    leftover = tmp_path / ".state.json.abc123.tmp"
    leftover.write_text('{"half": ')
    with StateStore(tmp_path).transaction():
        pass
    assert not leftover.exists()


def _write_forever(state_dir: Path) -> None:
    store = StateStore(state_dir)
    i = 0
    while True:
        i += 1
        # The file shrinks every other write: an in-place rewrite would leave a stale tail
        # while it fsyncs, which is the window a kill turns into a broken file.
        reason = "x" * (50_000 if i % 2 else 10)
        with store.transaction() as tx:
            tx.put_case(make_case("F0", reason=reason))
            tx.put_case(make_case(f"F{i % 300}", invoice_uid=i))


def test_writer_killed_at_random_instants_never_leaves_a_broken_file(tmp_path: Path) -> None:
    rng = random.Random(1)
    for _ in range(15):
        writer = FORK.Process(target=_write_forever, args=(tmp_path,))
        writer.start()
        time.sleep(rng.uniform(0.02, 0.12))
        os.kill(writer.pid, signal.SIGKILL)
        writer.join()
        with StateStore(tmp_path).reading() as view:
            cases = view.cases()
        assert cases, "the writer should have committed something"


# --- several processes -----------------------------------------------------------------


def _increment(state_dir: Path, times: int, start: Any) -> None:
    start.wait()
    store = StateStore(state_dir)
    for _ in range(times):
        with store.transaction() as tx:
            cursor = tx.cursor("INBOX") or Cursor("INBOX", 1, 0)
            tx.set_cursor(replace(cursor, last_uid=cursor.last_uid + 1))


def test_two_processes_incrementing_lose_no_update(tmp_path: Path) -> None:
    start = FORK.Event()
    workers = [FORK.Process(target=_increment, args=(tmp_path, 50, start)) for _ in range(2)]
    for worker in workers:
        worker.start()
    start.set()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    with StateStore(tmp_path).reading() as view:
        assert view.cursor("INBOX") == Cursor("INBOX", 1, 100)


def _hold_daemon_lock(state_dir: Path, holding: Any, release: Any) -> None:
    with StateStore(state_dir).lock_daemon():
        holding.set()
        release.wait(30)


def test_second_daemon_on_same_directory_is_refused(tmp_path: Path) -> None:
    holding, release = FORK.Event(), FORK.Event()
    holder = FORK.Process(target=_hold_daemon_lock, args=(tmp_path, holding, release))
    holder.start()
    try:
        assert holding.wait(10)
        with pytest.raises(AlreadyRunning) as info, StateStore(tmp_path).lock_daemon():
            pass
        assert info.value.pid == holder.pid
        assert str(holder.pid) in str(info.value)
    finally:
        release.set()
        holder.join(10)
    with StateStore(tmp_path).lock_daemon() as pid:
        assert pid == os.getpid()
        assert (tmp_path / "daemon.lock").read_text() == f"{pid}\n"


def test_daemon_lock_is_freed_when_its_holder_is_killed(tmp_path: Path) -> None:
    holding, release = FORK.Event(), FORK.Event()
    holder = FORK.Process(target=_hold_daemon_lock, args=(tmp_path, holding, release))
    holder.start()
    assert holding.wait(10)
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(10)
    with StateStore(tmp_path).lock_daemon() as pid:
        assert pid == os.getpid()


def test_the_snapshot_is_written_a_document_at_a_time_as_one_dump_would_write_it(
    tmp_path: Path,
) -> None:
    """Streaming the snapshot (no whole-file string in memory) changes no byte."""
    from relance.store.state import AtomicJSONStorage

    data = {"cases": {"1": {"a": [1, "é", None], "b": {"x": "\u2028\"\\"}}, "2": {}},
            "meta": {"1": {"schema_version": 2}}, "empty": {}}
    AtomicJSONStorage(tmp_path / "s.json").write(data)
    written = (tmp_path / "s.json").read_bytes()
    assert written == json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


def test_a_pass_decodes_only_the_cases_it_asks_for(tmp_path: Path, monkeypatch) -> None:
    """Open cases, closed ones with recent mail, a lazy map: years of closed cases are
    left as they are stored. The decoded values are those `cases()` gives."""
    store = StateStore(tmp_path)
    chasing = replace(make_case("F1"), state=CaseState.CHASING, paused_until=None)
    paid_long_ago = replace(make_case("F2"), state=CaseState.PAID)  # contacts in 2025
    paid_lately = replace(make_case("F3"), state=CaseState.PAID,
                          last_contact_at=datetime(2026, 11, 20, 9, tzinfo=UTC))
    with store.transaction() as tx:
        for case in (chasing, paid_long_ago, paid_lately, bare_case("F4")):
            tx.put_case(case)
    from relance.store import state as state_module

    decoded: list[str] = []
    real = state_module.case_from_doc
    monkeypatch.setattr(state_module, "case_from_doc",
                        lambda doc: decoded.append(doc["number"]) or real(doc))
    fresh = StateStore(tmp_path)  # documents as read from disk
    with fresh.reading() as view:
        assert list(view.cases_in(OPEN_STATES)) == ["F1", "F4"]
        assert decoded == ["F1", "F4"]
        since = datetime(2026, 11, 1, tzinfo=UTC)
        assert list(view.closed_cases_since(since)) == ["F3"]
        assert decoded == ["F1", "F4", "F3"]
        assert view.any_case_in({CaseState.PAID}) and not view.any_case_in({CaseState.STOPPED})
        lazy = view.case_map()
        assert "F2" in lazy and len(lazy) == 4 and list(lazy) == ["F1", "F2", "F3", "F4"]
        assert decoded == ["F1", "F4", "F3"]  # nothing decoded by looking
        assert lazy["F2"] == paid_long_ago
        assert view.cases() == {c.number: c for c in (chasing, paid_long_ago, paid_lately,
                                                       bare_case("F4"))}
    with pytest.raises(KeyError):
        lazy["F9"]


def test_a_case_with_an_unknown_state_is_reported_not_skipped(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    with store.transaction() as tx:
        tx.put_case(make_case("F1"))
    text = store.path.read_text().replace('"state":"paused"', '"state":"lost"')
    store.path.write_text(text)
    with pytest.raises(StateCorrupt, match="F1"), StateStore(tmp_path).reading() as view:
        view.cases_in(OPEN_STATES)
