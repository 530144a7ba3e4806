"""Building reminders and owner notices: ids, threading headers, safety, attachments."""

from __future__ import annotations

import email
import email.policy
import hashlib
import io
import re
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from email.generator import BytesGenerator
from email.message import EmailMessage

import pytest

from relance.core.compose import (
    NoticeVars,
    Rendered,
    build_owner_notice,
    build_reminder,
    notice_message_id,
    notice_vars,
    reminder_message_id,
    reply_excerpt,
    template_context,
    thread_subject,
)
from relance.model import (
    Attachment,
    Case,
    Channel,
    Decision,
    Firm,
    InvoiceFacts,
    Mail,
    StepRecord,
)

PARIS = timezone(timedelta(hours=1))
NOW = datetime(2026, 12, 16, 9, 0, tzinfo=PARIS)
OUTLOOK_ID = "<DB9PR08MB1234567890ABCDEF1234567890ABCDEF@DB9PR08MB1234.eurprd08.prod.outlook.com>"
INJECTION = "Facture 42\r\nBcc: evil@x.example"

FIRM = Firm(
    name="Atelier Dupont SARL",
    sender="Atelier Dupont - Comptabilité <compta@example.fr>",
    addresses=("compta@example.fr",),
    owners=("marie@example.fr", "paul@example.fr"),
    iban="FR76 3000 6000 0112 3456 7890 189",
    payment_link="https://pay.example.fr/{number}",
)
CASE = Case(
    number="F-2026-0042",
    client_addrs=("compta@client.example",),
    subject="Facture F-2026-0042",
    root_message_id="<invoice-0042@example.fr>",
    root_references=("<quote-0042@example.fr>",),
    client_name="Boulangerie Martin",
    amount=Decimal("1234.56"),
    issue_date=date(2026, 10, 15),
    due_date=date(2026, 11, 14),
)
DECISION = Decision(
    number="F-2026-0042",
    step_index=2,
    step_name="reminder-2",
    channel=Channel.EMAIL,
    template="reminder-2",
    tone="neutral",
    planned_at=NOW,
)
RENDERED = Rendered(subject="Deuxième rappel : facture F-2026-0042", text="Bonjour,\n\nMerci.\n")
PDF = Attachment("F-2026-0042.pdf", "application/pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\nfake\n")


def reminder(**changes: object) -> EmailMessage:
    args: dict[str, object] = {
        "case": CASE,
        "decision": DECISION,
        "firm": FIRM,
        "rendered": RENDERED,
        "now": NOW,
        "message_id": reminder_message_id(CASE, 2, FIRM.domain),
    }
    args.update(changes)
    return build_reminder(**args)  # type: ignore[arg-type]


