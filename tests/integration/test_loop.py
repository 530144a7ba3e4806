"""The whole loop, end to end, on the real Dovecot and SMTP relay.

Each test is one firm (its own mailbox users and relance.toml) and a client with a real
mailbox. Invoices are put in the firm's Sent by IMAP APPEND, clients answer through SMTP,
and the daemon runs one pass each simulated morning at 09:00 Europe/Paris, as
`relance run --once --now` would. What the tests look at is what people would see: the
client's own INBOX, the firm's Sent and Drafts, the owner's INBOX, the case's state.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from decimal import Decimal
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from relance import app, cli
from relance.mailbox import smtp
from relance.mailbox.imap import Mailbox
from relance.model import CaseState
from relance.store.journal import Journal
from relance.store.state import COLD_FILE, StateStore
from tests.integration.helpers import (
    Office,
    at,
    invoice_mail,
    message,
    open_office,
    sent_on,
    submit,
    text_of,
)
from tests.mailservers import Dovecot, MailUser, MakeUser, SmtpServer

pytestmark = pytest.mark.dovecot

NUMBER = "F-2026-0042"
ISSUED = date(2026, 4, 7)
DUE = date(2026, 5, 7)  # a Thursday
AMOUNT_TEXT = "1 234,56 €"  # as the French templates write 1234.56 EUR
DUE_TEXT = "7 mai 2026"
FIRST_MORNING = date(2026, 4, 20)
# The default calendar for that due date, on French business days, 08:30-10:00:
COURTESY = date(2026, 5, 4)  # due -5d is Saturday 2 May (after 1 May): Monday 4
REMINDER_1 = date(2026, 5, 12)  # due +5d, a Tuesday
REMINDER_2 = date(2026, 5, 26)  # due +18d is Whit Monday 25 May, a holiday: Tuesday 26
REMINDER_3 = date(2026, 6, 8)  # due +30d is Saturday 6 June: Monday 8
FORMAL_NOTICE = date(2026, 6, 16)  # due +40d, a Tuesday
LAST_MORNING = date(2026, 6, 19)


@pytest.fixture(autouse=True)
def root_logging_restored() -> Iterator[None]:
    """`relance.cli.main` logs to the stderr of the moment (capsys's): undo it after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def office(
    dovecot: Dovecot, smtp_server: SmtpServer, make_user: MakeUser, tmp_path: Path
) -> Office:
    return open_office(dovecot, smtp_server, make_user, tmp_path)


@pytest.fixture
def client(make_user: MakeUser) -> MailUser:
    return make_user("client")


def send_invoice(office: Office, client: MailUser, *, issued: date = ISSUED,
                 due: date = DUE, amount: str | None = "1 234,56") -> EmailMessage:
    """The firm sends an invoice from its mail program: the copy lands in Sent."""
    invoice = invoice_mail(NUMBER, sender=office.sender,
                           client=f"Boulangerie Martin <{client.address}>",
                           issued=issued, due=due, amount=amount)
    office.append("Sent", invoice)
    return invoice


def reminders_in(office: Office, user: MailUser) -> list[EmailMessage]:
    return [m for m in office.messages(user) if "X-Relance-Step" in m]


def client_answers(office: Office, client: MailUser, body: str, when: datetime,
                   **headers: str) -> EmailMessage:
    """The client answers the last reminder from their own mail program, through SMTP."""
    last = reminders_in(office, client)[-1]
    answer = message(f"Boulangerie Martin <{client.address}>", office.firm.address,
                     str(last["Subject"]), body, when, In_Reply_To=str(last["Message-ID"]),
                     References=f"{last['References']} {last['Message-ID']}", **headers)
    submit(office.smtp, answer)
    return answer


def pdf_attachments(msg: EmailMessage) -> list[bytes]:
    return [part.get_content() for part in msg.iter_attachments()
            if part.get_content_type() == "application/pdf"]


def the_pdf(invoice: EmailMessage) -> bytes:
    (pdf,) = pdf_attachments(invoice)
    return pdf


