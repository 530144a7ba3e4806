"""Listening against a real Dovecot: the owner's commands, forged ones, payments, bounces,
drop folders, credit notes. Each test is one firm's story, told in passes."""

from __future__ import annotations

import email
import email.policy
from datetime import date
from email.message import EmailMessage
from pathlib import Path

import pytest

from relance.model import CaseState
from tests.integration.helpers import (
    AUTHSERV_ID,
    BANK,
    Office,
    at,
    invoice_mail,
    message,
    open_office,
    submit,
    text_of,
)
from tests.mailservers import Dovecot, MailUser, SmtpServer

pytestmark = pytest.mark.dovecot

NUMBER = "F-2026-0042"
ISSUED, DUE = date(2026, 10, 20), date(2026, 11, 19)


@pytest.fixture
def office(dovecot: Dovecot, smtp_server: SmtpServer, make_user, tmp_path: Path) -> Office:
    return open_office(dovecot, smtp_server, make_user, tmp_path)


def _chased(office: Office, client: MailUser, number: str = NUMBER,
            amount: str = "1 234,56") -> EmailMessage:
    """An invoice in Sent, found, and its first reminder after the due date sent."""
    invoice = invoice_mail(number, sender=office.sender, client=client.address,
                           issued=ISSUED, due=DUE, amount=amount)
    office.append("Sent", invoice)
    office.on(date(2026, 11, 2), date(2026, 11, 24))
    assert office.case(number).last_step >= 1
    return invoice


def _reply_from(client: MailUser, office: Office, parent: EmailMessage, body: str,
                day: date) -> EmailMessage:
    return message(client.address, office.firm.address, f"Re: {parent['Subject']}", body,
                   at(day, 11), In_Reply_To=str(parent["Message-ID"]),
                   References=str(parent["Message-ID"]))


def test_owner_answers_a_notification_with_paid(office: Office, make_user) -> None:
    client = make_user("client")
    invoice = _chased(office, client)
    submit(office.smtp, _reply_from(client, office, invoice,
                                    "Bonjour, je vous règle vendredi.", date(2026, 11, 25)))
    office.on(date(2026, 11, 26))
    case = office.case(NUMBER)
    assert case.state is CaseState.PAUSED
    assert "promised to pay" in case.reason
    replied = next(e for e in office.journal(NUMBER) if e["event"] == "client-replied")
    assert isinstance(replied["dkim"], dict)  # checked on arrival, kept for the evidence
    assert replied["dkim"]["result"] in ("none", "unsigned")
    notice = office.notices()[-1]
    assert notice["X-Relance-Notice"] == "reply"
    assert notice["Auto-Submitted"] == "auto-generated"

    answer = message(office.owner.address, office.firm.address, f"Re: {notice['Subject']}",
                     "paid\n\nLe 26/11, relance a écrit :\n> ...", at(date(2026, 11, 27), 18),
                     In_Reply_To=str(notice["Message-ID"]),
                     References=str(notice["Message-ID"]))
    submit(office.smtp, answer)
    office.on(date(2026, 11, 30))
    assert office.case(NUMBER).state is CaseState.PAID
    confirmation = office.notices()[-1]
    assert confirmation["X-Relance-Notice"] == "confirm"
    assert confirmation["In-Reply-To"] == answer["Message-ID"]
    assert "ok paid" in text_of(confirmation)


def test_forged_command_is_refused_and_reported(office: Office, make_user) -> None:
    client = make_user("client")
    _chased(office, client)
    forged = message(office.owner.address, office.firm.address, f"stop {NUMBER}",
                     f"stop {NUMBER}\n", at(date(2026, 11, 25), 3))
    office.append("INBOX", forged, flags=())
    office.on(date(2026, 11, 26))
    assert office.case(NUMBER).state is CaseState.CHASING
    notice = office.notices()[-1]
    assert notice["X-Relance-Notice"] == "unverified"
    assert any(e["event"] == "command-unverified" for e in office.journal())