def reparse(msg: EmailMessage, policy: email.policy.EmailPolicy | None = None) -> EmailMessage:
    """What the other end reads: the message flattened, then parsed again."""
    buffer = io.BytesIO()
    BytesGenerator(buffer, policy=policy or msg.policy).flatten(msg)
    parsed = email.message_from_bytes(buffer.getvalue(), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def body(msg: EmailMessage, subtype: str) -> str:
    part = msg.get_body((subtype,))
    assert part is not None
    return str(part.get_content()).replace("\r\n", "\n")


# Message-IDs


def test_reminder_id_is_the_same_for_the_same_case_and_step() -> None:
    first = reminder_message_id(CASE, 2, "example.fr")
    assert first == reminder_message_id(CASE, 2, "example.fr")
    digest = hashlib.sha256(b"F-2026-0042<invoice-0042@example.fr>").hexdigest()[:16]
    assert first == f"<relance.{digest}.2@example.fr>"


def test_reminder_id_differs_by_step_and_by_case() -> None:
    other_case = Case(**{**CASE.__dict__, "root_message_id": "<invoice-0043@example.fr>"})
    ids = {
        reminder_message_id(CASE, 1, "example.fr"),
        reminder_message_id(CASE, 2, "example.fr"),
        reminder_message_id(other_case, 2, "example.fr"),
    }
    assert len(ids) == 3


def test_reminder_id_domain_cannot_break_the_header() -> None:
    mid = reminder_message_id(CASE, 1, "example.fr>\r\nBcc: evil@x")
    assert re.fullmatch(r"<relance\.[0-9a-f]{16}\.1@[A-Za-z0-9.-]+>", mid)


def test_notice_id_is_deterministic_and_tells_kinds_apart() -> None:
    a = notice_message_id("F-1", "reply", NOW, "example.fr")
    assert a == notice_message_id("F-1", "reply", NOW, "example.fr")
    assert a.startswith("<relance.notice.reply.") and a.endswith("@example.fr>")
    others = {
        notice_message_id("F-1", "send-unknown", NOW, "example.fr"),
        notice_message_id("F-2", "reply", NOW, "example.fr"),
        notice_message_id("F-1", "reply", NOW + timedelta(seconds=1), "example.fr"),
        notice_message_id(None, "reply", NOW, "example.fr"),
    }
    assert a not in others and len(others) == 4


# Subjects


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Facture F-2026-0042", "Re: Facture F-2026-0042"),
        ("Re: Facture 42", "Re: Facture 42"),
        ("RE: Facture 42", "RE: Facture 42"),
        ("re : Facture 42", "re : Facture 42"),
        ("Re[2]: Facture 42", "Re[2]: Facture 42"),
        ("TR: Facture 42", "Re: TR: Facture 42"),
        ("Fwd: Facture 42", "Re: Fwd: Facture 42"),
        ("Réf: Facture 42", "Re: Réf: Facture 42"),
        ("Relance facture 42", "Re: Relance facture 42"),
        (INJECTION, "Re: Facture 42 Bcc: evil@x.example"),
    ],
)
def test_thread_subject(subject: str, expected: str) -> None:
    assert thread_subject(subject) == expected


# Template context


def test_context_counts_days_late_from_the_due_date_in_the_firms_day() -> None:
    ctx = template_context(CASE, DECISION, FIRM, NOW, ())
    assert ctx["invoice"].days_late == 32  # type: ignore[attr-defined]
    before_due = template_context(CASE, DECISION, FIRM, datetime(2026, 11, 9, tzinfo=PARIS), ())
    assert before_due["invoice"].days_late == 0  # type: ignore[attr-defined]


def test_context_fills_the_payment_link_with_the_number() -> None:
    case = Case(**{**CASE.__dict__, "number": "F 2026/42"})
    decision = Decision(**{**DECISION.__dict__, "number": "F 2026/42"})
    ctx = template_context(case, decision, FIRM, NOW, ())
    assert ctx["firm"].payment_link == "https://pay.example.fr/F%202026%2F42"  # type: ignore[attr-defined]
    no_link = Firm(**{**FIRM.__dict__, "payment_link": ""})
    assert template_context(CASE, DECISION, no_link, NOW, ())["firm"].payment_link == ""  # type: ignore[attr-defined]


def test_context_names_only_reminders_really_sent_before_this_step() -> None:
    late_evening_utc = datetime(2026, 11, 19, 23, 30, tzinfo=UTC)  # 20 Nov in Paris
    previous = (
        StepRecord(1, "reminder-1", late_evening_utc, "<a@x>", "sent"),
        StepRecord(2, "reminder-2", NOW, "<b@x>", "unknown"),
        StepRecord(0, "courtesy", datetime(2026, 11, 9, 9, tzinfo=PARIS), "<c@x>", "dry-run"),
    )
    ctx = template_context(CASE, DECISION, FIRM, NOW, previous)
    assert ctx["previous_reminders"] == (date(2026, 11, 20),)


