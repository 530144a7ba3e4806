"""Builders for the end-to-end tests: a firm, its mailbox and its relance.toml on the real
Dovecot and SMTP relay of tests/mailservers.py.

An `Office` is one firm as a test sees it: its own users (firm mailbox, owner, billing
address), its own directory with relance.toml, the default rules and templates, and the
state. Mail is seeded the way it arrives in real life: IMAP APPEND into the firm's Sent
(or INBOX for the BCC copy the invoicing software makes), SMTP for what clients write.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parsedate_to_datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import aiosmtplib
from fpdf import FPDF

from relance import app, defaults
from relance.config import Config, load_config
from relance.model import Case
from relance.store.journal import Journal
from relance.store.state import StateStore
from tests.mailservers import SMTP_PASSWORD, SMTP_USERNAME, Dovecot, MailUser, SmtpServer

PARIS = ZoneInfo("Europe/Paris")
FIRM_NAME = "Atelier Dupont SARL"
IBAN = "FR76 3000 6000 0112 3456 7890 189"
BANK = "alertes@banque.test"  # the firm's bank: a trusted payment sender
AUTHSERV_ID = "mx.example.test"  # the firm's receiving server, which checks DKIM and SPF


def at(day: date, hour: int = 9, minute: int = 0) -> datetime:
    """An instant on the firm's wall clock (Europe/Paris)."""
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=PARIS)


def days(first: date, last: date) -> Iterator[date]:
    """Every calendar day from `first` to `last`, both included."""
    day = first
    while day <= last:
        yield day
        day += timedelta(days=1)


