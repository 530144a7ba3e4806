"""Hostile and broken mail through the real mailbox, and secrets that must stay secret.

The hostile mail goes where relance reads it most deeply: into the firm's Sent, written
by the firm to a client under an invoice-like subject (so the whole message and its
attachments are parsed for invoice facts), and into INBOX from a client's domain (so it is
parsed and classified as a possible answer). Valid invoices sit before and after it in
both folders. One `relance run --once` must then finish in bounded time and memory,
find the valid invoices, log at most one line per broken message, and print no traceback.

Corpus: broken MIME written here (patterned on mail-parser's tests/mails/mail_malformed_1
and _3, which its wheel does not ship: a nested multipart reusing its parent's boundary,
a body whose boundary is not the declared one), charsets, 8-bit and encoded-word abuse, a
200 kB header, a 30 MB message, multiparts nested 1000 deep, and every CPython email test
message (Lib/test/test_email/data/msg_*.txt).
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import resource
import socket
import ssl
import subprocess
import threading
import time
import zipfile
from collections.abc import Iterator
from datetime import datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest

from relance.config import ConfigError, load_config
from relance.model import Attachment
from relance.store.evidence import write_bundle
from tests.faults.conftest import (
    COURTESY,
    NUMBER,
    REMINDER_1,
    Wired,
    parsed,
    relance_cli,
    reminders_to,
    send_invoice,
)
from tests.integration.helpers import Office, at, invoice_mail, invoice_pdf
from tests.mailservers import MailUser, MakeUser

pytestmark = pytest.mark.dovecot

CPYTHON_EMAIL_DATA = Path(os.__file__).parent / "test" / "test_email" / "data"
WHEN = format_datetime(at(COURTESY - timedelta(days=9), 10))


def _head(sender: str, to: str, subject: bytes | str, extra: bytes = b"") -> bytes:
    subject_bytes = subject.encode() if isinstance(subject, str) else subject
    return (b"From: " + sender.encode() + b"\r\nTo: " + to.encode() + b"\r\nSubject: "
            + subject_bytes + b"\r\nDate: " + WHEN.encode()
            + b"\r\nMessage-ID: <" + os.urandom(8).hex().encode() + b"@hostile.test>\r\n"
            + extra)


def _nested(depth: int) -> bytes:
    body = b"text"
    for level in range(depth):
        boundary = f"b{level}".encode()
        body = (b"Content-Type: multipart/mixed; boundary=" + boundary + b"\r\n\r\n--"
                + boundary + b"\r\n" + body + b"\r\n--" + boundary + b"--\r\n")
    return body


def hostile_bodies() -> dict[str, tuple[bytes, bytes]]:
    """name -> (extra header lines, body), each ending its header block itself."""
    pdf = base64.encodebytes(invoice_pdf("F-9999", "10,00", COURTESY, COURTESY)).replace(
        b"\n", b"\r\n")
    bodies: dict[str, tuple[bytes, bytes]] = {
        "multipart without a boundary": (
            b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed\r\n\r\n", b"--\r\nhi\r\n"),
        "boundary never closed": (
            b'Content-Type: multipart/mixed; boundary="x"\r\n\r\n',
            b"--x\r\nContent-Type: text/plain\r\n\r\nopen\r\n--x\r\nContent-Type: "
            b"application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n" + pdf[:300]),
        "child reuses the parent's boundary (mail_malformed_1)": (
            b'Content-Type: multipart/mixed; boundary="----=P"\r\n\r\n',
            b"------=P\r\nContent-Type: multipart/alternative; boundary=\"----=P\"\r\n\r\n"
            b"------=P\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nFacture\r\n"
            b"------=P--\r\n\r\n------=P\r\nContent-Type: application/pdf; name=\"a.pdf\"\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + pdf + b"------=P--\r\n"),
        "body boundary is not the declared one (mail_malformed_3)": (
            b'Content-Type: multipart/alternative;\r\n\tboundary="--=_Declared"\r\n\r\n',
            b"----=_Other\r\nContent-Type: text/html;\r\nContent-Transfer-Encoding: base64\r\n"
            b"\r\nPGh0bWw+PC9odG1sPg==\r\n----=_Other--\r\n"),
        "base64 that is not": (
            b"Content-Type: application/pdf; name=x.pdf\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n", b"!!!! not base64 ####\r\n=\r\n"),
        "quoted-printable that is not": (
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n", b"=ZZ=\r\n=0\r\n=\r\n"),
        "unknown transfer encoding": (
            b"Content-Type: text/plain\r\nContent-Transfer-Encoding: x-rot13\r\n\r\n", b"uv\r\n"),
        "unknown charset": (
            b'Content-Type: text/plain; charset="x-no-such-charset"\r\n\r\n',
            b"Montant : 12,00 \xe2\x82\xac\r\n"),
        "utf-8 declared, latin-1 sent": (
            b"Content-Type: text/plain; charset=utf-8\r\n\r\n", b"\xe9ch\xe9ance 30/05\r\n"),
        "utf-7 body": (b"Content-Type: text/plain; charset=utf-7\r\n\r\n", b"+AGEAYgBj-+-\r\n"),
        "empty charset, 8-bit body": (
            b"Content-Type: text/plain; charset=\"\"\r\n\r\n", b"\xff\xfe\x00\x00\r\n"),
        "pdf that is not a pdf": (
            b'Content-Type: multipart/mixed; boundary="q"\r\n\r\n',
            b"--q\r\nContent-Type: application/pdf; name=\"F-1.pdf\"\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n"
            + base64.encodebytes(b"%PDF-1.7\n" + os.urandom(3000)) + b"--q--\r\n"),
        "zip bomb shaped pdf name": (
            b'Content-Type: multipart/mixed; boundary="q"\r\n\r\n',
            b"--q\r\nContent-Type: application/pdf; name=\"../../../../tmp/pwned.pdf\"\r\n"
            b"Content-Disposition: attachment; filename=\"../../../../tmp/pwned.pdf\"\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + pdf + b"--q--\r\n"),
        "nested 1000 deep": (b"", _nested(1000)),
        "nested 60 deep": (b"", _nested(60)),
        "NUL bytes everywhere": (b"X-Null: a\x00b\r\n\r\n", b"\x00" * 5000 + b"\r\n"),
        "no body, no blank line": (b"", b""),
        "lone CR line ends": (b"Content-Type: text/plain\r\r\r", b"a\rb\rc\r"),
    }
    return bodies


def hostile_subjects() -> dict[str, bytes]:
    return {
        "8-bit utf-8 subject": "Facture n° F-8BIT échéance".encode(),
        "8-bit latin-1 subject": b"Facture n\xb0 F-8BIT \xe9ch\xe9ance",
        "encoded-word flood": b"Facture " + b"=?utf-8?q?a?= " * 6000,
        "encoded words of unknown charset": b"=?x-bogus?q?Facture?= =?utf-8?b?!!!!?=",
        "unclosed encoded word": b"=?utf-8?q?Facture_F-1" + b"=" * 2000,
        "encoded CRLF": b"=?utf-8?q?Facture=0D=0ABcc=3A_evil=40evil=2Etest?=",
        "200 kB subject": b"Facture " + b"x" * 200_000,
        "200 kB folded subject": b"Facture" + b"\r\n x" * 70_000,
    }


def cpython_messages() -> list[tuple[str, bytes]]:
    return [(p.name, p.read_bytes()) for p in sorted(CPYTHON_EMAIL_DATA.glob("msg_*.txt"))]


def as_from(raw: bytes, sender: str, to: str, subject: str) -> bytes:
    """`raw` with its From/To/Subject replaced, so relance reads it as ours to read."""
    lines = raw.replace(b"\r\n", b"\n").split(b"\n")
    end = lines.index(b"") if b"" in lines else len(lines)
    head, body = lines[:end], lines[end:]
    kept: list[bytes] = []
    skipping = False
    for line in head:
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                kept.append(line)
            continue
        name = line.split(b":", 1)[0].strip().lower()
        skipping = name in (b"from", b"to", b"cc", b"subject", b"message-id", b"in-reply-to",
                            b"references")
        if not skipping:
            kept.append(line)
    new = [f"From: {sender}".encode(), f"To: {to}".encode(), f"Subject: {subject}".encode(),
           f"Message-ID: <{os.urandom(8).hex()}@hostile.test>".encode()]
    return b"\r\n".join(new + kept + body)


@pytest.fixture
def client(make_user: MakeUser) -> MailUser:
    return make_user("client")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def test_a_from_of_nested_comments_is_skipped_and_the_pass_goes_on(wired: Wired) -> None:
    """Found by test_fuzz.py (RecursionError in email.utils.getaddresses); fixed in 0ca43bb."""
    office = wired.office
    bomb = b"From: " + b"(" * 600 + b"x@evil.test" + b")" * 600 + b"\r\nTo: " + \
        office.firm.address.encode() + b"\r\nSubject: hello\r\n\r\nhi\r\n"
    office.dovecot.deliver_lmtp(office.firm.address, bomb)
    office.append("INBOX", invoice_mail(
        NUMBER, sender=f"Facturation <{office.billing.address}>",
        client=f"Client <{VALID_CLIENT}>", issued=COURTESY - timedelta(days=25),
        due=COURTESY + timedelta(days=5)))

    result = relance_cli(office.config_path, "run", "--once", "--now", at(COURTESY).isoformat())

    assert result.returncode == 0, result.stderr[-2000:]
    assert NUMBER in office.cases()
    assert "Traceback" not in result.stderr, result.stderr[-2000:]


VALID_CLIENT = "compta@valid-client.test"  # not a mailbox: the relay records what it gets
HOSTILE_CLIENT = "compta@hostile-client.test"  # its domain's mail is read whole, as replies


def test_hostile_mail_everywhere_is_skipped_and_valid_invoices_are_still_found(
    wired: Wired
) -> None:
    office = wired.office
    firm_from = office.sender
    stranger = "someone@hostile-client.test"

    def invoice(number: str, to: str, folder: str = "Sent", sender: str = firm_from) -> None:
        office.append(folder, invoice_mail(number, sender=sender, client=f"Client <{to}>",
                                           issued=COURTESY - timedelta(days=25),
                                           due=COURTESY + timedelta(days=5)))

    invoice("F-2026-0001", VALID_CLIENT)
    invoice("F-2026-0900", HOSTILE_CLIENT)  # makes hostile-client.test a known sender
    appended: list[tuple[str, str]] = []

    def put(folder: str, name: str, raw: bytes) -> None:
        with office.dovecot.imap_client(office.firm, timeout=120) as imap:
            imap.append(folder, raw, flags=(b"\\Seen",))
        appended.append((folder, name))

    for name, (extra, body) in hostile_bodies().items():
        put("Sent", name, _head(firm_from, HOSTILE_CLIENT, f"Facture {name}", extra) + body)
        put("INBOX", name, _head(stranger, office.firm.address, f"Re: {name}", extra) + body)
    for name, subject in hostile_subjects().items():
        put("Sent", name, _head(firm_from, HOSTILE_CLIENT, subject, b"\r\n")
            + b"Facture jointe.\r\n")
        put("INBOX", name, _head(stranger, office.firm.address, subject, b"\r\n") + b"Re\r\n")
    for name, raw in cpython_messages():
        put("INBOX", name, raw)
        put("Sent", name, as_from(raw, firm_from, HOSTILE_CLIENT, f"Facture {name}"))
        put("INBOX", name + " from a client", as_from(raw, stranger, office.firm.address,
                                                       f"Re: {name}"))
    huge = (b'Content-Type: multipart/mixed; boundary="h"\r\n\r\n'
            b"--h\r\nContent-Type: application/pdf; name=big.pdf\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n"
            + base64.encodebytes(os.urandom(22 * 1024 * 1024)) + b"--h--\r\n")
    assert len(huge) > 30_000_000
    put("INBOX", "30 MB", _head(stranger, office.firm.address, "Re: Facture", huge[:0]) + huge)
    put("Sent", "30 MB", _head(firm_from, HOSTILE_CLIENT, "Facture F-2026-0999", b"") + huge)
    invoice("F-2026-0002", VALID_CLIENT)
    invoice("F-2026-0003", VALID_CLIENT, "INBOX", f"Facturation <{office.billing.address}>")

    started = time.monotonic()
    result = relance_cli(office.config_path, "run", "--once", "--now",
                         at(COURTESY).isoformat(), timeout=600)
    took = time.monotonic() - started

    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    print(f"\n{len(appended)} hostile messages: one pass in {took:.1f} s, "
          f"peak RSS of children {peak_rss_mb():.0f} MB")
    assert took < 120, f"one pass over {len(appended)} hostile messages took {took:.0f} s"
    assert peak_rss_mb() < 600
    cases = office.cases()
    assert {"F-2026-0001", "F-2026-0002", "F-2026-0003", "F-2026-0900"} <= set(cases)
    (reminder,) = reminders_to(wired.relay, VALID_CLIENT)  # one mail for the three
    assert reminder["X-Relance-Invoice"] == "F-2026-0001"
    per_message: dict[str, int] = {}
    for line in result.stderr.splitlines():
        m = re.search(r"event=(message-skipped|message-too-big) folder=(\S+) uid=(\d+)", line)
        if m:
            key = f"{m[2]}/{m[3]}"
            per_message[key] = per_message.get(key, 0) + 1
    assert all(n == 1 for n in per_message.values()), per_message
    assert result.stderr.count("event=message-too-big") == 2


def append_raw(office: Office, folder: str, raw: bytes) -> None:
    with office.dovecot.imap_client(office.firm) as imap:
        imap.append(folder, raw, flags=(b"\\Seen",))


def invoice_with_headers(office: Office, number: str, to: str, subject: str,
                         sender: str | None = None) -> bytes:
    """An invoice mail with raw To, Subject (and From) lines, as hostile as they come."""
    mail = invoice_mail(number, sender=office.sender, client="placeholder@example.test",
                        issued=COURTESY - timedelta(days=25), due=COURTESY + timedelta(days=5))
    del mail["To"], mail["Subject"]
    raw = mail.as_bytes()
    if sender is not None:
        raw = re.sub(rb"^From: .*$", b"From: " + sender.encode(), raw, count=1,
                     flags=re.MULTILINE)
    return raw.replace(b"\nMIME-Version", f"\nTo: {to}\nSubject: {subject}\nMIME-Version"
                       .encode(), 1)


def test_crlf_and_template_syntax_in_a_client_name_or_subject_never_reach_a_header(
    wired: Wired, client: MailUser
) -> None:
    office = wired.office
    to = f"=?utf-8?q?Evil=0D=0AX-Injected=3A_yes=0D=0A?= {{{{ 7*7 }}}} <{client.address}>"
    subject = (f"=?utf-8?q?Facture_n=C2=B0_{NUMBER}=0D=0AX-Injected=3A_yes?= "
               "{{ firm.iban }}")
    append_raw(office, "Sent", invoice_with_headers(office, NUMBER, to, subject))

    office.pass_at(at(COURTESY))

    (accepted,) = wired.relay.received_by(client.address)
    assert accepted.rcpt_tos == (client.address,)
    head = accepted.data.split(b"\r\n\r\n", 1)[0]
    assert not re.search(rb"^x-injected\s*:", head, re.IGNORECASE | re.MULTILINE), head
    reminder = parsed(accepted.data)
    assert "\n" not in str(reminder["Subject"]) and "\r" not in str(reminder["Subject"])
    assert "{{ firm.iban }}" in str(reminder["Subject"])  # mail text is data, not a template
    body = reminder.get_body(("plain",)).get_content()
    assert "49" not in body.replace(NUMBER, "")


def test_an_8bit_utf8_subject_and_name_reach_the_reminder_intact(
    wired: Wired, client: MailUser
) -> None:
    office = wired.office
    append_raw(office, "Sent", invoice_with_headers(
        office, NUMBER, f"Société Générale <{client.address}>", f"Facture n° {NUMBER} – mai"))
    office.pass_at(at(COURTESY))
    (reminder,) = reminders_to(wired.relay, client.address)
    assert str(reminder["Subject"]) == f"Re: Facture n° {NUMBER} – mai"
    assert office.case(NUMBER).client_name == "Société Générale"


def test_a_reply_with_a_broken_base64_subject_still_pauses_the_case(
    wired: Wired, client: MailUser
) -> None:
    """Found by test_fuzz.py (HeaderParseError from decode_header skipped the whole reply,
    and the next reminder went out after it); fixed in 0ca43bb."""
    office = wired.office
    send_invoice(office, client)
    office.pass_at(at(COURTESY))
    (courtesy,) = reminders_to(wired.relay, client.address)
    reply = (f"From: Client <{client.address}>\r\nTo: {office.firm.address}\r\n"
             f"Subject: =?utf-8?b?UmU6I?= Facture\r\nDate: {format_datetime(at(COURTESY, 14))}"
             f"\r\nMessage-ID: <reply-1@client.test>\r\n"
             f"In-Reply-To: {courtesy['Message-ID']}\r\n"
             f"References: {courtesy['Message-ID']}\r\n\r\n"
             "Nous contestons cette facture.\r\n").encode()
    office.dovecot.deliver_lmtp(office.firm.address, reply, mail_from=client.address)

    office.pass_at(at(REMINDER_1))

    assert len(reminders_to(wired.relay, client.address)) == 1
    assert office.case(NUMBER).state.value == "paused"


HIDDEN_RECIPIENT = "=?utf-8?q?Evil=0D=0ABcc=3A_evil=40evil=2Etest=0D=0A?= <{client}>"


def hidden_sender(firm: str) -> str:
    """A From: whose encoded display name reads "Compta <FIRM>" once decoded."""
    encoded = firm.replace("@", "=40").replace(".", "=2E")
    return f"=?utf-8?q?Compta_=3C{encoded}=3E?= <attacker@evil.test>"


def test_an_address_hidden_in_an_encoded_display_name_is_never_an_address() -> None:
    """Found here (addresses were split after decoding); fixed in 3468908."""
    from relance.mailbox.parse import parse_headers

    head = parse_headers(
        f"From: {hidden_sender('compta@firm.test')}\r\n"
        f"To: {HIDDEN_RECIPIENT.format(client='client@client.test')}\r\n\r\n".encode())
    assert head.from_addr == "attacker@evil.test"
    assert head.to_addrs == ("client@client.test",)


def test_a_recipient_hidden_in_an_encoded_name_never_gets_the_reminder(
    wired: Wired, client: MailUser
) -> None:
    office = wired.office
    append_raw(office, "Sent", invoice_with_headers(
        office, NUMBER, HIDDEN_RECIPIENT.format(client=client.address), f"Facture {NUMBER}"))
    office.pass_at(at(COURTESY))
    assert len(reminders_to(wired.relay, client.address)) == 1
    assert wired.relay.received_by("evil@evil.test") == []


def test_a_stranger_posing_as_the_firm_in_an_encoded_name_opens_no_case(
    wired: Wired
) -> None:
    office = wired.office
    victim = "victim@victim.test"
    raw = invoice_with_headers(office, "F-6666", f"Victim <{victim}>", "Facture n° F-6666",
                               sender=hidden_sender(office.firm.address))
    office.dovecot.deliver_lmtp(office.firm.address, raw, mail_from="attacker@evil.test")
    office.pass_at(at(COURTESY - timedelta(days=7)))
    office.pass_at(at(COURTESY))
    assert "F-6666" not in office.cases()
    assert wired.relay.received_by(victim) == []


HOSTILE_NAMES = ["../../../../tmp/pwned.pdf", "/etc/passwd", "..\\..\\win.pdf", "\x00.pdf",
                 "CON", ".", "..", "a/../../b.pdf", "x" * 400 + ".pdf", "\r\nBcc: x.pdf",
                 "%2e%2e%2fescape.pdf", "　.pdf", "-rf .pdf", "~/.ssh/authorized_keys"]


def all_files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def test_attachment_names_never_escape_the_evidence_directory(
    wired: Wired, client: MailUser, tmp_path: Path
) -> None:
    office = wired.office
    send_invoice(office, client)
    office.pass_at(at(COURTESY - timedelta(days=7)))
    case = office.case(NUMBER)
    sandbox = tmp_path / "sandbox"
    evidence_dir = sandbox / "deep" / "evidence"
    evidence_dir.mkdir(parents=True)
    outside_before = all_files(tmp_path) - all_files(evidence_dir)

    pdfs = [Attachment(name, "application/pdf", f"%PDF-{n}".encode())
            for n, name in enumerate(HOSTILE_NAMES)]
    written = write_bundle(evidence_dir, case, [("Sent", 1, b"From: a@b\r\n\r\nx")], [], pdfs,
                           {}, datetime.now(office.config().tz), documents=pdfs)

    assert all_files(tmp_path) - all_files(evidence_dir) == outside_before
    inside = all_files(evidence_dir)
    assert all(evidence_dir.resolve() in p.resolve().parents for p in inside)
    names = {p.name for p in written.path.rglob("*")}
    assert not any(n in (".", "..") or "/" in n or "\\" in n or "\x00" in n or "\n" in n
                   for n in names), names
    assert len([p for p in (written.path / "invoice").iterdir()]) == len(HOSTILE_NAMES)


def test_evidence_export_of_a_mail_with_hostile_attachment_names_stays_inside(
    wired: Wired, client: MailUser, tmp_path: Path
) -> None:
    office = wired.office
    mail = invoice_mail(NUMBER, sender=office.sender, client=f"Client <{client.address}>",
                        issued=COURTESY - timedelta(days=25), due=COURTESY + timedelta(days=5))
    for name in HOSTILE_NAMES[:6]:
        mail.add_attachment(b"%PDF-1.4 hostile", maintype="application", subtype="pdf",
                            filename=name)
    office.append("Sent", mail)
    office.pass_at(at(COURTESY - timedelta(days=7)))
    out = tmp_path / "out"

    result = relance_cli(office.config_path, "evidence", "export", NUMBER, "--out", str(out),
                         "--now", at(COURTESY).isoformat())

    assert result.returncode == 0, result.stderr
    assert not Path("/tmp/pwned.pdf").exists()
    evidence_dir = office.config().evidence_dir
    for path in all_files(evidence_dir) | all_files(out):
        assert evidence_dir.resolve() in path.resolve().parents or \
            out.resolve() in path.resolve().parents
    for zipped in out.rglob("*.zip"):
        with zipfile.ZipFile(zipped) as archive:
            for entry in archive.namelist():
                assert not entry.startswith(("/", "\\")) and ".." not in entry.split("/"), entry


# -- secrets and transport security ------------------------------------------------------------


def test_passwords_never_appear_in_logs_or_output(wired: Wired, client: MailUser) -> None:
    office = wired.office
    secrets_ = [office.firm.password, office.smtp.password]
    send_invoice(office, client)
    runs = [
        relance_cli(office.config_path, "run", "-v", "--once", "--now", at(COURTESY).isoformat()),
        relance_cli(office.config_path, "run", "--once", "--now", at(COURTESY).isoformat(),
                    env={"RELANCE_LOG_FORMAT": "json"}),
        relance_cli(office.config_path, "check", "-v"),
        relance_cli(office.config_path, "status", "--json", "--all"),
        relance_cli(office.config_path, "show", "-v", NUMBER),
    ]
    wired.imap.refuse()
    runs.append(relance_cli(office.config_path, "run", "-v", "--once"))
    wired.imap.accept()
    config = office.config_path.read_text()
    office.config_path.write_text(config.replace(f'password = "{office.firm.password}"',
                                                 'password = "wrong-imap-password"'))
    runs.append(relance_cli(office.config_path, "run", "-v", "--once"))
    runs.append(relance_cli(office.config_path, "check", "-v"))
    office.config_path.write_text(config.replace(f'password = "{office.smtp.password}"',
                                                 'password = "wrong-smtp-password"'))
    runs.append(relance_cli(office.config_path, "check", "-v"))
    office.config_path.write_text(config.replace("timeout = 2", "timeout = \"soon\""))
    runs.append(relance_cli(office.config_path, "check", "-v"))
    office.config_path.write_text(config)

    assert runs[0].returncode == 0, runs[0].stderr
    for run in runs:
        for secret in [*secrets_, "wrong-imap-password", "wrong-smtp-password"]:
            assert secret not in run.stdout + run.stderr, (run.args, secret)
    journal = (wired.state_dir / "journal.jsonl").read_text()
    assert not any(secret in journal for secret in secrets_)


SECURE_BASE = """\
[imap]
host = "{host}"
port = 993
security = "{security}"
username = "compta@example.fr"
password = "x"