def test_context_carries_the_legal_amounts_and_the_step() -> None:
    ctx = template_context(CASE, DECISION, FIRM, NOW, ())
    assert ctx["indemnity"] == Decimal("40.00")
    assert ctx["penalty_rate_text"] == "taux BCE majoré de 10 points"
    assert ctx["tone"] == "neutral"
    assert ctx["step"].index == 2 and ctx["step"].name == "reminder-2"  # type: ignore[attr-defined]
    english = Case(**{**CASE.__dict__, "language": "en"})
    assert "ECB" in str(template_context(english, DECISION, FIRM, NOW, ())["penalty_rate_text"])
    custom = template_context(CASE, DECISION, FIRM, NOW, (), penalty_rate_text="12 %")
    assert custom["penalty_rate_text"] == "12 %"


def test_context_balance_subtracts_what_was_paid() -> None:
    case = Case(**{**CASE.__dict__, "paid": Decimal("234.56")})
    invoice = template_context(case, DECISION, FIRM, NOW, ())["invoice"]
    assert invoice.balance == Decimal("1000.00")  # type: ignore[attr-defined]


# Reminders


def test_reminder_replies_to_the_invoice_mail() -> None:
    msg = reparse(reminder())
    assert msg["In-Reply-To"] == "<invoice-0042@example.fr>"
    assert msg["References"].split() == ["<quote-0042@example.fr>", "<invoice-0042@example.fr>"]
    assert msg["Subject"] == "Re: Facture F-2026-0042"
    assert msg["From"] == "Atelier Dupont - Comptabilité <compta@example.fr>"
    assert msg["To"] == "compta@client.example"
    assert msg["Message-ID"] == reminder_message_id(CASE, 2, "example.fr")
    assert email.utils.parsedate_to_datetime(msg["Date"]) == NOW


def test_reminder_carries_relance_headers_and_no_auto_submitted() -> None:
    msg = reparse(reminder())
    assert msg["X-Relance-Invoice"] == "F-2026-0042"
    assert msg["X-Relance-Step"] == "2"
    assert "Auto-Submitted" not in msg


def test_reminder_adds_extra_contacts_once() -> None:
    msg = reparse(reminder(extra_to=("dg@client.example", "COMPTA@client.example")))
    assert msg["To"] == "compta@client.example, dg@client.example"


def test_reminder_uses_the_template_subject_when_the_thread_has_none() -> None:
    case = Case(**{**CASE.__dict__, "subject": ""})
    assert reparse(reminder(case=case))["Subject"] == RENDERED.subject


def test_long_message_ids_stay_whole_whatever_policy_flattens_them() -> None:
    case = Case(
        **{**CASE.__dict__, "root_message_id": OUTLOOK_ID, "root_references": (OUTLOOK_ID,)}
    )
    msg = reminder(case=case)
    for policy in (None, email.policy.SMTP):  # aiosmtplib flattens with email.policy.SMTP
        parsed = reparse(msg, policy)
        assert parsed["In-Reply-To"] == OUTLOOK_ID
        assert parsed["References"] == OUTLOOK_ID
    head = msg.as_bytes().split(b"\r\n\r\n", 1)[0].decode()
    assert f"\r\nIn-Reply-To: {OUTLOOK_ID}\r\n" in head
    assert f"\r\nReferences: {OUTLOOK_ID}\r\n" in head


def test_long_message_ids_survive_aiosmtplib() -> None:
    aiosmtplib_email = pytest.importorskip("aiosmtplib.email")
    case = Case(**{**CASE.__dict__, "root_message_id": OUTLOOK_ID})
    raw = aiosmtplib_email.flatten_message(reminder(case=case))
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["In-Reply-To"] == OUTLOOK_ID


def test_many_references_fold_between_ids() -> None:
    ids = tuple(f"<ref-{i:03d}-{'x' * 30}@example.fr>" for i in range(40))
    case = Case(**{**CASE.__dict__, "root_references": ids})
    raw = reminder(case=case).as_bytes()
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert all(len(line) <= 78 for line in head.split(b"\r\n") if b"@" in line)
    assert reparse(reminder(case=case))["References"].split() == [*ids, CASE.root_message_id]