# -- the calendar -------------------------------------------------------------------------
def test_unpaid_invoice_is_chased_step_by_step_to_the_formal_notice(
    office: Office, client: MailUser
) -> None:
    invoice = send_invoice(office, client)
    invoice_id = str(invoice["Message-ID"])

    office.mornings(FIRST_MORNING, REMINDER_3)

    received = office.messages(client)
    sent_ids = [m["Message-ID"] for m in office.messages(office.firm, "Sent")]
    assert sent_ids == [invoice_id, *(m["Message-ID"] for m in received)]

    office.mornings(REMINDER_3 + timedelta(days=1), LAST_MORNING)

    # the formal notice never goes to the client
    assert [m["Message-ID"] for m in office.messages(client)] == [
        m["Message-ID"] for m in received
    ]
    assert [sent_on(m) for m in received] == [
        at(COURTESY), at(REMINDER_1), at(REMINDER_2), at(REMINDER_3)
    ]
    for step, reminder in enumerate(received, start=1):
        assert reminder["In-Reply-To"] == invoice_id
        assert invoice_id in str(reminder["References"]).split()
        assert reminder["Subject"] == f"Re: Facture n° {NUMBER}"
        assert reminder["X-Relance-Invoice"] == NUMBER
        assert reminder["X-Relance-Step"] == str(step)
        assert "Auto-Submitted" not in reminder
        assert reminder["To"].addresses[0].addr_spec == client.address
        assert pdf_attachments(reminder) == [the_pdf(invoice)]
        body = text_of(reminder)
        assert NUMBER in body
        assert AMOUNT_TEXT in body
        assert DUE_TEXT in body

    earlier = [p for p in received[3].iter_attachments()
               if p.get_content_type() == "message/rfc822"]
    assert [p.get_filename() for p in earlier] == ["courtesy.eml", "reminder-1.eml",
                                                   "reminder-2.eml"]
    assert [p.get_content()["Message-ID"] for p in earlier] == [
        m["Message-ID"] for m in received[:3]
    ]
    assert "40,00 €" in text_of(received[3])  # the recovery indemnity, art. D441-5

    (notice,) = office.notices()
    assert sent_on(notice) == at(FORMAL_NOTICE)
    assert notice["Subject"] == f"[relance] Mise en demeure à envoyer : facture n° {NUMBER}"
    assert notice["Auto-Submitted"] == "auto-generated"
    assert notice["X-Relance-Invoice"] == NUMBER
    assert "Objet : mise en demeure de payer" in text_of(notice)  # the letter to print
    assert [(p.get_filename(), p.get_content_type()) for p in notice.iter_attachments()] == [
        (f"mise-en-demeure-{NUMBER}.pdf", "application/pdf")
    ]
    assert len(office.smtp.received_by(client.address)) == 4  # the letter never left

    case = office.case(NUMBER)
    assert case.state is CaseState.FORMAL_NOTICE
    assert [s.name for s in case.steps] == [
        "courtesy", "reminder-1", "reminder-2", "reminder-3", "formal-notice"
    ]
    # The case closed: its thread leaves Sent for the archive, as evidence.
    archived = [m["Message-ID"] for m in office.messages(office.firm, archive_of(office))]
    assert sorted(archived) == sorted(sent_ids)
    assert office.messages(office.firm, "Sent") == []


def archive_of(office: Office, year: int = 2026) -> str:
    """The archive folder of a year, in the server's own hierarchy syntax."""
    with office.dovecot.imap_client(office.firm) as imap:
        for _flags, delimiter, name in imap.list_folders():
            if name.split(delimiter.decode()) == ["Relance", "Archive", str(year)]:
                return str(name)
    raise AssertionError(f"no Relance/Archive/{year} folder")


def test_calendar_holds_across_the_autumn_clock_change_and_holidays(
    office: Office, client: MailUser
) -> None:
    send_invoice(office, client, issued=date(2026, 9, 24), due=date(2026, 10, 24))

    office.mornings(date(2026, 10, 12), date(2026, 12, 4))

    # Summer time ends on 25 October; 11 November (Armistice) is a holiday.
    assert [str(m["Date"]) for m in office.messages(client)] == [
        "Mon, 19 Oct 2026 09:00:00 +0200",  # courtesy, due -5d
        "Thu, 29 Oct 2026 09:00:00 +0100",  # reminder-1, due +5d
        "Thu, 12 Nov 2026 09:00:00 +0100",  # reminder-2, due +18d is 11 November
        "Mon, 23 Nov 2026 09:00:00 +0100",  # reminder-3, due +30d
    ]
    (notice,) = office.notices()
    assert str(notice["Date"]) == "Thu, 03 Dec 2026 09:00:00 +0100"  # due +40d