[smtp]
host = "127.0.0.1"
port = 465
security = "tls"
username = "compta@example.fr"
password = "x"

[firm]
name = "Atelier"
sender = "Atelier <compta@example.fr>"
addresses = ["compta@example.fr"]
"""


@pytest.mark.parametrize("host", ["imap.example.fr", "10.0.0.1", "127.0.0.1.evil.test",
                                  "localhost.evil.test", "0.0.0.0", "::ffff:8.8.8.8"])
def test_security_none_is_refused_for_a_host_that_is_not_loopback(
    tmp_path: Path, host: str
) -> None:
    path = tmp_path / "relance.toml"
    path.write_text(SECURE_BASE.format(host=host, security="none"))
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert any(f"{path}:4:" in p and "loopback" in p for p in refused.value.problems), \
        refused.value.problems


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.8.9.10"])
def test_security_none_is_allowed_on_loopback(tmp_path: Path, host: str) -> None:
    path = tmp_path / "relance.toml"
    path.write_text(SECURE_BASE.format(host=host, security="none"))
    assert load_config(path).imap.security == "none"


def test_security_none_from_the_environment_is_refused_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "relance.toml"
    path.write_text(SECURE_BASE.format(host="127.0.0.1", security="none"))
    monkeypatch.setenv("RELANCE_IMAP__HOST", "imap.example.fr")
    with pytest.raises(ConfigError):
        load_config(path)
    monkeypatch.delenv("RELANCE_IMAP__HOST")
    monkeypatch.setenv("RELANCE_SMTP__SECURITY", "none")
    monkeypatch.setenv("RELANCE_SMTP__HOST", "smtp.example.fr")
    with pytest.raises(ConfigError):
        load_config(path)


@pytest.fixture
def self_signed_imap(tmp_path: Path) -> Iterator[int]:
    """An IMAP-over-TLS greeter on loopback whose certificate nobody vouches for."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    made = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                           "-keyout", str(key), "-out", str(cert), "-days", "1",
                           "-subj", "/CN=127.0.0.1"], capture_output=True)
    if made.returncode != 0:
        pytest.skip("openssl cannot make a test certificate here")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with contextlib.suppress(OSError), context.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n")
                tls.recv(1024)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join(2)
    listener.close()


def test_tls_certificates_are_verified_by_default(wired: Wired, self_signed_imap: int) -> None:
    path = wired.office.config_path
    text = path.read_text()
    imap_section = text.split("[smtp]")[0]
    fixed = imap_section.replace('security = "none"', 'security = "tls"').replace(
        f"port = {wired.imap.port}", f"port = {self_signed_imap}")
    path.write_text(text.replace(imap_section, fixed))

    result = relance_cli(path, "run", "--once", "--now", at(COURTESY).isoformat())

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in result.stderr, result.stderr
    assert wired.office.firm.password not in result.stderr