@pytest.mark.parametrize("field", ["subject", "client_name", "number"])
def test_mail_content_cannot_add_a_header_to_a_reminder(field: str) -> None:
    case = Case(**{**CASE.__dict__, field: INJECTION})
    decision = Decision(**{**DECISION.__dict__, "number": case.number})
    rendered = Rendered(subject=INJECTION, text=f"Bonjour {INJECTION}\n")
    msg = reparse(reminder(case=case, decision=decision, rendered=rendered))
    assert "Bcc" not in msg
    head = msg.as_string().split("\n\n", 1)[0]
    assert not re.search(r"^Bcc:", head, re.MULTILINE | re.IGNORECASE)


def test_a_malformed_address_is_an_error_not_a_new_recipient() -> None:
    case = Case(**{**CASE.__dict__, "client_addrs": ("a@client.example\r\nBcc: evil@x.example",)})
    with pytest.raises(ValueError, match="not a mail address"):
        reminder(case=case)


def test_reminder_attaches_the_invoice_again() -> None:
    msg = reparse(reminder(attachments=(PDF,)))
    parts = list(msg.iter_attachments())
    assert [p.get_filename() for p in parts] == ["F-2026-0042.pdf"]
    assert parts[0].get_content_type() == "application/pdf"
    assert parts[0].get_content() == PDF.data
    assert body(msg, "plain") == RENDERED.text


def test_third_reminder_attaches_earlier_reminders_as_they_were_sent() -> None:
    first = reminder(
        decision=Decision(**{**DECISION.__dict__, "step_index": 1}),
        message_id=reminder_message_id(CASE, 1, "example.fr"),
        case=Case(**{**CASE.__dict__, "root_message_id": OUTLOOK_ID}),
    ).as_bytes()
    earlier = Attachment("relance-1.eml", "message/rfc822", first)
    msg = reminder(attachments=(PDF, earlier))
    raw = msg.as_bytes()
    assert first in raw  # byte for byte, long ids unencoded
    parsed = reparse(msg)
    kinds = [p.get_content_type() for p in parsed.iter_attachments()]
    assert kinds == ["application/pdf", "message/rfc822"]
    inner = list(parsed.iter_attachments())[1].get_content()
    assert inner["Message-ID"] == reminder_message_id(CASE, 1, "example.fr")
    assert inner["In-Reply-To"] == OUTLOOK_ID


def test_html_alternative_when_the_template_has_one() -> None:
    rendered = Rendered(subject="s", text="Bonjour\n", html="<p>Bonjour</p>\n")
    msg = reparse(reminder(rendered=rendered, attachments=(PDF,)))
    assert body(msg, "html") == "<p>Bonjour</p>\n"
    assert body(msg, "plain") == "Bonjour\n"
    assert len(list(msg.iter_attachments())) == 1


def test_a_letter_step_is_never_emailed_to_the_client() -> None:
    letter = Decision(**{**DECISION.__dict__, "channel": Channel.LETTER})
    with pytest.raises(ValueError, match="letter"):
        reminder(decision=letter)


@pytest.mark.parametrize(
    "changes", [{"amount": None}, {"paid": Decimal("1234.56")}], ids=["no-amount", "paid"]
)
def test_nothing_owed_means_no_reminder(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="nothing to ask"):
        reminder(case=Case(**{**CASE.__dict__, **changes}))


# Owner notices


def notice(**changes: object) -> EmailMessage:
    args: dict[str, object] = {
        "firm": FIRM,
        "subject": "[relance] Boulangerie Martin a répondu : facture F-2026-0042",
        "text": "Le client a répondu.\n",
        "now": NOW,
        "message_id": notice_message_id(CASE.number, "reply", NOW, FIRM.domain),
        "case": CASE,
        "kind": "reply",
    }
    args.update(changes)
    return build_owner_notice(**args)  # type: ignore[arg-type]


def test_notice_goes_to_the_owners_marked_auto_generated() -> None:
    msg = reparse(notice())
    assert msg["To"] == "marie@example.fr, paul@example.fr"
    assert msg["From"] == FIRM.sender
    assert msg["Auto-Submitted"] == "auto-generated"
    assert msg["X-Relance-Notice"] == "reply"
    assert msg["X-Relance-Invoice"] == "F-2026-0042"
    assert "In-Reply-To" not in msg