def test_nothing_leaves_outside_the_send_window(office: Office, client: MailUser) -> None:
    send_invoice(office, client)
    office.on(FIRST_MORNING)
    for early in (at(COURTESY, 7), at(COURTESY, 8, 29)):
        office.pass_at(early)
    assert office.messages(client) == []
    office.pass_at(at(COURTESY, 8, 30))
    # reminder-1 is due on 12 May, but that day the daemon only runs after the window
    for late in (at(REMINDER_1, 10), at(REMINDER_1, 14), at(REMINDER_1, 18, 30)):
        office.pass_at(late)
    office.pass_at(at(REMINDER_1 + timedelta(days=1), 9, 59))

    assert [sent_on(m) for m in office.messages(client)] == [
        at(COURTESY, 8, 30), at(REMINDER_1 + timedelta(days=1), 9, 59)
    ]


def test_hand_written_mail_in_the_thread_delays_the_next_reminder(
    office: Office, client: MailUser
) -> None:
    invoice = send_invoice(office, client)
    office.on(FIRST_MORNING, COURTESY, date(2026, 5, 9))
    by_hand = message(office.sender, client.address, f"Re: Facture n° {NUMBER}",
                      "Bonjour, je reviens vers vous pour la facture.\n",
                      at(date(2026, 5, 9), 17), In_Reply_To=str(invoice["Message-ID"]),
                      References=str(invoice["Message-ID"]))
    office.append("Sent", by_hand)

    office.mornings(date(2026, 5, 10), date(2026, 5, 20))

    # reminder-1 was due on 12 May; 7 days after the owner's own mail of 9 May is 16 May,
    # a Saturday: Monday 18 May.
    assert [sent_on(m) for m in reminders_in(office, client)] == [
        at(COURTESY), at(date(2026, 5, 18))
    ]


# -- listening --------------------------------------------------------------------------
def test_reply_from_client_pauses_case(office: Office, client: MailUser) -> None:
    send_invoice(office, client)
    office.on(FIRST_MORNING, COURTESY, REMINDER_1)
    client_answers(office, client, "Bonjour,\n\nNous contestons la livraison du 3 avril, "
                   "pouvez-vous nous rappeler ?\n\nPaul Martin\n",
                   at(REMINDER_1, 14, 20))

    office.mornings(REMINDER_1 + timedelta(days=1), REMINDER_2)
    office.on(REMINDER_3, FORMAL_NOTICE)  # when the later steps would have been due

    assert [sent_on(m) for m in reminders_in(office, client)] == [
        at(COURTESY), at(REMINDER_1)
    ]
    case = office.case(NUMBER)
    assert case.state is CaseState.PAUSED
    (notice,) = office.notices()
    assert notice["Subject"] == f"[relance] Boulangerie Martin a répondu : facture n° {NUMBER}"
    assert notice["Auto-Submitted"] == "auto-generated"
    assert "Nous contestons la livraison" in text_of(notice)


def test_out_of_office_does_not_pause(office: Office, client: MailUser) -> None:
    send_invoice(office, client)
    office.on(FIRST_MORNING, COURTESY, REMINDER_1)
    client_answers(office, client, "Je suis absent du bureau ; je lirai votre message à mon "
                   "retour.\n", at(REMINDER_1, 9, 1), Auto_Submitted="auto-replied")

    office.mornings(date(2026, 5, 13), REMINDER_2)

    assert [sent_on(m) for m in reminders_in(office, client)] == [
        at(COURTESY), at(REMINDER_1), at(REMINDER_2)
    ]
    assert office.case(NUMBER).state is CaseState.CHASING
    assert office.notices() == []


