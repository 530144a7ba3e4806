"""The journal: every decision on its own durable line, readable after a crash."""

from __future__ import annotations

import json
import multiprocessing
import os
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from relance.model import CaseState
from relance.store import journal as journal_module
from relance.store.journal import Journal

AT = datetime(2025, 3, 14, 9, 0, tzinfo=timezone(timedelta(hours=1)))
FORK = multiprocessing.get_context("fork")


def test_appended_entries_read_back_in_order(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.append("case_opened", at=AT, case="F1", amount=Decimal("1234.50"))
    journal.append(
        "reminder_sent",
        at=AT + timedelta(days=5),
        case="F1",
        step=1,
        due_date=date(2025, 2, 9),
        smtp_reply="250 2.0.0 Ok",
    )
    journal.append("pass_done", at=AT, folders=("INBOX", "Envoyés"))

    entries = list(journal.entries())
    assert entries == [
        {"at": "2025-03-14T09:00:00+01:00", "case": "F1", "event": "case_opened",
         "amount": "1234.50"},
        {"at": "2025-03-19T09:00:00+01:00", "case": "F1", "event": "reminder_sent",
         "step": 1, "due_date": "2025-02-09", "smtp_reply": "250 2.0.0 Ok"},
        {"at": "2025-03-14T09:00:00+01:00", "case": None, "event": "pass_done",
         "folders": ["INBOX", "Envoyés"]},
    ]  # fmt: skip
    assert journal.skipped == 0


def test_append_returns_the_entry_as_it_reads_back(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    written = journal.append("paused", at=AT, case="F1", state=CaseState.PAUSED)
    assert written == {"at": AT.isoformat(), "case": "F1", "event": "paused", "state": "paused"}
    assert list(journal.entries()) == [written]


def test_entries_of_one_case(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    for number in ("F1", "F2", "F1", None):
        journal.append("noticed", at=AT, case=number)
    assert [e["case"] for e in journal.entries("F1")] == ["F1", "F1"]
    assert len(list(journal.entries())) == 4


def test_cases_with_an_event_come_from_the_index(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    for number, event in (("F1", "invoice-found"), ("F2", "owner-paid"), ("F3", "noticed"),
                          ("F1", "payment-matched"), (None, "owner-paid")):
        journal.append(event, at=AT, case=number)
    assert journal.cases_with(("owner-paid", "payment-matched")) == ["F1", "F2"]
    journal.append("owner-paid", at=AT, case="F3")  # appended since: seen
    assert journal.cases_with({"owner-paid"}) == ["F2", "F3"]


def test_each_entry_is_one_write_and_one_line(tmp_path: Path, monkeypatch) -> None:
    writes: list[bytes] = []
    real_write = os.write

    def spy(fd: int, data: bytes) -> int:
        writes.append(bytes(data))
        return real_write(fd, data)

    monkeypatch.setattr(journal_module.os, "write", spy)
    journal = Journal(tmp_path)
    journal.append("note", at=AT, case="F1", text="ligne 1\nligne 2")
    journal.append("note", at=AT, case="F1", text="encore")
    assert len(writes) == 2
    assert all(w.endswith(b"\n") and w.count(b"\n") == 1 for w in writes)
    assert journal.path.read_bytes() == b"".join(writes)


def test_journal_file_missing_reads_as_empty(tmp_path: Path) -> None:
    assert list(Journal(tmp_path).entries()) == []


def test_torn_last_line_is_skipped_and_counted(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.append("case_opened", at=AT, case="F1")
    with journal.path.open("ab") as f:
        f.write(b'{"at": "2025-03-14T09:00:00+01:00", "case": "F1", "ev')
    assert [e["event"] for e in journal.entries()] == ["case_opened"]
    assert journal.skipped == 1
    assert journal.skipped_lines == [2]


def test_append_after_a_torn_line_starts_a_fresh_line(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.append("case_opened", at=AT, case="F1")
    with journal.path.open("ab") as f:
        f.write(b'{"at": "2025-03-14T09:00:00+01:00", "ca')
    journal.append("reminder_sent", at=AT, case="F1")
    assert [e["event"] for e in journal.entries()] == ["case_opened", "reminder_sent"]
    assert journal.skipped_lines == [2]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"at": datetime(2025, 3, 14, 9, 0)}, "naive"),
        ({"at": AT, "event": "x"}, "event"),
        ({"at": AT, "when": object()}, "cannot write object"),
    ],
)
def test_bad_entries_are_refused(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    journal = Journal(tmp_path)
    with pytest.raises((ValueError, TypeError), match=message):
        journal.append("note", **kwargs)
    assert not journal.path.exists() or journal.path.read_bytes() == b""


def _append_many(state_dir: Path, who: str, count: int, start: Any) -> None:
    start.wait()
    journal = Journal(state_dir)
    padding = "x" * 5000  # longer than a pipe buffer: still one whole line
    for i in range(count):
        journal.append("note", at=AT, case=who, seq=i, padding=padding)


def test_two_processes_appending_never_interleave(tmp_path: Path) -> None:
    start = FORK.Event()
    writers = [
        FORK.Process(target=_append_many, args=(tmp_path, who, 100, start)) for who in ("A", "B")
    ]
    for writer in writers:
        writer.start()
    start.set()
    for writer in writers:
        writer.join(60)
        assert writer.exitcode == 0
    lines = Journal(tmp_path).path.read_bytes().splitlines()
    assert len(lines) == 200
    entries = [json.loads(line) for line in lines]
    for who in ("A", "B"):
        assert [e["seq"] for e in entries if e["case"] == who] == list(range(100))


def count_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        calls.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(journal_module.os, "fsync", spy)
    return calls


def test_each_entry_outside_a_batch_is_fsynced(tmp_path: Path, monkeypatch) -> None:
    journal = Journal(tmp_path)
    journal.append("note", at=AT)
    fsyncs = count_fsyncs(monkeypatch)
    journal.append("note", at=AT)
    journal.append("note", at=AT)
    assert len(fsyncs) == 2


def test_a_batch_writes_each_line_at_once_and_fsyncs_once_at_its_end(
    tmp_path: Path, monkeypatch
) -> None:
    journal = Journal(tmp_path)
    journal.append("note", at=AT)
    fsyncs = count_fsyncs(monkeypatch)
    with journal.batch():
        journal.append("note", at=AT, case="F1")
        with journal.batch():  # nested: still one fsync, at the outermost end
            journal.append("note", at=AT, case="F2")
        assert [e["case"] for e in journal.entries()] == [None, "F1", "F2"]
        journal.append("note", at=AT, case="F3")
        assert fsyncs == []
    assert len(fsyncs) == 1
    journal.append("note", at=AT)
    assert len(fsyncs) == 2, "after the batch, each entry is fsynced again"


def test_a_batch_that_raises_still_fsyncs_what_it_wrote(tmp_path: Path, monkeypatch) -> None:
    journal = Journal(tmp_path)
    fsyncs = count_fsyncs(monkeypatch)
    with pytest.raises(RuntimeError, match="boom"), journal.batch():
        journal.append("note", at=AT, case="F1")
        raise RuntimeError("boom")
    assert len(fsyncs) >= 1  # the file, and the directory it was created in
    assert [e["case"] for e in journal.entries()] == ["F1"]


def test_an_empty_batch_fsyncs_nothing(tmp_path: Path, monkeypatch) -> None:
    journal = Journal(tmp_path)
    fsyncs = count_fsyncs(monkeypatch)
    with journal.batch():
        pass
    assert fsyncs == []


def test_one_case_read_again_sees_what_others_appended_since(tmp_path: Path) -> None:
    """The per-case index is extended, not trusted blindly: another process's appends,
    a torn line in between, and a journal replaced by a new file are all seen."""
    mine, theirs = Journal(tmp_path), Journal(tmp_path)
    mine.append("invoice-found", at=AT, case="F-1")
    mine.append("invoice-found", at=AT, case="F-2")
    assert [e["event"] for e in mine.entries("F-1")] == ["invoice-found"]

    theirs.append("owner-paid", at=AT, case="F-1")
    with (tmp_path / "journal.jsonl").open("ab") as raw:
        raw.write(b'{"at": "2026-05-01T09:00:00+02:00", "case": "F-1", "ev')  # a torn line
    assert [e["event"] for e in mine.entries("F-1")] == ["invoice-found", "owner-paid"]
    theirs.append("evidence-written", at=AT, case="F-1")
    assert [e["event"] for e in mine.entries("F-1")] == [
        "invoice-found", "owner-paid", "evidence-written"]
    assert mine.events_by_case() == {
        "F-1": ["invoice-found", "owner-paid", "evidence-written"], "F-2": ["invoice-found"]}

    replaced = tmp_path / "journal.jsonl.new"
    replaced.write_bytes(b'{"at": "2026-05-01T09:00:00+02:00", "case": "F-3", "event": "x"}\n')
    os.replace(replaced, tmp_path / "journal.jsonl")
    assert list(mine.entries("F-1")) == []
    assert [e["event"] for e in mine.entries("F-3")] == ["x"]