def invoice_pdf(number: str, amount: str | None, issued: date, due: date | None) -> bytes:
    """A one-page invoice as invoicing software prints it (core fonts: latin-1 only)."""
    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("helvetica", size=12)
    lines = [FIRM_NAME, f"Facture n° {number}", f"Date de facture : {issued:%d/%m/%Y}"]
    if due is not None:
        lines.append(f"Date d'échéance : {due:%d/%m/%Y}")
    lines.append("Prestations de menuiserie")
    if amount is not None:
        lines.append(f"Total TTC : {amount} EUR")
    for line in lines:
        pdf.cell(text=line, new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


def message(
    sender: str, to: str, subject: str, body: str, when: datetime, **headers: str
) -> EmailMessage:
    """A plain mail with its own Message-ID; `In_Reply_To="..."` sets In-Reply-To."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = format_datetime(when)
    msg["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2].rstrip(">"))
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body)
    return msg


def invoice_mail(
    number: str,
    *,
    sender: str,
    client: str,
    issued: date,
    due: date | None,
    amount: str | None = "1 234,56",
    subject: str | None = None,
) -> EmailMessage:
    """The mail that carries an invoice: a short French body and the PDF attached.

    `amount=None` leaves the amount out of both the body and the PDF (an invoice relance
    cannot chase); `due=None` leaves the due date out (terms apply).
    """
    lines = [
        "Bonjour,",
        "",
        f"Veuillez trouver ci-joint notre facture n° {number} du {issued:%d/%m/%Y}.",
        "",
    ]
    if amount is not None:
        lines.append(f"Montant : {amount} € TTC")
    if due is not None:
        lines.append(f"Échéance : {due:%d/%m/%Y}")
    lines += ["", f"Règlement par virement : {IBAN}", "", "Bien cordialement,", FIRM_NAME]
    msg = message(sender, client, subject or f"Facture n° {number}", "\n".join(lines) + "\n",
                  at(issued, 11, 12))
    msg.add_attachment(invoice_pdf(number, amount, issued, due), maintype="application",
                       subtype="pdf", filename=f"{number}.pdf")
    return msg


def parse(raw: bytes) -> EmailMessage:
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def text_of(msg: EmailMessage) -> str:
    """The plain-text body, with the no-break spaces of French formatting made plain."""
    body = msg.get_body(("plain",))
    assert body is not None, f"no text body in {msg['Subject']!r}"
    text = body.get_content()
    assert isinstance(text, str)
    return text.replace("\u202f", " ").replace("\u00a0", " ")


def sent_on(msg: EmailMessage) -> datetime:
    """The `Date:` of a message, on the firm's wall clock."""
    return parsedate_to_datetime(str(msg["Date"])).astimezone(PARIS)


def submit(smtp: SmtpServer, msg: EmailMessage) -> None:
    """Send a message through the test relay, as a client's mail program would."""
    asyncio.run(aiosmtplib.send(msg, hostname=smtp.host, port=smtp.port,
                                username=SMTP_USERNAME, password=SMTP_PASSWORD,
                                start_tls=False, timeout=10))


@dataclass
class Office:
    """One firm on the test servers, with its relance.toml in `home`."""

    dovecot: Dovecot
    smtp: SmtpServer
    home: Path
    firm: MailUser
    owner: MailUser
    billing: MailUser
    mode: str = "send"
    _daemon: app.Daemon | None = field(default=None, repr=False)

    @property
    def config_path(self) -> Path:
        return self.home / "relance.toml"

    @property
    def sender(self) -> str:
        return f"Atelier Dupont - Comptabilité <{self.firm.address}>"

    def write_config(self) -> Path:
        """relance.toml for loopback servers, plus the default rules and templates."""
        self.config_path.write_text(f"""\
mode = "{self.mode}"
timezone = "Europe/Paris"

[imap]
host = "{self.dovecot.host}"
port = {self.dovecot.imap_port}
security = "none"
username = "{self.firm.address}"
password = "{self.firm.password}"
timeout = 10

[smtp]
host = "{self.smtp.host}"
port = {self.smtp.port}
security = "none"
username = "{SMTP_USERNAME}"
password = "{SMTP_PASSWORD}"
timeout = 10

[firm]
name = "{FIRM_NAME}"
sender = "{self.sender}"
addresses = ["{self.firm.address}", "{self.billing.address}"]
owners = ["{self.owner.address}"]
payment_senders = ["{BANK}"]
authserv_id = "{AUTHSERV_ID}"
iban = "{IBAN}"
""", encoding="utf-8")
        for name in ("rules", "templates"):
            if not (self.home / name).exists():
                defaults.copy_defaults(name, self.home / name)
        return self.config_path

    def config(self) -> Config:
        return load_config(self.config_path)

    def new_daemon(self) -> app.Daemon:
        """A Daemon as `relance run` builds it: what a restart gets."""
        config = self.config()
        runtime, problems = app.load_runtime(config)
        assert runtime is not None, problems
        return app.Daemon(runtime, StateStore(config.state_dir), Journal(config.state_dir))

    @property
    def daemon(self) -> app.Daemon:
        if self._daemon is None:
            self._daemon = self.new_daemon()
        return self._daemon

    def pass_at(self, now: datetime) -> None:
        """One pass of the loop, as `relance run --once --now` does."""
        app.run_once(self.daemon, now)

    def mornings(self, first: date, last: date, hour: int = 9) -> None:
        """A pass each morning from `first` to `last`: the daemon's simulated weeks."""
        for day in days(first, last):
            self.pass_at(at(day, hour))

    def on(self, *mornings: date) -> None:
        """A pass on these mornings only, at 09:00: a quick way to a given point."""
        for day in mornings:
            self.pass_at(at(day))

    # -- the mailbox ---------------------------------------------------------------------
    def append(self, folder: str, msg: EmailMessage, user: MailUser | None = None,
               flags: tuple[bytes, ...] = (b"\\Seen",)) -> None:
        with self.dovecot.imap_client(user or self.firm) as client:
            client.append(folder, msg.as_bytes(), flags=flags)

    def messages(self, user: MailUser, folder: str = "INBOX") -> list[EmailMessage]:
        """Every message in a folder of `user`, oldest first, parsed."""
        with self.dovecot.imap_client(user) as client:
            client.select_folder(folder, readonly=True)
            uids = client.search(["ALL"])
            fetched = client.fetch(uids, [b"BODY.PEEK[]"]) if uids else {}
        return [parse(fetched[uid][b"BODY[]"]) for uid in sorted(fetched)]

    def notices(self) -> list[EmailMessage]:
        """What relance told the owner about cases, oldest first (the weekly digest aside)."""
        return [m for m in self.messages(self.owner) if m["X-Relance-Notice"] != "digest"]

    def received_by(self, user: MailUser) -> list[EmailMessage]:
        """What the SMTP relay accepted for `user` (the outside world's view)."""
        return [parse(m.data) for m in self.smtp.received_by(user.address)]

    # -- the state -----------------------------------------------------------------------
    def case(self, number: str) -> Case:
        with StateStore(self.config().state_dir).reading() as view:
            found = view.get_case(number)
        assert found is not None, f"no case {number}"
        return found

    def cases(self) -> dict[str, Case]:
        with StateStore(self.config().state_dir).reading() as view:
            return view.cases()

    def journal(self, number: str | None = None) -> list[dict[str, object]]:
        return list(Journal(self.config().state_dir).entries(number))


def open_office(
    dovecot: Dovecot, smtp: SmtpServer, new_user: Callable[[str], MailUser], home: Path,
    *, mode: str = "send",
) -> Office:
    """A fresh firm (firm mailbox, owner, billing address) with its relance.toml written."""
    office = Office(dovecot, smtp, home, firm=new_user("firm"), owner=new_user("owner"),
                    billing=new_user("billing"), mode=mode)
    office.write_config()
    return office
