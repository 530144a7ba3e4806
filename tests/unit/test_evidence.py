"""Evidence bundles: everything sealed, and every later change named by `verify`.

No mail server here: messages are built in the test and handed over as an IMAP fetch
would (folder, UID, raw bytes). tests/integration/test_evidence_dovecot.py does the same
against a real Dovecot.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
import re
import shutil
import subprocess
import zipfile
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from relance import archive
from relance.model import Attachment, Case, CaseState, Firm, StepRecord
from relance.store import evidence
from relance.store.evidence import (
    LEDGER_FILE,
    EvidenceError,
    Problem,
    ThreadMessage,
    dkim_check,
    export,
    safe_name,
    verify,
    write_bundle,
)

PARIS = timezone(timedelta(hours=1))
NOW = datetime(2026, 5, 20, 10, 0, tzinfo=PARIS)
FIRM = Firm(name="Atelier Dupont SARL", sender="Atelier Dupont <compta@dupont.example>",
            addresses=("compta@dupont.example",), owners=("marie@dupont.example",))
PDF = b"%PDF-1.4\n% facture F-2026-014\n%%EOF\n"

# -- DKIM, with a key of our own and a DNS that answers from a dict ----------------------

_KEY = rsa.generate_private_key(public_exponent=65537, key_size=1024)
PRIVATE_PEM = _KEY.private_bytes(serialization.Encoding.PEM,
                                 serialization.PrivateFormat.TraditionalOpenSSL,
                                 serialization.NoEncryption())
_PUBLIC_DER = _KEY.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
DNS = {b"sel._domainkey.eclair.example.": b"v=DKIM1; k=rsa; p="
       + base64.b64encode(_PUBLIC_DER)}


def fake_dns(name: bytes, timeout: int = 5) -> bytes | None:
    return DNS.get(name)


def signed(raw: bytes, domain: bytes = b"eclair.example") -> bytes:
    signature = dkim.sign(raw, b"sel", domain, PRIVATE_PEM,
                          include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    return signature + raw


# -- a case and its thread -------------------------------------------------------------


def mail(
    sender: str, to: str, subject: str, message_id: str, when: datetime, body: str, *,
    reply_to: str | None = None, attachments: tuple[tuple[str, str, bytes], ...] = (),
    auth_results: str | None = None,
) -> bytes:
    msg = EmailMessage()
    if auth_results:
        msg["Authentication-Results"] = auth_results
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = format_datetime(when)
    msg["Message-ID"] = message_id
    if reply_to:
        msg["In-Reply-To"] = reply_to
        msg["References"] = reply_to
    msg.set_content(body)
    for filename, ctype, data in attachments:
        main, _, sub = ctype.partition("/")
        msg.add_attachment(data, maintype=main, subtype=sub, filename=filename)
    return msg.as_bytes().replace(b"\n", b"\r\n").replace(b"\r\r\n", b"\r\n")


def make_case(number: str = "F-2026-014") -> Case:
    return Case(
        number=number,
        client_addrs=("compta@eclair.example",),
        subject=f"Facture {number}",
        root_message_id=f"<inv-{number}@dupont.example>",
        client_name="Boulangerie Éclair SAS",
        amount=Decimal("1234.50"),
        issue_date=date(2026, 3, 2),
        due_date=date(2026, 4, 1),
        state=CaseState.PAID,
        reason="paid (owner, 2026-05-20)",
        thread_ids=(f"<inv-{number}@dupont.example>",),
        steps=(StepRecord(2, "reminder-1", datetime(2026, 4, 6, 9, 0, tzinfo=PARIS),
                          f"<rem-{number}@dupont.example>", "sent"),),
    )


def thread(case: Case, *, client_body: str = "Nous payons vendredi.") -> list[ThreadMessage]:
    """The case's invoice, a reminder and the client's signed reply; the same bytes on
    every call (MIME boundaries and DKIM timestamps would differ otherwise)."""
    return list(_thread(case.number, client_body))


@functools.cache
def _thread(n: str, client_body: str) -> tuple[ThreadMessage, ...]:
    invoice = mail("Atelier Dupont <compta@dupont.example>", "compta@eclair.example",
                   f"Facture {n}", f"<inv-{n}@dupont.example>",
                   datetime(2026, 3, 2, 9, 0, tzinfo=PARIS), "Veuillez trouver la facture.",
                   attachments=((f"{n}.pdf", "application/pdf", PDF),))
    reminder = mail("Atelier Dupont <compta@dupont.example>", "compta@eclair.example",
                    f"Re: Facture {n}", f"<rem-{n}@dupont.example>",
                    datetime(2026, 4, 6, 9, 0, tzinfo=PARIS), "Sauf erreur de notre part...",
                    reply_to=f"<inv-{n}@dupont.example>")
    reply = signed(mail("Jean Éclair <compta@eclair.example>", "compta@dupont.example",
                        f"Re: Facture {n}", f"<reply-{n}@eclair.example>",
                        datetime(2026, 4, 7, 14, 12, tzinfo=PARIS), client_body,
                        reply_to=f"<rem-{n}@dupont.example>",
                        auth_results="mx.dupont.example; dkim=pass header.d=eclair.example"))
    arrived = datetime(2026, 4, 7, 12, 12, 5, tzinfo=UTC)
    return (ThreadMessage("Sent", 1, invoice), ThreadMessage("Sent", 2, reminder),
            ThreadMessage("INBOX", 7, reply, arrived))


def journal(case: Case) -> list[dict[str, Any]]:
    return [
        {"at": "2026-03-02T09:05:00+01:00", "case": case.number, "event": "invoice-found",
         "amount": "1234.50", "due": "2026-04-01"},
        {"at": "2026-04-06T09:00:00+02:00", "case": case.number, "event": "reminder-sent",
         "step": 2, "message_id": f"<rem-{case.number}@dupont.example>",
         "smtp_reply": "250 2.0.0 Ok: queued as 4F2A9C01"},
        {"at": "2026-05-20T10:00:00+01:00", "case": case.number, "event": "owner-paid",
         "via": "shell"},
    ]


Bundle = Callable[..., evidence.Written]


@pytest.fixture
def bundle(tmp_path: Path) -> Bundle:
    """Write a bundle for a case into tmp_path/evidence, with the standard thread."""

    def write(case: Case | None = None, *, messages: list[ThreadMessage] | None = None,
              now: datetime = NOW, **kwargs: Any) -> evidence.Written:
        case = case or make_case()
        return write_bundle(
            tmp_path / "evidence", case, messages if messages is not None else thread(case),
            journal(case), [Attachment(f"{case.number}.pdf", "application/pdf", PDF)],
            kwargs.pop("dkim_results", {}), now, firm=FIRM, dnsfunc=fake_dns, **kwargs,
        )

    return write


def messages_of(problems: list[Problem]) -> list[str]:
    return [str(p) for p in problems]


# -- what a bundle holds ---------------------------------------------------------------


def test_bundle_holds_every_message_byte_for_byte_and_verifies(
    bundle: Bundle, tmp_path: Path
) -> None:
    case = make_case()
    written = bundle(case)
    root = written.path
    assert root == tmp_path / "evidence" / "F-2026-014"
    emls = sorted((root / "messages").iterdir())
    assert [p.read_bytes() for p in emls] == [m.raw for m in thread(case)]
    assert emls[0].name.startswith("01_") and emls[-1].name.endswith("_INBOX_uid7.eml")
    assert (root / "invoice" / "F-2026-014.pdf").read_bytes() == PDF
    lines = (root / "journal.jsonl").read_text().splitlines()
    assert "queued as 4F2A9C01" in lines[1]
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["case"]["number"] == "F-2026-014"
    assert manifest["case"]["balance"] == "1234.50"
    assert manifest["messages"][2]["folder"] == "INBOX"
    assert manifest["messages"][2]["uid"] == 7
    assert manifest["messages"][2]["received_at"] == "2026-04-07T12:12:05+00:00"
    assert manifest["messages"][0]["attachments"][0]["filename"] == "F-2026-014.pdf"
    assert set(manifest["files"]) == {
        *(f"messages/{p.name}" for p in emls), "invoice/F-2026-014.pdf", "journal.jsonl",
        "dkim.json", "timeline.html", "SHA256SUMS"}
    ledger = [json.loads(x) for x in (tmp_path / "evidence" / LEDGER_FILE).read_text()
              .splitlines()]
    assert ledger == [{
        "seq": 1, "at": NOW.isoformat(), "bundle": "F-2026-014", "number": "F-2026-014",
        "manifest_sha256": written.manifest_sha256, "prev": "0" * 64,
        "hash": written.ledger_hash}]
    assert verify(tmp_path / "evidence") == []


def test_sha256sums_checks_with_standard_tools(bundle: Bundle) -> None:
    if shutil.which("sha256sum") is None:
        pytest.skip("sha256sum not installed")
    root = bundle().path
    done = subprocess.run(["sha256sum", "--quiet", "-c", "SHA256SUMS"], cwd=root,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dkim_results_for_client_mail_only_and_when_checked(bundle: Bundle) -> None:
    case = make_case()
    messages = thread(case)
    tampered = messages[2].raw.replace(b"Nous payons vendredi.", b"Nous ne payons pas.")
    unsigned = mail("Jean Éclair <compta@eclair.example>", "compta@dupont.example",
                    "Re: Facture F-2026-014", "<plain@eclair.example>",
                    datetime(2026, 4, 8, 8, 0, tzinfo=PARIS), "Sans signature.",
                    reply_to="<rem-F-2026-014@dupont.example>")
    recorded = {"result": "pass", "checked_at": "2026-04-07T14:12:07+02:00",
                "signatures": [{"d": "eclair.example", "s": "sel", "result": "pass"}]}
    messages += [ThreadMessage("INBOX", 8, tampered), ThreadMessage("INBOX", 9, unsigned)]
    other = dataclasses.replace(case, number="F-2026-099")
    root = bundle(other, messages=messages,
                  dkim_results={"<plain@eclair.example>": recorded}).path
    rows = {r["file"].split("_")[-1]: r
            for r in json.loads((root / "dkim.json").read_text())["messages"]}
    assert set(rows) == {"uid7.eml", "uid8.eml", "uid9.eml"}  # never the firm's own
    assert rows["uid7.eml"]["result"] == "pass"
    assert rows["uid7.eml"]["checked"] == "at-bundle-time"
    assert rows["uid7.eml"]["signatures"][0]["d"] == "eclair.example"
    assert rows["uid7.eml"]["authentication_results"] == [
        "mx.dupont.example; dkim=pass header.d=eclair.example"]
    assert rows["uid8.eml"]["result"] == "fail"
    assert "body hash" in rows["uid8.eml"]["signatures"][0]["detail"]
    assert rows["uid9.eml"]["checked"] == "on-arrival"  # as recorded, not recomputed
    assert rows["uid9.eml"]["checked_at"] == "2026-04-07T14:12:07+02:00"


@pytest.mark.parametrize(
    ("raw", "dns", "expected"),
    [
        (b"From: a@b.example\r\nSubject: x\r\n\r\nhi\r\n", fake_dns, "none"),
        (None, fake_dns, "pass"),
        (None, lambda name, timeout=5: None, "temperror"),  # key withdrawn since
    ],
)
def test_dkim_check(raw: bytes | None, dns: Any, expected: str) -> None:
    if raw is None:
        raw = thread(make_case())[2].raw
    assert dkim_check(raw, NOW, dns)["result"] == expected


def test_timeline_reads_as_a_chronology_and_escapes_mail(bundle: Bundle) -> None:
    case = make_case()
    messages = thread(case, client_body="<script>alert('x')</script> Nous payons vendredi.")
    evil = mail("x <compta@eclair.example>", "compta@dupont.example",
                "<img src=x onerror=alert(1)>", "<evil@eclair.example>",
                datetime(2026, 4, 9, 8, 0, tzinfo=PARIS), "hello",
                reply_to="<rem-F-2026-014@dupont.example>",
                attachments=(("<b>bad</b>.pdf", "application/pdf", PDF),))
    messages.append(ThreadMessage("INBOX", 9, evil))
    page = (bundle(case, messages=messages).path / "timeline.html").read_text()
    assert "<script" not in page and "<img" not in page and "<b>bad" not in page
    assert "&lt;script&gt;" in page and "&lt;img src=x" in page
    for mention in ("Chronologie de la facture n° F-2026-014", "Boulangerie Éclair SAS",
                    "2 mars 2026 à 09:00", "6 avril 2026 à 09:00", "7 avril 2026 à 14:12",
                    "Entreprise → client", "Client → entreprise", "F-2026-014.pdf",
                    "queued as 4F2A9C01", "Relance remise au serveur d&#x27;envoi",
                    "DKIM", "Reçu par le serveur", "1\u202f234,50 EUR"):
        assert mention in page, mention
    # chronological: the invoice, then the reminder, then the client's reply
    assert page.index("2 mars 2026 à 09:00") < page.index("6 avril 2026 à 09:00") \
        < page.index("7 avril 2026 à 14:12")


# -- names from mail never escape ------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("facture.pdf", "facture.pdf"),
        ("../../../etc/passwd", "passwd"),
        ("..\\..\\windows\\evil.pdf", "evil.pdf"),
        ("..", "file"),
        (".hidden.pdf", "hidden.pdf"),
        ("a\x00b\r\n.pdf", "a_b_.pdf"),
        ("Facture n°12 (copie).pdf", "Facture_n_12_copie_.pdf"),
        ("échéance.pdf", "échéance.pdf"),
        ("", "file"),
        ("x" * 300 + ".pdf", "x" * 76 + ".pdf"),
    ],
)
def test_safe_name(name: str, expected: str) -> None:
    assert safe_name(name) == expected


def test_attachment_and_number_names_stay_inside_the_bundle(
    bundle: Bundle, tmp_path: Path
) -> None:
    case = make_case("../../F/2026")
    written = write_bundle(
        tmp_path / "evidence", case, thread(case), journal(case),
        [Attachment("../../../../tmp/evil.pdf", "application/pdf", PDF),
         Attachment("../../../../tmp/evil.pdf", "application/pdf", PDF + b"2")],
        {}, NOW, firm=FIRM, dnsfunc=fake_dns,
        documents=[Attachment("/etc/cron.d/x", "text/plain", b"x")],
    )
    evidence_dir = (tmp_path / "evidence").resolve()
    assert written.path.parent.resolve() == evidence_dir
    assert written.path.name.startswith("F_2026-")  # cleaned, with a hash of the number
    files = sorted(p.relative_to(written.path).as_posix()
                   for p in written.path.rglob("*") if p.is_file())
    assert "invoice/evil.pdf" in files and "invoice/evil-2.pdf" in files
    assert "documents/x" in files
    assert not (tmp_path / "tmp").exists()
    assert verify(tmp_path / "evidence") == []


# -- every fault named -----------------------------------------------------------------


def test_altered_byte_names_the_file(bundle: Bundle, tmp_path: Path) -> None:
    root = bundle().path
    eml = sorted((root / "messages").iterdir())[2]
    data = bytearray(eml.read_bytes())
    data[-10] ^= 0x01
    eml.write_bytes(bytes(data))
    problems = verify(tmp_path / "evidence")
    assert len(problems) == 1
    assert problems[0].path == f"F-2026-014/messages/{eml.name}"
    assert "altered" in problems[0].message


def test_deleted_file_is_named(bundle: Bundle, tmp_path: Path) -> None:
    root = bundle().path
    (root / "invoice" / "F-2026-014.pdf").unlink()
    assert messages_of(verify(tmp_path / "evidence")) == [
        "F-2026-014/invoice/F-2026-014.pdf: deleted: listed in the manifest, not in the bundle"]


def test_extra_file_is_named(bundle: Bundle, tmp_path: Path) -> None:
    root = bundle().path
    (root / "messages" / "99_late_addition.eml").write_bytes(b"Subject: forged\r\n\r\n")
    assert messages_of(verify(tmp_path / "evidence")) == [
        "F-2026-014/messages/99_late_addition.eml: extra file, not in the manifest"]


def test_edited_manifest_is_named(bundle: Bundle, tmp_path: Path) -> None:
    root = bundle().path
    manifest = root / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"1234.50"', '"12345.00"', 1))
    problems = verify(tmp_path / "evidence")
    assert [p.path for p in problems] == ["F-2026-014/manifest.json"]
    assert "edited" in problems[0].message and "ledger.jsonl line 1" in problems[0].message


def test_file_altered_and_manifest_rewritten_to_match_is_still_caught(
    bundle: Bundle, tmp_path: Path
) -> None:
    root = bundle().path
    pdf = root / "invoice" / "F-2026-014.pdf"
    pdf.write_bytes(PDF + b"forged")
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["files"]["invoice/F-2026-014.pdf"]["sha256"] = evidence._sha256(PDF + b"forged")
    manifest["files"]["invoice/F-2026-014.pdf"]["bytes"] = len(PDF) + 6
    (root / "manifest.json").write_text(json.dumps(manifest))
    problems = verify(tmp_path / "evidence")
    assert [p.path for p in problems] == ["F-2026-014/manifest.json"]


def test_swapped_bundles_are_named(bundle: Bundle, tmp_path: Path) -> None:
    a = bundle(make_case("F-1")).path
    b = bundle(make_case("F-2"), now=NOW + timedelta(hours=1)).path
    a.rename(tmp_path / "evidence" / "swap")
    b.rename(a)
    (tmp_path / "evidence" / "swap").rename(b)
    assert messages_of(verify(tmp_path / "evidence")) == [
        "F-1: holds the bundle of ledger.jsonl line 2 (F-2), not its own (line 1): "
        "bundles swapped or renamed",
        "F-2: holds the bundle of ledger.jsonl line 1 (F-1), not its own (line 2): "
        "bundles swapped or renamed",
    ]


def test_reordered_ledger_lines_are_named(bundle: Bundle, tmp_path: Path) -> None:
    for index, number in enumerate(("F-1", "F-2", "F-3")):
        bundle(make_case(number), now=NOW + timedelta(hours=index))
    ledger = tmp_path / "evidence" / LEDGER_FILE
    lines = ledger.read_text().splitlines()
    ledger.write_text("\n".join([lines[0], lines[2], lines[1]]) + "\n")
    problems = verify(tmp_path / "evidence")
    assert {(p.path, p.line) for p in problems} == {(LEDGER_FILE, 2), (LEDGER_FILE, 3)}
    assert any("holds entry #3" in p.message for p in problems)
    assert any("chain broken" in p.message for p in problems)


def test_removed_ledger_line_is_named(bundle: Bundle, tmp_path: Path) -> None:
    for index, number in enumerate(("F-1", "F-2", "F-3")):
        bundle(make_case(number), now=NOW + timedelta(hours=index))
    ledger = tmp_path / "evidence" / LEDGER_FILE
    lines = ledger.read_text().splitlines()
    ledger.write_text("\n".join([lines[0], lines[2]]) + "\n")
    shutil.rmtree(tmp_path / "evidence" / "F-2")
    problems = verify(tmp_path / "evidence")
    assert {(p.path, p.line) for p in problems} == {(LEDGER_FILE, 2)}


def test_edited_ledger_line_is_named(bundle: Bundle, tmp_path: Path) -> None:
    bundle(make_case("F-1"))
    bundle(make_case("F-2"), now=NOW + timedelta(hours=1))
    ledger = tmp_path / "evidence" / LEDGER_FILE
    lines = ledger.read_text().splitlines()
    entry = json.loads(lines[0])
    entry["at"] = "2026-01-01T00:00:00+01:00"  # backdated
    ledger.write_text(json.dumps(entry) + "\n" + lines[1] + "\n")
    assert messages_of(verify(tmp_path / "evidence")) == [
        "ledger.jsonl:1: line edited: its hash does not match its content"]
    entry["hash"] = evidence.line_hash(entry)  # rehashed too: the next line shows it
    ledger.write_text(json.dumps(entry) + "\n" + lines[1] + "\n")
    problems = verify(tmp_path / "evidence")
    assert [(p.path, p.line) for p in problems] == [(LEDGER_FILE, 2)]
    assert "chain broken" in problems[0].message


def test_missing_and_unledgered_bundles_are_named(bundle: Bundle, tmp_path: Path) -> None:
    root = bundle().path
    root.rename(root.with_name("renamed"))
    assert messages_of(verify(tmp_path / "evidence")) == [
        "F-2026-014: bundle missing (listed on ledger.jsonl line 1)",
        "renamed: bundle is not in the ledger (added or renamed by hand, or written when "
        "the ledger append failed)",
    ]


def test_deleted_ledger_is_named(bundle: Bundle, tmp_path: Path) -> None:
    bundle()
    (tmp_path / "evidence" / LEDGER_FILE).unlink()
    assert [p.path for p in verify(tmp_path / "evidence")] == [LEDGER_FILE, "F-2026-014"]


def test_problem_reads_as_file_line_message() -> None:
    assert str(Problem("ledger.jsonl", "chain broken", 3)) == "ledger.jsonl:3: chain broken"
    assert str(Problem("F-1/a.eml", "altered")) == "F-1/a.eml: altered"


def test_empty_evidence_dir_verifies(tmp_path: Path) -> None:
    assert verify(tmp_path / "nothing-yet") == []


# -- writing again ---------------------------------------------------------------------


def test_sealing_the_same_evidence_twice_gives_the_same_bundle(
    bundle: Bundle, tmp_path: Path
) -> None:
    first = bundle()
    again = bundle(now=NOW + timedelta(days=1))
    assert again.path == first.path and not again.new
    assert len((tmp_path / "evidence" / LEDGER_FILE).read_text().splitlines()) == 1


def test_new_evidence_makes_a_new_bundle_and_keeps_the_old(
    bundle: Bundle, tmp_path: Path
) -> None:
    case = make_case()
    first = bundle(case)
    later = thread(case)
    later.append(ThreadMessage("INBOX", 12, mail(
        "compta@eclair.example", "compta@dupont.example", "Re: Facture F-2026-014",
        "<late@eclair.example>", datetime(2026, 5, 21, 9, 0, tzinfo=PARIS), "Payé ce jour.",
        reply_to="<rem-F-2026-014@dupont.example>")))
    second = bundle(case, messages=later, now=NOW + timedelta(days=1))
    assert second.new and second.path.name == "F-2026-014.v2"
    assert second.ledger_line == 2 and first.path.is_dir()
    assert evidence.latest_bundle(tmp_path / "evidence", "F-2026-014") == second.path
    assert verify(tmp_path / "evidence") == []


def test_a_damaged_ledger_is_not_appended_to(bundle: Bundle, tmp_path: Path) -> None:
    bundle(make_case("F-1"))
    with (tmp_path / "evidence" / LEDGER_FILE).open("a") as ledger:
        ledger.write('{"seq": 2, "bund')
    with pytest.raises(EvidenceError, match=re.escape("ledger.jsonl:2")):
        bundle(make_case("F-2"))


# -- export ----------------------------------------------------------------------------


def test_export_copies_and_zips_the_newest_bundle(bundle: Bundle, tmp_path: Path) -> None:
    root = bundle().path
    archive = export(tmp_path / "evidence", "F-2026-014", tmp_path / "out")
    assert archive == tmp_path / "out" / "F-2026-014.zip"
    copied = tmp_path / "out" / "F-2026-014"
    assert sorted(p.relative_to(copied) for p in copied.rglob("*")) == \
        sorted(p.relative_to(root) for p in root.rglob("*"))
    with zipfile.ZipFile(archive) as zipped:
        names = zipped.namelist()
        assert "ledger.jsonl" in names
        assert zipped.read("F-2026-014/manifest.json") == (root / "manifest.json").read_bytes()
        assert zipped.getinfo("F-2026-014/manifest.json").date_time == (2026, 5, 20, 10, 0, 0)
    with pytest.raises(EvidenceError, match="exists"):
        export(tmp_path / "evidence", "F-2026-014", tmp_path / "out")


def test_export_refuses_a_bundle_that_does_not_verify(bundle: Bundle, tmp_path: Path) -> None:
    root = bundle().path
    (root / "journal.jsonl").write_text("{}\n")
    with pytest.raises(EvidenceError, match=re.escape("F-2026-014/journal.jsonl: altered")):
        export(tmp_path / "evidence", "F-2026-014", tmp_path / "out")
    assert not (tmp_path / "out" / "F-2026-014.zip").exists()


def test_export_of_an_unknown_case(tmp_path: Path) -> None:
    with pytest.raises(EvidenceError, match="no evidence bundle for F-404"):
        export(tmp_path / "evidence", "F-404", tmp_path / "out")


def test_export_refuses_a_ledger_pointing_outside(bundle: Bundle, tmp_path: Path) -> None:
    bundle()
    ledger = tmp_path / "evidence" / LEDGER_FILE
    entry = json.loads(ledger.read_text())
    entry["bundle"] = "../../etc"
    entry["hash"] = evidence.line_hash(entry)
    ledger.write_text(json.dumps(entry) + "\n")
    with pytest.raises(EvidenceError, match="unsafe bundle path"):
        export(tmp_path / "evidence", "F-2026-014", tmp_path / "out")
    assert any("unsafe" in p.message for p in verify(tmp_path / "evidence"))


def test_a_new_bundle_carries_the_papers_of_the_last(bundle: Bundle, tmp_path: Path) -> None:
    case = make_case()
    letter = Attachment("mise-en-demeure-F-2026-014.pdf", "application/pdf", PDF + b"letter")
    first = bundle(case, documents=[letter])
    assert bundle(case, now=NOW + timedelta(hours=1)).path == first.path  # nothing new
    lrar = dataclasses.replace(case, reason="formal notice sent by registered post 2026-05-21")
    second = bundle(lrar, messages=[*thread(case), ThreadMessage("INBOX", 30, mail(
        "compta@eclair.example", "compta@dupont.example", "Re: Facture F-2026-014",
        "<late@eclair.example>", datetime(2026, 5, 22, 9, 0, tzinfo=PARIS), "Reçu.",
        reply_to="<rem-F-2026-014@dupont.example>"))], now=NOW + timedelta(days=2))
    assert second.new
    carried = second.path / "documents" / "mise-en-demeure-F-2026-014.pdf"
    assert carried.read_bytes() == letter.data
    (first.path / "documents" / "mise-en-demeure-F-2026-014.pdf").write_bytes(b"forged")
    (second.path / "documents" / "mise-en-demeure-F-2026-014.pdf").write_bytes(b"forged")
    with pytest.raises(EvidenceError, match="does not match its manifest"):
        bundle(lrar, messages=thread(case)[:2], now=NOW + timedelta(days=3))


# -- which cases a pass seals ----------------------------------------------------------


def test_cases_to_seal_are_closed_cases_with_news_since_their_last_seal() -> None:
    def at(day: int) -> str:
        return f"2026-05-{day:02d}T09:00:00+02:00"

    cases = {
        "paid-unsealed": dataclasses.replace(make_case("paid-unsealed"), state=CaseState.PAID),
        "paid-sealed": dataclasses.replace(make_case("paid-sealed"), state=CaseState.PAID),
        "lrar-after-seal": dataclasses.replace(make_case("lrar-after-seal"),
                                               state=CaseState.FORMAL_NOTICE),
        "adopted-done": dataclasses.replace(make_case("adopted-done"), state=CaseState.DONE,
                                            steps=()),
        "still-chasing": dataclasses.replace(make_case("still-chasing"),
                                             state=CaseState.CHASING),
    }
    entries = [
        {"at": at(1), "case": n, "event": "invoice-found"} for n in cases
    ] + [
        {"at": at(2), "case": "paid-unsealed", "event": "owner-paid"},
        {"at": at(2), "case": "paid-sealed", "event": "owner-paid"},
        {"at": at(3), "case": "paid-sealed", "event": "thread-archived"},
        {"at": at(3), "case": "paid-sealed", "event": "evidence-written"},
        {"at": at(4), "case": "paid-sealed", "event": "owner-notified"},
        {"at": at(2), "case": "lrar-after-seal", "event": "handed-over"},
        {"at": at(2), "case": "lrar-after-seal", "event": "evidence-written"},
        {"at": at(5), "case": "lrar-after-seal", "event": "owner-sent-lrar"},
        {"at": at(2), "case": "still-chasing", "event": "reminder-sent"},
        {"at": at(2), "case": "unknown-case", "event": "owner-paid"},
        # A client writes in the thread of an invoice adopted as history: not sealed.
        {"at": at(6), "case": "adopted-done", "event": "client-replied"},
    ]
    assert archive.cases_to_seal(cases, entries) == ["paid-unsealed", "lrar-after-seal"]
