"""A whole case against a real Dovecot: closed, archived, sealed, exported, verified,
and then tampered with in every way `verify` must name.

The firm's mailbox gets its invoice and reminders APPENDed to Sent and the client's
replies to INBOX, with unrelated mail around them, as a real mailbox would hold.
"""

from __future__ import annotations

import base64
import json
import shutil
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from relance import archive
from relance.config import ServerConfig
from relance.mailbox.imap import Mailbox
from relance.model import Case, CaseState, Firm, StepRecord
from relance.store.evidence import LEDGER_FILE, export, verify
from relance.store.journal import Journal
from tests.mailservers import Dovecot, MailUser, MakeUser

pytestmark = pytest.mark.dovecot

PARIS = timezone(timedelta(hours=1))
CLOSED_AT = datetime(2026, 5, 20, 10, 0, tzinfo=PARIS)
PDF = b"%PDF-1.4\n% facture\n%%EOF\n"

_KEY = rsa.generate_private_key(public_exponent=65537, key_size=1024)
_PRIVATE = _KEY.private_bytes(serialization.Encoding.PEM,
                              serialization.PrivateFormat.TraditionalOpenSSL,
                              serialization.NoEncryption())
_TXT = b"v=DKIM1; k=rsa; p=" + base64.b64encode(_KEY.public_key().public_bytes(
    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


def fake_dns(name: bytes, timeout: int = 5) -> bytes | None:
    return _TXT if name == b"sel._domainkey.example.test." else None


def mail(sender: str, to: str, subject: str, message_id: str, when: datetime, body: str,
         *, references: tuple[str, ...] = (), pdf: str | None = None) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = format_datetime(when)
    msg["Message-ID"] = message_id
    if references:
        msg["In-Reply-To"] = references[-1]
        msg["References"] = " ".join(references)
    msg.set_content(body)
    if pdf:
        msg.add_attachment(PDF, maintype="application", subtype="pdf", filename=pdf)
    return msg.as_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def signed(raw: bytes) -> bytes:
    return dkim.sign(raw, b"sel", b"example.test", _PRIVATE,
                     include_headers=[b"from", b"to", b"subject", b"message-id"]) + raw


@dataclass
class Firmbox:
    """The firm's Dovecot account, a Mailbox on it, and the thread APPENDed for a case."""

    user: MailUser
    client: MailUser
    mailbox: Mailbox
    firm: Firm
    raws: dict[str, dict[str, bytes]]  # case number -> Message-ID -> raw as appended


def message_ids(dovecot: Dovecot, user: MailUser, folder: str) -> set[str]:
    with dovecot.imap_client(user) as imap:
        imap.select_folder(folder, readonly=True)
        uids = imap.search(["ALL"])
        if not uids:
            return set()
        got = imap.fetch(uids, [b"BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"])
        return {v[b"BODY[HEADER.FIELDS (MESSAGE-ID)]"].decode().split(":", 1)[1].strip()
                for v in got.values()}


def append_case(box: Firmbox, dovecot: Dovecot, number: str, day: int = 2) -> Case:
    """Invoice and two reminders in Sent, the client's two replies in INBOX."""
    firm_addr, client_addr = box.user.address, box.client.address
    invoice_id = f"<inv-{number}@example.test>"
    reminder_ids = [f"<rem{i}-{number}@example.test>" for i in (1, 2)]
    reply_id, reply2_id = f"<reply-{number}@example.test>", f"<reply2-{number}@example.test>"
    subject = f"Facture {number}"
    sent = {
        invoice_id: mail(f"Atelier <{firm_addr}>", client_addr, subject, invoice_id,
                         datetime(2026, 3, day, 9, 0, tzinfo=PARIS), "Voici la facture.",
                         pdf=f"{number}.pdf"),
        reminder_ids[0]: mail(f"Atelier <{firm_addr}>", client_addr, f"Re: {subject}",
                              reminder_ids[0], datetime(2026, 4, 6, 9, 0, tzinfo=PARIS),
                              "Première relance.", references=(invoice_id,)),
        reminder_ids[1]: mail(f"Atelier <{firm_addr}>", client_addr, f"Re: {subject}",
                              reminder_ids[1], datetime(2026, 4, 19, 9, 0, tzinfo=PARIS),
                              "Deuxième relance.", references=(invoice_id, reminder_ids[0])),
    }
    inbox = {
        # unknown to the case: found because it replies into the thread
        reply_id: signed(mail(f"Client <{client_addr}>", firm_addr, f"Re: {subject}",
                              reply_id, datetime(2026, 4, 20, 8, 30, tzinfo=PARIS),
                              "Nous payons vendredi.",
                              references=(invoice_id, reminder_ids[1]))),
        # names only the reply above: found on the second round
        reply2_id: mail(f"Client <{client_addr}>", firm_addr, f"Re: {subject}", reply2_id,
                        datetime(2026, 5, 19, 17, 0, tzinfo=PARIS), "Virement parti.",
                        references=(reply_id,)),
    }
    with dovecot.imap_client(box.user) as imap:
        for raw in sent.values():
            imap.append("Sent", raw, flags=(b"\\Seen",))
        for raw in inbox.values():
            imap.append("INBOX", raw)
    box.raws[number] = {**sent, **inbox}
    return Case(
        number=number,
        client_addrs=(client_addr,),
        subject=subject,
        root_message_id=invoice_id,
        client_name="Client SAS",
        amount=Decimal("1200.00"),
        paid=Decimal("1200.00"),
        issue_date=date(2026, 3, day),
        due_date=date(2026, 4, 1),
        state=CaseState.PAID,
        thread_ids=(invoice_id,),
        steps=tuple(StepRecord(i + 2, f"reminder-{i + 1}",
                               datetime(2026, 4, 6 + 13 * i, 9, 0, tzinfo=PARIS), mid, "sent")
                    for i, mid in enumerate(reminder_ids)),
    )


@pytest.fixture
def box(dovecot: Dovecot, make_user: MakeUser) -> Iterator[Firmbox]:
    user, client = make_user("firm"), make_user("client")
    with dovecot.imap_client(user) as imap:  # mail around the thread, never archived
        imap.append("INBOX", mail(f"Fournisseur <x@{dovecot.domain}>", user.address,
                                  "Votre commande", "<other@example.test>",
                                  datetime(2026, 4, 1, 8, 0, tzinfo=PARIS), "Bonjour"))
        imap.append("Sent", mail(f"Atelier <{user.address}>", "y@example.test", "Devis",
                                 "<devis@example.test>", datetime(2026, 4, 2, 8, 0,
                                                                  tzinfo=PARIS), "Devis"))
    server = ServerConfig(host=dovecot.host, port=dovecot.imap_port, security="none",
                          username=user.address, password=user.password, timeout=10)
    firm = Firm(name="Atelier Dupont SARL", sender=f"Atelier <{user.address}>",
                addresses=(user.address,))
    with Mailbox(server) as mailbox:
        yield Firmbox(user, client, mailbox, firm, {})


def journal_for(tmp_path: Path, case: Case) -> Journal:
    journal = Journal(tmp_path / "state")
    journal.append("invoice-found", at=datetime(2026, 3, 2, 9, 5, tzinfo=PARIS),
                   case=case.number, amount=case.amount, due=case.due_date)
    for step in case.steps:
        journal.append("reminder-sent", at=step.at, case=case.number, step=step.index,
                       message_id=step.message_id, smtp_reply="250 2.0.0 Ok: queued as 7AF3")
    journal.append("client-replied", at=datetime(2026, 5, 19, 17, 1, tzinfo=PARIS),
                   case=case.number, message_id=f"<reply2-{case.number}@example.test>",
                   dkim={"result": "none", "checked_at": "2026-05-19T17:01:00+01:00",
                         "signatures": []})
    journal.append("owner-paid", at=CLOSED_AT, case=case.number, via="shell")
    return journal


# -- the whole case --------------------------------------------------------------------


def test_closed_case_is_archived_sealed_exported_and_verifies(
    box: Firmbox, dovecot: Dovecot, tmp_path: Path
) -> None:
    case = append_case(box, dovecot, "F-2026-031")
    journal = journal_for(tmp_path, case)
    evidence_dir = tmp_path / "evidence"

    closed = archive.close_case(box.mailbox, case, journal, evidence_dir, CLOSED_AT,
                                firm=box.firm, dnsfunc=fake_dns, tz=ZoneInfo("Europe/Paris"))

    # the mailbox: the thread, and only it, moved under Relance.Archive.2026
    assert closed.archived is not None
    assert closed.archived.folder == "Relance.Archive.2026"  # Dovecot's "." delimiter
    assert (closed.archived.moved, closed.archived.method) == (5, "move")
    thread_ids = set(box.raws[case.number])
    assert message_ids(dovecot, box.user, "Relance.Archive.2026") == thread_ids
    assert message_ids(dovecot, box.user, "INBOX") == {"<other@example.test>"}
    assert message_ids(dovecot, box.user, "Sent") == {"<devis@example.test>"}

    # the bundle: every message byte for byte as Dovecot holds it, where it now lives
    root = closed.bundle.path
    manifest = json.loads((root / "manifest.json").read_text())
    held = {m["message_id"]: (root / m["file"]).read_bytes() for m in manifest["messages"]}
    assert held == box.raws[case.number]
    assert {m["folder"] for m in manifest["messages"]} == {"Relance.Archive.2026"}
    assert all(m["received_at"] for m in manifest["messages"])
    assert (root / "invoice" / "F-2026-031.pdf").read_bytes() == PDF
    journal_lines = (root / "journal.jsonl").read_text()
    assert "queued as 7AF3" in journal_lines and "thread-archived" in journal_lines
    dkim_rows = {r["message_id"]: r for r in json.loads((root / "dkim.json").read_text())
                 ["messages"]}
    assert dkim_rows[f"<reply-{case.number}@example.test>"]["result"] == "pass"
    assert dkim_rows[f"<reply-{case.number}@example.test>"]["checked"] == "at-bundle-time"
    assert dkim_rows[f"<reply2-{case.number}@example.test>"]["checked"] == "on-arrival"
    page = (root / "timeline.html").read_text()
    assert "Nous payons vendredi." in page and "Relance.Archive.2026" in page
    # in the firm's zone: 08:30+01:00 on 20 April is 09:30 in Paris summer time
    assert "2 mars 2026 à 09:00" in page and "20 avril 2026 à 09:30" in page
    assert verify(evidence_dir) == []
    sealed = [e for e in journal.entries(case.number) if e["event"] == "evidence-written"]
    assert sealed[0]["ledger_hash"] == closed.bundle.ledger_hash

    # export: the copy and the zip, with the ledger for checking the chain elsewhere
    zipped = export(evidence_dir, case.number, tmp_path / "out")
    with zipfile.ZipFile(zipped) as z:
        assert f"{root.name}/manifest.json" in z.namelist() and LEDGER_FILE in z.namelist()

    # closing again (a retry after an error): nothing moves, the same bundle comes back
    again = archive.close_case(box.mailbox, case, journal, evidence_dir, CLOSED_AT,
                               firm=box.firm, dnsfunc=fake_dns)
    assert again.archived is not None and again.archived.already == 5
    assert not again.bundle.new and again.bundle.path == root


Fault = Callable[[Path], None]


def _alter_byte(evidence_dir: Path) -> None:
    eml = sorted((evidence_dir / "F-A" / "messages").iterdir())[3]
    data = bytearray(eml.read_bytes())
    data[len(data) // 2] ^= 0x20
    eml.write_bytes(bytes(data))


def _delete_file(evidence_dir: Path) -> None:
    (evidence_dir / "F-B" / "invoice" / "F-B.pdf").unlink()


def _swap_bundles(evidence_dir: Path) -> None:
    (evidence_dir / "F-A").rename(evidence_dir / "tmp")
    (evidence_dir / "F-B").rename(evidence_dir / "F-A")
    (evidence_dir / "tmp").rename(evidence_dir / "F-B")


def _edit_manifest(evidence_dir: Path) -> None:
    manifest = evidence_dir / "F-B" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"paid"', '"chasing"'))


def _reorder_ledger(evidence_dir: Path) -> None:
    ledger = evidence_dir / LEDGER_FILE
    lines = ledger.read_text().splitlines()
    ledger.write_text(f"{lines[1]}\n{lines[0]}\n")


FAULTS: dict[str, tuple[Fault, Callable[[list[Any]], bool]]] = {
    "altered byte": (_alter_byte, lambda ps: len(ps) == 1 and ps[0].path.startswith(
        "F-A/messages/04_") and "altered" in ps[0].message),
    "deleted file": (_delete_file, lambda ps: [str(p) for p in ps] == [
        "F-B/invoice/F-B.pdf: deleted: listed in the manifest, not in the bundle"]),
    "swapped bundles": (_swap_bundles, lambda ps: [p.path for p in ps] == ["F-A", "F-B"]
                        and all("swapped" in p.message for p in ps)),
    "edited manifest": (_edit_manifest, lambda ps: [p.path for p in ps] == [
        "F-B/manifest.json"] and "edited" in ps[0].message),
    "reordered ledger": (_reorder_ledger, lambda ps: {p.line for p in ps} == {1, 2}
                         and all(p.path == LEDGER_FILE for p in ps)),
}


def test_verify_names_each_fault(box: Firmbox, dovecot: Dovecot, tmp_path: Path) -> None:
    evidence_dir = tmp_path / "evidence"
    events: list[tuple[str, str]] = []

    def record(now: datetime, event: str, number: str | None = None, **details: Any) -> None:
        events.append((event, number or ""))

    for index, number in enumerate(("F-A", "F-B")):
        case = append_case(box, dovecot, number, day=2 + index)
        archive.close_case(box.mailbox, case, journal_for(tmp_path / number, case),
                           evidence_dir, CLOSED_AT + timedelta(minutes=index),
                           firm=box.firm, dnsfunc=fake_dns, record=record)
    assert events == [("thread-archived", "F-A"), ("evidence-written", "F-A"),
                      ("thread-archived", "F-B"), ("evidence-written", "F-B")]
    assert verify(evidence_dir) == []
    for name, (fault, named) in FAULTS.items():
        copy = tmp_path / name.replace(" ", "-")
        shutil.copytree(evidence_dir, copy)
        fault(copy)
        problems = verify(copy)
        assert named(problems), f"{name}: {[str(p) for p in problems]}"


# -- without MOVE ----------------------------------------------------------------------


def _hide(monkeypatch: pytest.MonkeyPatch, mailbox: Mailbox, *hidden: str) -> None:
    real = mailbox.imap.has_capability
    monkeypatch.setattr(mailbox.imap, "has_capability",
                        lambda name: name.upper() not in hidden and real(name))


def _mark_deleted(dovecot: Dovecot, user: MailUser, message_id: str) -> None:
    with dovecot.imap_client(user) as imap:
        imap.select_folder("INBOX")
        imap.add_flags(imap.search(["HEADER", "Message-ID", message_id]), [b"\\Deleted"])


def test_without_move_copies_then_expunges_only_the_thread(
    box: Firmbox, dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = append_case(box, dovecot, "F-2026-040")
    _mark_deleted(dovecot, box.user, "<other@example.test>")  # the user's, not ours
    _hide(monkeypatch, box.mailbox, "MOVE")
    done = archive.archive_thread(box.mailbox, case, 2026)
    assert (done.method, done.moved, done.copied) == ("copy+expunge", 5, 0)
    assert message_ids(dovecot, box.user, "Relance.Archive.2026") == set(box.raws[case.number])
    assert message_ids(dovecot, box.user, "INBOX") == {"<other@example.test>"}
    assert message_ids(dovecot, box.user, "Sent") == {"<devis@example.test>"}


def test_without_move_or_uidplus_copies_and_leaves_the_originals(
    box: Firmbox, dovecot: Dovecot, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = append_case(box, dovecot, "F-2026-041")
    _hide(monkeypatch, box.mailbox, "MOVE", "UIDPLUS")
    done = archive.archive_thread(box.mailbox, case, 2026)
    assert (done.method, done.moved, done.copied) == ("copy", 0, 5)
    assert message_ids(dovecot, box.user, "Relance.Archive.2026") == set(box.raws[case.number])
    assert set(box.raws[case.number]) < message_ids(dovecot, box.user, "INBOX") | \
        message_ids(dovecot, box.user, "Sent")


def test_collect_thread_finds_replies_and_nothing_else(box: Firmbox, dovecot: Dovecot) -> None:
    case = append_case(box, dovecot, "F-2026-042")
    append_case(box, dovecot, "F-2026-043")  # another case's thread in the same folders
    notice = mail(f"relance <{box.user.address}>", box.user.address, "[relance] Réponse",
                  "<relance.notice.reply.1@example.test>", CLOSED_AT, "Le client a répondu",
                  references=(case.root_message_id,))
    notice = b"X-Relance-Notice: reply\r\n" + notice
    with dovecot.imap_client(box.user) as imap:  # the owner's notice, threaded on the case
        imap.append("INBOX", notice)
    found = archive.collect_thread(box.mailbox, case, ["INBOX", "Sent", "Missing"])
    assert {m.raw for m in found} == set(box.raws[case.number].values())
    assert {m.folder for m in found} == {"INBOX", "Sent"}
    assert archive.relance_folder(box.mailbox, "Paid") == "Relance.Paid"
