"""The outbox: a spool directory of whole messages that survives a kill."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
from imapclient.exceptions import IMAPClientAbortError, IMAPClientError

from relance import app
from relance.acting import Acting
from relance.model import Mode
from relance.store import outbox as outbox_module
from relance.store.outbox import Outbox, id_hash
from relance.store.state import StateStore


def mail(message_id: str, body: str = "Bonjour.\r\n", **headers: str) -> bytes:
    lines = [f"Message-ID: {message_id}", "From: compta@example.fr",
             *(f"{k.replace('_', '-')}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


@pytest.fixture
def box(tmp_path: Path) -> Outbox:
    return Outbox(tmp_path / "state" / "outbox")


def test_an_empty_or_missing_outbox_lists_nothing(box: Outbox) -> None:
    assert box.items() == ([], [])
    assert len(box) == 0
    assert "<a@x>" not in box


def test_a_spooled_message_reads_back_byte_for_byte(box: Outbox) -> None:
    raw = mail("<a@x>", X_Relance_Notice="reply", X_Relance_Invoice="F-1")
    path = box.put("<a@x>", raw)

    (item,), damaged = box.items()
    assert damaged == []
    assert (item.path, item.message_id, item.raw) == (path, "<a@x>", raw)
    assert item.header("X-Relance-Notice") == "reply"
    assert item.header("x-relance-invoice") == "F-1"
    assert item.header("X-Relance-Step") is None
    assert "<a@x>" in box
    assert id_hash("<a@x>") in path.name


def test_messages_list_in_the_order_they_were_spooled(box: Outbox) -> None:
    for name in ("<c@x>", "<a@x>", "<b@x>"):
        box.put(name, mail(name))
    assert [i.message_id for i in box.items()[0]] == ["<c@x>", "<a@x>", "<b@x>"]


def test_spooling_the_same_message_again_replaces_it_and_keeps_its_turn(box: Outbox) -> None:
    box.put("<a@x>", mail("<a@x>", "first\r\n"))
    box.put("<b@x>", mail("<b@x>"))
    box.put("<a@x>", mail("<a@x>", "second\r\n"))

    items = box.items()[0]
    assert [i.message_id for i in items] == ["<a@x>", "<b@x>"]
    assert items[0].raw.endswith(b"second\r\n")


def test_a_removed_message_is_gone_and_removing_twice_is_harmless(box: Outbox) -> None:
    box.put("<a@x>", mail("<a@x>"))
    box.put("<b@x>", mail("<b@x>"))
    assert box.remove("<a@x>") is True
    assert box.remove("<a@x>") is False
    assert [i.message_id for i in box.items()[0]] == ["<b@x>"]


def test_a_new_message_comes_after_every_one_still_spooled(box: Outbox) -> None:
    box.put("<a@x>", mail("<a@x>"))
    box.put("<b@x>", mail("<b@x>"))
    box.remove("<a@x>")
    box.put("<c@x>", mail("<c@x>"))
    assert [i.message_id for i in box.items()[0]] == ["<b@x>", "<c@x>"]


def test_a_temp_file_left_by_a_kill_is_not_a_message_and_is_swept(box: Outbox) -> None:
    box.put("<a@x>", mail("<a@x>"))
    leftover = box.directory / ".spool.k1ll3d.tmp"
    leftover.write_bytes(b"Message-ID: <half")

    assert [i.message_id for i in box.items()[0]] == ["<a@x>"]
    assert box.sweep() == [leftover]
    assert not leftover.exists()
    assert box.items()[0][0].message_id == "<a@x>"


def test_a_failed_write_leaves_the_old_file_and_no_temp(
    box: Outbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    box.put("<a@x>", mail("<a@x>", "old\r\n"))

    def no_rename(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(outbox_module.os, "replace", no_rename)
    with pytest.raises(OSError):
        box.put("<a@x>", mail("<a@x>", "new\r\n"))
    monkeypatch.undo()

    (item,), _ = box.items()
    assert item.raw.endswith(b"old\r\n")
    assert sorted(os.listdir(box.directory)) == [item.path.name]


def test_a_damaged_file_is_reported_with_its_path_and_the_others_still_read(
    box: Outbox
) -> None:
    box.put("<a@x>", mail("<a@x>"))
    torn = box.put("<b@x>", mail("<b@x>"))
    torn.write_bytes(b"")  # emptied by a disk error
    swapped = box.put("<c@x>", mail("<c@x>"))
    swapped.write_bytes(mail("<other@x>"))

    spooled, damaged = box.items()
    assert [i.message_id for i in spooled] == ["<a@x>"]
    assert [d.path for d in damaged] == [torn, swapped]
    assert "no Message-ID" in damaged[0].reason
    assert str(torn) in str(damaged[0])
    assert "<other@x>" in damaged[1].reason


def test_set_aside_moves_a_file_into_failed_out_of_the_listing(box: Outbox) -> None:
    path = box.put("<a@x>", mail("<a@x>"))
    moved = box.set_aside(path)

    assert moved == box.directory / "failed" / path.name
    assert moved.read_bytes() == mail("<a@x>")
    assert box.items() == ([], [])


def test_a_nested_spool_is_not_listed_by_its_parent(tmp_path: Path) -> None:
    notices = Outbox(tmp_path / "outbox")
    copies = Outbox(tmp_path / "outbox" / "to-sent")
    copies.put("<copy@x>", mail("<copy@x>"))
    notices.put("<notice@x>", mail("<notice@x>"))

    assert [i.message_id for i in notices.items()[0]] == ["<notice@x>"]
    assert [i.message_id for i in copies.items()[0]] == ["<copy@x>"]


def test_a_message_needs_a_message_id(box: Outbox) -> None:
    with pytest.raises(ValueError):
        box.put("  ", mail("<a@x>"))


# -- the copies a reminder owes the Sent folder (Acting.file_pending_copies) ---------------

NOW = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)


class FakeMailbox:
    """Sent as a set of Message-IDs; `refuse` makes APPEND fail the way imapclient does."""

    def __init__(self, in_sent: set[str] = frozenset(), refuse: Exception | None = None):
        self.in_sent = set(in_sent)
        self.appended: list[tuple[str, bytes, datetime | None]] = []
        self.refuse = refuse

    def find_message_id(self, folder: str, message_id: str) -> list[int]:
        return [1] if message_id in self.in_sent else []

    def append(self, folder: str, raw: bytes, flags: object = (), when: datetime | None = None
               ) -> int | None:
        if self.refuse is not None:
            raise self.refuse
        self.appended.append((folder, raw, when))
        return None


class Copies(Acting):
    """Just what `file_pending_copies` stands on: the state, the spool, the journal."""

    _set_aside = app.Daemon._set_aside

    def __init__(self, state_dir: Path, *, copy_to_sent: bool = True,
                 mode: Mode = Mode.SEND) -> None:
        self.store = StateStore(state_dir)
        self.to_sent = Outbox(state_dir / "outbox" / "to-sent")
        self.config = SimpleNamespace(mode=mode, smtp=SimpleNamespace(copy_to_sent=copy_to_sent))
        self.events: list[tuple[str, str | None, dict[str, object]]] = []

    def event(self, now: datetime, name: str, case: str | None = None, **details: object
              ) -> None:
        self.events.append((name, case, details))

    def record(self, message_id: str, status: str, number: str = "F-1") -> None:
        with self.store.transaction() as tx:
            tx.send_intent(message_id, number, 1, "courtesy", NOW)
            if status != "intent":
                tx.send_result(message_id, status, "250 ok", at=NOW)


@pytest.fixture
def copies(tmp_path: Path) -> Copies:
    return Copies(tmp_path / "state")


def test_a_sent_copy_missing_from_sent_is_filed_then_forgotten(copies: Copies) -> None:
    copies.record("<r1@x>", "sent", "F-1 F-2")
    copies.to_sent.put("<r1@x>", mail("<r1@x>"))
    box = FakeMailbox()

    copies.file_pending_copies(box, "Sent", NOW)  # type: ignore[arg-type]

    assert [(f, raw) for f, raw, _ in box.appended] == [("Sent", mail("<r1@x>"))]
    assert [(n, c) for n, c, _ in copies.events] == [("reminder-filed", "F-1"),
                                                     ("reminder-filed", "F-2")]
    assert len(copies.to_sent) == 0


def test_a_copy_already_in_sent_is_not_filed_twice(copies: Copies) -> None:
    copies.record("<r1@x>", "sent")
    copies.to_sent.put("<r1@x>", mail("<r1@x>"))
    box = FakeMailbox({"<r1@x>"})

    copies.file_pending_copies(box, "Sent", NOW)  # type: ignore[arg-type]

    assert box.appended == [] and copies.events == []
    assert len(copies.to_sent) == 0


@pytest.mark.parametrize("status", ["unknown", "failed", None])
def test_a_copy_of_a_send_that_did_not_surely_happen_is_dropped_unfiled(
    copies: Copies, status: str | None
) -> None:
    """An "unknown" copy in Sent would make a later lookup say "sent"."""
    if status is not None:
        copies.record("<r1@x>", status)
    copies.to_sent.put("<r1@x>", mail("<r1@x>"))
    box = FakeMailbox()

    copies.file_pending_copies(box, "Sent", NOW)  # type: ignore[arg-type]

    assert box.appended == []
    assert len(copies.to_sent) == 0


def test_a_copy_of_an_unsettled_send_waits(copies: Copies) -> None:
    copies.record("<r1@x>", "intent")
    copies.to_sent.put("<r1@x>", mail("<r1@x>"))

    copies.file_pending_copies(FakeMailbox(), "Sent", NOW)  # type: ignore[arg-type]

    assert "<r1@x>" in copies.to_sent


def test_no_copy_is_filed_when_the_config_says_not_to(tmp_path: Path) -> None:
    copies = Copies(tmp_path / "state", copy_to_sent=False)
    copies.record("<r1@x>", "sent")
    copies.to_sent.put("<r1@x>", mail("<r1@x>"))
    box = FakeMailbox()

    copies.file_pending_copies(box, "Sent", NOW)  # type: ignore[arg-type]

    assert box.appended == []
    assert len(copies.to_sent) == 0


def test_dry_run_leaves_the_spool_and_the_mailbox_alone(tmp_path: Path) -> None:
    copies = Copies(tmp_path / "state", mode=Mode.DRY_RUN)
    copies.record("<r1@x>", "sent")
    copies.to_sent.put("<r1@x>", mail("<r1@x>"))
    box = FakeMailbox()

    copies.file_pending_copies(box, "Sent", NOW)  # type: ignore[arg-type]

    assert box.appended == [] and "<r1@x>" in copies.to_sent


def test_a_copy_the_server_refuses_is_set_aside_not_retried_at_every_pass(
    copies: Copies
) -> None:
    copies.record("<r1@x>", "sent")
    copies.to_sent.put("<r1@x>", mail("<r1@x>"))
    box = FakeMailbox(refuse=IMAPClientError("APPEND failed: [OVERQUOTA] Quota exceeded"))

    copies.file_pending_copies(box, "Sent", NOW)  # type: ignore[arg-type]
    copies.file_pending_copies(box, "Sent", NOW)  # type: ignore[arg-type]

    assert [n for n, _, _ in copies.events] == ["copy-refused"]
    assert len(copies.to_sent) == 0
    assert len(list((copies.to_sent.directory / "failed").iterdir())) == 1


def test_a_dead_link_while_filing_keeps_the_copy_for_the_next_pass(copies: Copies) -> None:
    copies.record("<r1@x>", "sent")
    copies.to_sent.put("<r1@x>", mail("<r1@x>"))

    with pytest.raises(IMAPClientAbortError):
        copies.file_pending_copies(FakeMailbox(refuse=IMAPClientAbortError("socket closed")),
                                   "Sent", NOW)  # type: ignore[arg-type]
    assert "<r1@x>" in copies.to_sent


def test_a_damaged_copy_is_reported_and_set_aside(copies: Copies) -> None:
    copies.to_sent.put("<r1@x>", mail("<r1@x>")).write_bytes(b"")

    copies.file_pending_copies(FakeMailbox(), "Sent", NOW)  # type: ignore[arg-type]

    ((name, _case, details),) = copies.events
    assert name == "outbox-damaged" and "no Message-ID" in str(details["reason"])
    assert copies.to_sent.items() == ([], [])