def test_paid_from_the_shell_stops_the_chase(
    office: Office, client: MailUser, capsys: pytest.CaptureFixture[str]
) -> None:
    send_invoice(office, client)
    office.on(FIRST_MORNING, COURTESY, REMINDER_1)
    config = str(office.config_path)

    assert cli.main(["paid", NUMBER, "--config", config,
                     "--now", at(date(2026, 5, 14), 18).isoformat()]) == 0
    office.on(REMINDER_2, REMINDER_3, FORMAL_NOTICE)

    assert [sent_on(m) for m in office.messages(client)] == [at(COURTESY), at(REMINDER_1)]
    capsys.readouterr()
    assert cli.main(["status", "--json", "--all", "--config", config]) == 0
    (row,) = json.loads(capsys.readouterr().out)["cases"]
    assert (row["number"], row["state"], row["paid"], row["balance"]) == (
        NUMBER, "paid", "1234.56", "0.00"
    )
    assert row["next_action"] is None


def test_a_paid_case_goes_cold_and_a_late_answer_still_finds_it(
    office: Office, client: MailUser, capsys: pytest.CaptureFixture[str]
) -> None:
    """Months after it was paid and sealed, the case leaves the hot state; the client's
    "merci" in the thread half a year later is still recorded on it, and sealed again."""
    send_invoice(office, client)
    office.on(FIRST_MORNING, COURTESY, REMINDER_1)
    config = str(office.config_path)
    assert cli.main(["paid", NUMBER, "--config", config,
                     "--now", at(date(2026, 5, 14), 18).isoformat()]) == 0
    office.on(REMINDER_2)  # sealed: evidence written, the thread archived
    cold = office.config().state_dir / COLD_FILE
    office.on(date(2026, 8, 3))  # 83 days after the last reminder: still hot
    assert not cold.exists()

    office.on(date(2026, 8, 17))
    assert cold.exists() and NUMBER.encode() in cold.read_bytes()
    with StateStore(office.config().state_dir).reading() as view:
        assert view.cold_count() == 1
        assert view.get_case(NUMBER).state is CaseState.PAID  # type: ignore[union-attr]
    capsys.readouterr()
    assert cli.main(["status", "--json", "--all", "--config", config]) == 0
    (row,) = json.loads(capsys.readouterr().out)["cases"]
    assert (row["number"], row["state"], row["balance"]) == (NUMBER, "paid", "0.00")

    answer = client_answers(office, client, "Merci, bien reçu votre confirmation.",
                            at(date(2026, 11, 2), 10))
    office.on(date(2026, 11, 3))
    replied = [e for e in office.journal(NUMBER) if e["event"] == "client-replied"]
    assert [e["message_id"] for e in replied] == [str(answer["Message-ID"])]
    with StateStore(office.config().state_dir).reading() as view:
        assert view.cold_count() == 0, "a case that changed is hot again"
        case = view.get_case(NUMBER)
        assert case is not None and case.state is CaseState.PAID
        assert str(answer["Message-ID"]) in case.thread_ids
    sealed = [e for e in office.journal(NUMBER) if e["event"] == "evidence-written"]
    assert len(sealed) == 2, "the answer is news: the case is sealed again"