def test_command_with_aligned_dkim_is_honoured(office: Office, make_user) -> None:
    client = make_user("client")
    _chased(office, client)
    owner_domain = office.owner.address.rpartition("@")[2]
    signed = message(office.owner.address, office.firm.address, "pause",
                     f"pause 14d {NUMBER}\n", at(date(2026, 11, 25), 8))
    signed["Authentication-Results"] = (f"{AUTHSERV_ID}; dkim=pass header.d={owner_domain} "
                                        "header.s=mail")
    office.append("INBOX", signed, flags=())
    office.on(date(2026, 11, 26))
    case = office.case(NUMBER)
    assert case.state is CaseState.PAUSED and case.paused_until is not None


def test_bank_alert_pays_the_invoice_it_names(office: Office, make_user) -> None:
    client = make_user("client")
    _chased(office, client)
    alert = message(BANK, office.firm.address, "Virement reçu",
                    "Vous avez reçu un virement de 1 234,56 EUR de BOULANGERIE MARTIN\n"
                    f"Référence : {NUMBER}\n", at(date(2026, 11, 26), 7))
    alert["Authentication-Results"] = f"{AUTHSERV_ID}; dkim=pass header.d=banque.test"
    office.append("INBOX", alert, flags=())
    office.on(date(2026, 11, 26), date(2026, 12, 7))
    case = office.case(NUMBER)
    assert case.state is CaseState.PAID
    reminders = [m for m in office.received_by(client) if m["X-Relance-Step"]]
    assert all(m["Date"] and "07 Dec" not in m["Date"] for m in reminders)
    assert any(e["event"] == "payment-matched" for e in office.journal(NUMBER))


def test_unauthenticated_bank_alert_pays_nothing(office: Office, make_user) -> None:
    client = make_user("client")
    _chased(office, client)
    alert = message(BANK, office.firm.address, "Virement reçu",
                    f"Vous avez reçu un virement de 1 234,56 EUR. Référence : {NUMBER}\n",
                    at(date(2026, 11, 26), 7))
    office.append("INBOX", alert, flags=())
    office.on(date(2026, 11, 26))
    assert office.case(NUMBER).state is CaseState.CHASING
    assert office.notices()[-1]["X-Relance-Notice"] == "payment-unverified"


def test_bounce_flags_the_address_and_stops(office: Office, make_user) -> None:
    client = make_user("client")
    _chased(office, client)
    dsn = email.message_from_string(f"""\
From: Mail Delivery System <MAILER-DAEMON@mx.example.test>
To: {office.firm.address}
Subject: Undelivered Mail Returned to Sender
Date: Wed, 25 Nov 2026 09:01:00 +0100
Message-ID: <bounce-1@mx.example.test>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B"

--B
Content-Type: text/plain

This is the mail system. Your message could not be delivered.

--B
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.test

Final-Recipient: rfc822; {client.address}
Action: failed
Status: 5.1.1
Diagnostic-Code: smtp; 550 5.1.1 User unknown

--B--
""", policy=email.policy.default)
    office.append("INBOX", dsn, flags=())
    office.on(date(2026, 11, 25), date(2026, 12, 7))
    case = office.case(NUMBER)
    assert case.state is CaseState.BAD_ADDRESS
    assert office.notices()[-1]["X-Relance-Notice"] == "bounce"


def test_message_dragged_into_relance_paid_stops_the_chase(office: Office, make_user) -> None:
    client = make_user("client")
    invoice = _chased(office, client)
    with office.dovecot.imap_client(office.firm) as imap:
        paid = next(name for _f, _d, name in imap.list_folders() if name.endswith("Paid"))
        imap.append(paid, invoice.as_bytes())
    office.on(date(2026, 11, 25))
    assert office.case(NUMBER).state is CaseState.PAID
    assert any(e["event"] == "owner-paid" and e.get("via") == "folder"
               for e in office.journal(NUMBER))


