"""The first read of a mailbox against a real Dovecot: few SELECTs, bodies fetched in
batches, one notice per client answer, old answers summarised; and no mail missed
between a pass and the IDLE that follows it."""

from __future__ import annotations

import time
from collections import Counter
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest

from relance.app import Clock
from relance.mailbox.imap import Mailbox
from relance.model import CaseState
from relance.sdnotify import Notifier
from relance.service import Service
from tests.integration.helpers import (
    PARIS,
    Office,
    at,
    invoice_mail,
    message,
    open_office,
    submit,
)
from tests.mailservers import Dovecot, SmtpServer

pytestmark = pytest.mark.dovecot

ISSUED, DUE = date(2026, 10, 20), date(2026, 11, 19)


@pytest.fixture
def office(dovecot: Dovecot, smtp_server: SmtpServer, make_user, tmp_path: Path) -> Office:
    return open_office(dovecot, smtp_server, make_user, tmp_path)


class Counting:
    """Counts the commands a Mailbox's client sends, by name, without changing them."""

    def __init__(self, mailbox: Mailbox) -> None:
        self.calls: Counter[str] = Counter()
        self.body_fetches: list[int] = []
        imap = mailbox.imap
        for name in ("select_folder", "fetch", "noop"):
            setattr(imap, name, self._wrap(name, getattr(imap, name)))

    def _wrap(self, name: str, method: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            if name == "fetch" and b"BODY.PEEK[]" in list(args[1]):
                self.body_fetches.append(len(args[0]))
            return method(*args, **kwargs)
        return wrapper


def test_first_read_selects_each_folder_a_few_times_and_fetches_bodies_in_batches(
    office: Office, make_user,
) -> None:
    clients = [make_user(f"client{n}") for n in range(3)]
    numbers = [f"F-2026-{n:04d}" for n in range(1, 31)]
    for position, number in enumerate(numbers):
        office.append("Sent", invoice_mail(number, sender=office.sender,
                                           client=clients[position % 3].address,
                                           issued=ISSUED, due=DUE))
    for n in range(20):  # mail that is about no invoice: no body wanted
        office.append("INBOX", message(f"news{n}@lettre.test", office.firm.address,
                                       f"Lettre n° {n}", "Bonjour", at(ISSUED)))
    daemon = office.daemon
    with Mailbox(office.config().imap) as mailbox:
        counting = Counting(mailbox)
        daemon.run_pass(mailbox, at(date(2026, 11, 2)))
    assert set(office.cases()) == set(numbers)
    # Before: one SELECT per candidate message (30 here). Now: per folder and step.
    assert counting.calls["select_folder"] <= 12, counting.calls
    assert sum(counting.body_fetches) >= 30
    assert max(counting.body_fetches) > 1  # candidates came together
    assert len(counting.body_fetches) <= 3, counting.body_fetches


def test_a_reply_that_pauses_several_invoices_sends_one_notice(
    office: Office, make_user,
) -> None:
    client = make_user("client")
    invoices = [invoice_mail(f"F-2026-00{n}", sender=office.sender, client=client.address,
                             issued=ISSUED, due=DUE) for n in (41, 42, 43)]
    for invoice in invoices:
        office.append("Sent", invoice)
    office.on(date(2026, 11, 2), date(2026, 11, 24))
    assert all(office.case(f"F-2026-00{n}").last_step >= 1 for n in (41, 42, 43))
    before = len(office.notices())
    reply = message(client.address, office.firm.address, f"Re: {invoices[1]['Subject']}",
                    "Bonjour, nous regardons cela et revenons vers vous.",
                    at(date(2026, 11, 25), 11), In_Reply_To=str(invoices[1]["Message-ID"]),
                    References=str(invoices[1]["Message-ID"]))
    submit(office.smtp, reply)
    office.on(date(2026, 11, 26))
    assert all(office.case(f"F-2026-00{n}").state is CaseState.PAUSED for n in (41, 42, 43))
    replied = [e["case"] for e in office.journal() if e["event"] == "client-replied"]
    assert sorted(replied) == ["F-2026-0041", "F-2026-0042", "F-2026-0043"]
    new = office.notices()[before:]
    assert [n["X-Relance-Notice"] for n in new] == ["reply"]
    assert "F-2026-0042" in str(new[0]["Subject"])  # the invoice whose thread it answers


def test_first_read_summarises_old_answers_and_tells_recent_ones(
    office: Office, make_user,
) -> None:
    old_client, new_client = make_user("ancien"), make_user("recent")
    old_invoice = invoice_mail("F-2026-0001", sender=office.sender,
                               client=old_client.address, issued=date(2026, 9, 1),
                               due=date(2026, 10, 1))
    new_invoice = invoice_mail("F-2026-0002", sender=office.sender,
                               client=new_client.address, issued=date(2026, 10, 1),
                               due=date(2026, 11, 1))
    office.append("Sent", old_invoice)
    office.append("Sent", new_invoice)
    now = at(date(2026, 11, 30))
    for client, invoice, day in ((old_client, old_invoice, date(2026, 10, 5)),
                                 (new_client, new_invoice, date(2026, 11, 25))):
        office.append("INBOX", message(
            client.address, office.firm.address, f"Re: {invoice['Subject']}",
            "Bonjour, nous regardons.", at(day, 11),
            In_Reply_To=str(invoice["Message-ID"]), References=str(invoice["Message-ID"])))
    office.pass_at(now)
    # Both answers are on their cases and in the journal...
    replied = {e["case"] for e in office.journal() if e["event"] == "client-replied"}
    assert replied == {"F-2026-0001", "F-2026-0002"}
    assert office.case("F-2026-0002").state is CaseState.PAUSED
    # ...the recent one has its own notice, the old one is in one summary.
    kinds = Counter(n["X-Relance-Notice"] for n in office.notices())
    assert kinds["reply"] == 1 and kinds["history"] == 1, kinds
    summary = next(n for n in office.notices() if n["X-Relance-Notice"] == "history")
    body = summary.get_body(("plain",)).get_content()
    assert "F-2026-0001" in body and "F-2026-0002" not in body


def test_mail_landing_between_the_pass_and_idle_wakes_the_daemon_at_once(
    office: Office, make_user,
) -> None:
    client = make_user("client")
    daemon = office.daemon
    clock = Clock(PARIS, fixed=datetime(2026, 11, 2, 9, 0, tzinfo=PARIS))
    service = Service(daemon, clock, reload=lambda: None, sleep=time.sleep,
                      notifier=Notifier(None))
    passes: list[float] = []
    real_pass = daemon.run_pass

    def run_pass(mailbox: Mailbox, now: datetime) -> None:
        real_pass(mailbox, now)
        passes.append(time.monotonic())
        if len(passes) == 1:
            # Lands after the pass read INBOX, before IDLE starts: no EXISTS will come.
            office.append("INBOX", message(client.address, office.firm.address, "Bonjour",
                                           "Une question.", at(date(2026, 11, 2))))
        else:
            service.stop_requested = True

    daemon.run_pass = run_pass  # type: ignore[method-assign]
    started = time.monotonic()
    interrupted = service.interrupted
    # Without the fix the daemon would idle until its next planned step (minutes):
    # give up after 10 s so the test fails instead of hanging.
    service.interrupted = lambda: interrupted() or time.monotonic() - started > 10  # type: ignore[method-assign]
    with Mailbox(office.config().imap) as mailbox:
        service.serve(mailbox)
    assert len(passes) == 2, "the mail that landed before IDLE did not wake the daemon"
    assert passes[1] - passes[0] < 3.0


def test_first_read_adopts_old_invoices_from_headers_and_ignores_mail_older_than_an_invoice(
    office: Office, make_user,
) -> None:
    """History costs headers only: an invoice older than `adopt_max_age` (120 days) is
    closed from its subject and Date, its body never fetched; a client's mail written
    before an invoice was issued is not an answer to it."""
    client = make_user("client")
    old = invoice_mail("F-2025-0007", sender=office.sender, client=client.address,
                       issued=date(2025, 11, 3), due=date(2025, 12, 3))
    new = invoice_mail("F-2026-0031", sender=office.sender, client=client.address,
                       issued=ISSUED, due=DUE)
    office.append("Sent", old)
    office.append("Sent", new)
    office.append("INBOX", message(client.address, office.firm.address,
                                   "Question sur la facture F-2026-0031",
                                   "Bonjour, pouvez-vous nous envoyer la facture F-2026-0031 ?",
                                   at(date(2026, 10, 12), 11)))
    with Mailbox(office.config().imap) as mailbox:
        counting = Counting(mailbox)
        office.daemon.run_pass(mailbox, at(date(2026, 11, 2)))
    history = office.case("F-2025-0007")
    assert history.state is CaseState.DONE and history.amount is None
    assert history.root_message_id == str(old["Message-ID"])
    found = {e["case"]: e for e in office.journal() if e["event"] == "invoice-found"}
    assert found["F-2025-0007"]["source"] == "headers"
    assert office.case("F-2026-0031").state is CaseState.CHASING  # not paused by the earlier mail
    assert not [e for e in office.journal() if e["event"] == "client-replied"]
    assert sum(counting.body_fetches) == 1  # the new invoice alone


def test_first_read_keeps_an_old_answer_to_its_own_thread(
    office: Office, make_user,
) -> None:
    """An answer found as history (older than 14 days) on a first read is recorded on the
    invoice whose thread it answers; the client's other open invoices are left alone. A
    recent one still pauses them all (see the test above)."""
    client = make_user("client")
    first = invoice_mail("F-2026-0051", sender=office.sender, client=client.address,
                         issued=date(2026, 10, 1), due=date(2026, 10, 31))
    second = invoice_mail("F-2026-0052", sender=office.sender, client=client.address,
                          issued=date(2026, 10, 2), due=date(2026, 11, 1))
    office.append("Sent", first)
    office.append("Sent", second)
    office.append("INBOX", message(
        client.address, office.firm.address, f"Re: {first['Subject']}",
        "Bonjour, nous regardons.", at(date(2026, 10, 6), 11),
        In_Reply_To=str(first["Message-ID"]), References=str(first["Message-ID"])))
    office.pass_at(at(date(2026, 11, 30)))
    replied = [e["case"] for e in office.journal() if e["event"] == "client-replied"]
    assert replied == ["F-2026-0051"]
    assert office.case("F-2026-0051").state is CaseState.PAUSED
    assert office.case("F-2026-0052").state is not CaseState.PAUSED