def test_sealing_skips_a_journal_unchanged_since_a_scan_that_left_nothing_to_do(
    office: Office, client: MailUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A start with years of journal does not index it to find there is nothing to seal;
    any line appended since (here a `relance paid` from the shell) means a scan again."""
    send_invoice(office, client)
    office.on(FIRST_MORNING, COURTESY)
    config = str(office.config_path)
    assert cli.main(["paid", NUMBER, "--config", config,
                     "--now", at(date(2026, 5, 5), 18).isoformat()]) == 0
    office.on(date(2026, 5, 6))  # sealed: its journal lines come after the scan's start
    office.on(date(2026, 5, 7))  # a scan that finds nothing to do: it is remembered
    scans: list[int] = []
    real = Journal.events_by_case

    def counted(journal: Journal) -> dict[str, list[str]]:
        scans.append(1)
        return real(journal)

    monkeypatch.setattr(Journal, "events_by_case", counted)
    office._daemon = office.new_daemon()  # a restart: nothing indexed in memory
    office.on(date(2026, 5, 8), date(2026, 5, 11))
    assert scans == []
    Journal(office.config().state_dir).append("owner-note", at=at(date(2026, 5, 11), 19),
                                              case=NUMBER, text="appelé le client")
    office.on(date(2026, 5, 12))
    assert scans == [1]
    sealed = [e for e in office.journal(NUMBER) if e["event"] == "evidence-written"]
    assert len(sealed) == 2, "the note is news: sealed again"


def test_mail_naming_the_invoice_without_thread_headers_pauses_case(
    office: Office, client: MailUser
) -> None:
    send_invoice(office, client)
    office.on(FIRST_MORNING, COURTESY, REMINDER_1)
    question = message(f"Paul Martin <{client.address}>", office.firm.address,
                       "Question", f"Bonjour, la facture {NUMBER} comprend-elle la pose ?\n",
                       at(REMINDER_1, 15))
    submit(office.smtp, question)

    office.mornings(REMINDER_1 + timedelta(days=1), REMINDER_2)

    assert len(reminders_in(office, client)) == 2
    assert office.case(NUMBER).state is CaseState.PAUSED
    assert len(office.notices()) == 1


# -- at most once -------------------------------------------------------------------------
def test_reminder_whose_send_was_cut_off_is_never_sent_again(
    office: Office, client: MailUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    send_invoice(office, client)
    office.on(FIRST_MORNING)
    real_data = aiosmtplib.SMTP.data
    cut: list[bool] = []

    async def data_then_link_lost(self: aiosmtplib.SMTP, *args: Any, **kwargs: Any) -> Any:
        """The relay takes the message; the link dies before its reply is read."""
        response = await real_data(self, *args, **kwargs)
        if not cut:
            cut.append(True)
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        return response

    monkeypatch.setattr(aiosmtplib.SMTP, "data", data_then_link_lost)

    office.mornings(COURTESY, REMINDER_1 - timedelta(days=1))

    assert [sent_on(m) for m in office.messages(client)] == [at(COURTESY)]
    (notice,) = office.notices()
    assert notice["Subject"] == f"[relance] Envoi incertain : facture n° {NUMBER}, étape 1"


def test_refused_reminder_is_sent_the_next_morning(office: Office, client: MailUser) -> None:
    send_invoice(office, client)
    office.on(FIRST_MORNING)
    office.smtp.fail_next(451, "4.7.1 Try again later")

    office.mornings(COURTESY, REMINDER_1 - timedelta(days=1))

    assert [sent_on(m) for m in office.messages(client)] == [at(COURTESY + timedelta(days=1))]
    assert office.notices() == []


def test_crash_during_send_never_sends_twice(
    office: Office, client: MailUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    send_invoice(office, client)
    office.on(FIRST_MORNING)
    real_send = smtp.send

    def send_then_die(*args: Any, **kwargs: Any) -> Any:
        real_send(*args, **kwargs)
        raise SystemExit("killed while the server was answering")

    monkeypatch.setattr(smtp, "send", send_then_die)
    with pytest.raises(SystemExit):
        office.pass_at(at(COURTESY))
    monkeypatch.setattr(smtp, "send", real_send)

    restarted = office.new_daemon()
    for day in (COURTESY, COURTESY + timedelta(days=1), REMINDER_1 - timedelta(days=1)):
        app.run_once(restarted, at(day, 9, 30))

    assert len(office.messages(client)) == 1
    (notice,) = office.notices()
    assert notice["Subject"] == f"[relance] Envoi incertain : facture n° {NUMBER}, étape 1"


def test_same_now_twice_sends_nothing_the_second_time(office: Office, client: MailUser) -> None:
    send_invoice(office, client)
    run = ["run", "--once", "--config", str(office.config_path),
           "--now", at(COURTESY).isoformat()]

    assert cli.main(run) == 0
    assert cli.main(run) == 0

    assert len(office.smtp.received_by(client.address)) == 1
    assert len(office.messages(client)) == 1
    assert len(office.messages(office.firm, "Sent")) == 2  # the invoice and one copy


def test_new_uidvalidity_reads_sent_again_without_sending_twice(
    office: Office, client: MailUser
) -> None:
    send_invoice(office, client)
    office.on(FIRST_MORNING, COURTESY)
    # The server renumbers Sent (a migration, a rebuilt index): UIDVALIDITY changes.
    sent = office.firm.home / "Maildir" / ".Sent"
    for index in ("dovecot-uidlist", "dovecot.index", "dovecot.index.cache",
                  "dovecot.index.log"):
        (sent / index).unlink(missing_ok=True)

    office.mornings(COURTESY + timedelta(days=1), REMINDER_1)

    assert "uidvalidity-changed" in [e["event"] for e in office.journal()]
    assert [sent_on(m) for m in office.messages(client)] == [at(COURTESY), at(REMINDER_1)]
    assert len(office.cases()) == 1
    reminder_1 = office.messages(client)[1]
    assert pdf_attachments(reminder_1) != []  # the invoice found again under its new UID


def test_restart_does_not_read_the_mailbox_again(
    office: Office, client: MailUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    send_invoice(office, client)
    office.on(FIRST_MORNING, COURTESY, date(2026, 5, 5))  # the courtesy left on 4 May
    journal_before = office.journal()
    fetched: list[list[int]] = []
    real_fetch_headers = Mailbox.fetch_headers

    def counting_fetch_headers(self: Mailbox, uids: list[int]) -> object:
        fetched.append(list(uids))
        return real_fetch_headers(self, uids)

    monkeypatch.setattr(Mailbox, "fetch_headers", counting_fetch_headers)

    restarted = office.new_daemon()
    app.run_once(restarted, at(date(2026, 5, 6)))

    assert fetched == []
    assert len(office.smtp.received_by(client.address)) == 1
    assert office.journal() == journal_before


# -- finding invoices ---------------------------------------------------------------------
def test_sent_folder_found_by_special_use_under_a_localized_name(
    dovecot_localized: Dovecot, smtp_server: SmtpServer, tmp_path: Path
) -> None:
    # The relay delivers only into the session's other Dovecot: what leaves for the
    # client is read from the relay's record, what stays is read in the firm's folders.
    office = open_office(dovecot_localized, smtp_server,
                         lambda prefix: dovecot_localized.new_user(f"l10n{prefix}"),
                         tmp_path)
    client = dovecot_localized.new_user("l10nclient")
    invoice = invoice_mail(NUMBER, sender=office.sender, client=client.address,
                           issued=ISSUED, due=DUE)
    office.append("Éléments envoyés", invoice)

    office.on(FIRST_MORNING, COURTESY)

    (courtesy,) = office.received_by(client)
    assert courtesy["In-Reply-To"] == invoice["Message-ID"]
    sent = office.messages(office.firm, "Éléments envoyés")
    assert [m["Message-ID"] for m in sent] == [invoice["Message-ID"], courtesy["Message-ID"]]


def test_bcc_copy_from_invoicing_software_is_an_invoice_quote_and_newsletter_are_not(
    office: Office, client: MailUser
) -> None:
    bcc = invoice_mail("2026-118", sender=f"Atelier Dupont <{office.billing.address}>",
                       client=client.address, issued=ISSUED, due=DUE, amount="450,00",
                       subject="FACTURE 2026-118")
    office.append("INBOX", bcc, flags=())
    quote = message(office.sender, client.address, "Devis n° D-2026-0007",
                    "Bonjour,\n\nVoici notre devis pour la vitrine : 3 200,00 € HT.\n",
                    at(date(2026, 4, 9), 16))
    quote.add_attachment(b"%PDF-1.4 devis", maintype="application", subtype="pdf",
                         filename="D-2026-0007.pdf")
    office.append("Sent", quote)
    newsletter = message("La Lettre du Bois <news@fournisseur.test>", office.firm.address,
                         "Facturation électronique : ce qui change en 2026",
                         "Dès septembre 2026, toute facture entre entreprises devra...\n",
                         at(date(2026, 4, 15), 7), Precedence="bulk",
                         List_Unsubscribe="<mailto:stop@fournisseur.test>")
    office.append("INBOX", newsletter, flags=())

    office.on(FIRST_MORNING, COURTESY)

    assert list(office.cases()) == ["2026-118"]
    case = office.case("2026-118")
    assert (case.amount, case.due_date, case.client_addrs) == (
        Decimal("450.00"), DUE, (client.address,)
    )
    (courtesy,) = office.messages(client)
    assert courtesy["In-Reply-To"] == bcc["Message-ID"]
    assert "450,00 €" in text_of(courtesy)


def test_invoice_to_two_addresses_reminds_both_in_the_original_thread(
    office: Office, client: MailUser, make_user: MakeUser
) -> None:
    accounts = make_user("compta")
    order = message(client.address, office.firm.address, "Commande vitrine",
                    "Bonjour, nous confirmons la commande.\n", at(date(2026, 4, 1)))
    invoice = invoice_mail(NUMBER, sender=office.sender, client=client.address,
                           issued=ISSUED, due=DUE, subject=f"Re: Commande vitrine - {NUMBER}")
    invoice["Cc"] = accounts.address
    invoice["In-Reply-To"] = order["Message-ID"]
    invoice["References"] = order["Message-ID"]
    office.append("Sent", invoice)

    office.on(FIRST_MORNING, COURTESY)

    for user in (client, accounts):
        (courtesy,) = office.messages(user)
        assert {a.addr_spec for a in courtesy["To"].addresses} == {
            client.address, accounts.address
        }
        assert courtesy["Subject"] == f"Re: Commande vitrine - {NUMBER}"
        assert str(courtesy["References"]).split() == [
            order["Message-ID"], invoice["Message-ID"]
        ]


def test_two_invoices_due_together_leave_in_one_reminder(
    office: Office, client: MailUser
) -> None:
    first = send_invoice(office, client)
    second = invoice_mail("F-2026-0043", sender=office.sender, client=client.address,
                          issued=ISSUED, due=DUE, amount="100,00")
    office.append("Sent", second)

    office.on(FIRST_MORNING, COURTESY)

    (courtesy,) = office.messages(client)
    body = text_of(courtesy)
    assert NUMBER in body
    assert "F-2026-0043" in body
    assert sorted(pdf_attachments(courtesy)) == sorted([the_pdf(first), the_pdf(second)])


def test_invoice_without_amount_is_reported_not_chased(office: Office, client: MailUser) -> None:
    send_invoice(office, client, amount=None)

    office.on(FIRST_MORNING, COURTESY, REMINDER_1, REMINDER_2, REMINDER_3, FORMAL_NOTICE)

    case = office.case(NUMBER)
    assert case.state is CaseState.NEEDS_FACTS
    assert office.smtp.received_by(client.address) == []
    (notice,) = office.notices()
    assert notice["Subject"] == f"[relance] Facture n° {NUMBER} : informations manquantes"
    assert notice["Auto-Submitted"] == "auto-generated"
    assert "le montant TTC" in text_of(notice)


# -- safe to try --------------------------------------------------------------------------
def test_dry_run_sends_nothing(
    dovecot: Dovecot, smtp_server: SmtpServer, make_user: MakeUser, tmp_path: Path,
    client: MailUser,
) -> None:
    office = open_office(dovecot, smtp_server, make_user, tmp_path, mode="dry-run")
    send_invoice(office, client)

    office.on(FIRST_MORNING, COURTESY, REMINDER_1)

    assert smtp_server.received_by(client.address) == []
    assert len(office.messages(office.firm, "Sent")) == 1
    assert office.messages(office.firm, "Drafts") == []
    would_send = [e["step_name"] for e in office.journal(NUMBER) if e["event"] == "would-send"]
    assert would_send == ["courtesy", "reminder-1"]


def test_draft_mode_puts_the_reminder_in_drafts_threaded(
    dovecot: Dovecot, smtp_server: SmtpServer, make_user: MakeUser, tmp_path: Path,
    client: MailUser,
) -> None:
    office = open_office(dovecot, smtp_server, make_user, tmp_path, mode="draft")
    invoice = send_invoice(office, client)

    office.on(FIRST_MORNING)
    office.mornings(COURTESY, date(2026, 5, 8))

    assert smtp_server.received_by(client.address) == []
    assert len(office.messages(office.firm, "Sent")) == 1
    (draft,) = office.messages(office.firm, "Drafts")
    assert draft["In-Reply-To"] == invoice["Message-ID"]
    assert draft["Subject"] == f"Re: Facture n° {NUMBER}"
    assert draft["X-Relance-Step"] == "1"
    assert pdf_attachments(draft) == [the_pdf(invoice)]
    with office.dovecot.imap_client(office.firm) as imap:
        imap.select_folder("Drafts", readonly=True)
        (flags,) = imap.get_flags(imap.search(["ALL"])).values()
    assert b"\\Draft" in flags