def test_credit_note_lowers_the_balance_once(office: Office, make_user) -> None:
    client = make_user("client")
    _chased(office, client, amount="1 000,00")
    credit = message(office.sender, client.address, "Avoir n° AV-2026-001",
                     "Bonjour,\n\nVeuillez trouver notre avoir n° AV-2026-001 du 25/11/2026 "
                     f"sur la facture n° {NUMBER}.\n\nMontant : 200,00 € TTC\n",
                     at(date(2026, 11, 25), 10))
    office.append("Sent", credit)
    office.append("INBOX", credit, flags=())  # the BCC copy: the same credit note again
    office.on(date(2026, 11, 26))
    case = office.case(NUMBER)
    assert case.credited == 200 and case.balance == 800
    assert case.credit_notes == ("AV-2026-001",)


def test_corrected_invoice_replaces_the_earlier_one(office: Office, make_user) -> None:
    client = make_user("client")
    _chased(office, client)
    corrected = invoice_mail("F-2026-0050", sender=office.sender, client=client.address,
                             issued=date(2026, 11, 25), due=date(2026, 12, 25),
                             amount="1 100,00")
    corrected.replace_header("Subject", f"Facture n° F-2026-0050 (annule et remplace la "
                             f"facture n° {NUMBER})")
    office.append("Sent", corrected)
    office.on(date(2026, 11, 26))
    assert office.case(NUMBER).state is CaseState.STOPPED
    assert office.case("F-2026-0050").state is CaseState.CHASING


def test_reply_naming_no_invoice_pauses_all_of_the_clients(office: Office, make_user) -> None:
    client = make_user("client")
    first = _chased(office, client)
    second = invoice_mail("F-2026-0043", sender=office.sender, client=client.address,
                          issued=ISSUED, due=DUE, amount="500,00")
    office.append("Sent", second)
    office.on(date(2026, 11, 25))
    submit(office.smtp, _reply_from(client, office, first,
                                    "Bonjour, nous regardons cela cette semaine.",
                                    date(2026, 11, 26)))
    office.on(date(2026, 11, 27))
    assert office.case(NUMBER).state is CaseState.PAUSED
    assert office.case("F-2026-0043").state is CaseState.PAUSED



def test_instalment_plan_by_email_is_chased_one_instalment_at_a_time(
    office: Office, make_user
) -> None:
    client = make_user("client")
    _chased(office, client, amount="900,00")
    owner_domain = office.owner.address.rpartition("@")[2]
    plan = message(office.owner.address, office.firm.address, "plan",
                   f"plan 3x monthly {NUMBER}\n", at(date(2026, 11, 25), 8))
    plan["Authentication-Results"] = f"{AUTHSERV_ID}; dkim=pass header.d={owner_domain}"
    office.append("INBOX", plan, flags=())
    office.on(date(2026, 11, 25))
    case = office.case(NUMBER)
    assert [(d.isoformat(), str(a)) for d, a in case.instalments] == [
        ("2026-11-25", "300.00"), ("2026-12-25", "300.00"), ("2027-01-25", "300.00")]
    before = len(office.received_by(client))
    office.mornings(date(2026, 11, 26), date(2026, 12, 4))  # instalment 1 not paid
    sent = office.received_by(client)[before:]
    assert [m["X-Relance-Step"] for m in sent] == ["1001"]
    assert "versement n° 1" in text_of(sent[0]) and "300,00 €" in text_of(sent[0])
    from relance.cli import main

    assert main(["paid", NUMBER, "--amount", "300", "--config", str(office.config_path),
                 "--now", "2026-12-04T12:00:00+01:00"]) == 0
    office.mornings(date(2026, 12, 7), date(2026, 12, 31))  # instalment 2 due 25 Dec
    sent = office.received_by(client)[before:]
    assert [m["X-Relance-Step"] for m in sent] == ["1001", "1002"]
    assert office.case(NUMBER).balance == 600