def test_notices_of_a_case_are_threaded() -> None:
    first = notice_message_id(CASE.number, "reply", NOW - timedelta(days=3), FIRM.domain)
    msg = reparse(notice(in_reply_to=first))
    assert msg["In-Reply-To"] == first
    assert msg["References"] == first


def test_notice_without_case_has_no_invoice_header() -> None:
    msg = reparse(notice(case=None, kind="send-unknown"))
    assert "X-Relance-Invoice" not in msg
    assert msg["X-Relance-Notice"] == "send-unknown"


def test_notice_without_owners_goes_to_the_firms_own_address() -> None:
    msg = reparse(notice(firm=Firm(**{**FIRM.__dict__, "owners": ()})))
    assert msg["To"] == "compta@example.fr"


def test_mail_content_cannot_add_a_header_to_a_notice() -> None:
    msg = reparse(notice(subject=f"[relance] {INJECTION} a répondu", kind="reply\r\nBcc: e@x"))
    assert "Bcc" not in msg
    assert msg["Subject"] == "[relance] Facture 42 Bcc: evil@x.example a répondu"


def test_notice_carries_the_letter() -> None:
    letter = Attachment("mise-en-demeure-F-2026-0042.txt", "text/plain", b"Madame,\n")
    msg = reparse(notice(kind="formal-notice", attachments=(letter,)))
    assert [p.get_filename() for p in msg.iter_attachments()] == [letter.filename]


def test_notice_vars_default_to_empty() -> None:
    vars_ = NoticeVars(kind="needs-facts", missing=("amount",))
    ctx = template_context(CASE, None, FIRM, NOW, (), notice=vars_)
    assert ctx["notice"] is vars_ and ctx["step"] is None and ctx["tone"] == ""
    assert template_context(CASE, DECISION, FIRM, NOW, ())["notice"] == NoticeVars(kind="")


def test_notice_vars_from_a_client_reply() -> None:
    mail = Mail(
        message_id="<reply@client.example>",
        subject="Re: Facture F-2026-0042",
        from_addr="compta@client.example",
        from_name="Paul Martin",
        date=NOW,
        text="Bonjour,\n\nLe virement part vendredi.\n\nLe 14/12/2026, Atelier Dupont a écrit :\n"
        "> Bonjour,\n> ancienne relance\n",
    )
    vars_ = notice_vars("reply", mail=mail)
    assert vars_.reply_from == "Paul Martin <compta@client.example>"
    assert vars_.reply_date == NOW
    assert vars_.reply_excerpt == "Bonjour,\n\nLe virement part vendredi."


def test_notice_vars_from_facts_and_a_letter() -> None:
    facts = InvoiceFacts(number="F-1", missing=("amount",), disagreements=("due: a != b",))
    vars_ = notice_vars("needs-facts", facts=facts, missing=["amount", "due date"])
    assert vars_.missing == ("amount", "due date")
    assert vars_.disagreements == ("due: a != b",)
    letter = notice_vars("letter", letter=Rendered("Mise en demeure", "Madame,\n"), step_name="x")
    assert letter.document == "Madame,\n" and letter.step_name == "x"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Merci, c'est noté.\n", "Merci, c'est noté."),
        ("OK\nOn Mon, 14 Dec 2026, Atelier <a@b> wrote:\n> old\n", "OK"),
        ("OK\n-----Original Message-----\nFrom: a@b\n", "OK"),
        ("OK\n\nDe : Atelier Dupont <compta@example.fr>\nEnvoyé : lundi\n", "OK"),
        ("\n".join(f"ligne {i}" for i in range(30)), "\n".join(f"ligne {i}" for i in range(15))
         + "\n[…]"),
    ],
)  # fmt: skip
def test_reply_excerpt_keeps_the_new_part(text: str, expected: str) -> None:
    assert reply_excerpt(text) == expected
