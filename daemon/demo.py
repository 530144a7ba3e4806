"""`relance demo`: the whole loop on embedded servers, two simulated months, narrated.

A newcomer sees what relance does without an account: a small firm's mailbox with a few
invoices, clients that pay, answer, or stay silent, and the daemon deciding each day at
09:00. Nothing is left running and nothing is written outside a temporary directory.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from relance import app, defaults
from relance.config import load_config
from relance.core import commands as owner
from relance.demo_servers import DemoAccount, DemoServers
from relance.mailbox.imap import Mailbox
from relance.mailbox.parse import parse_headers
from relance.store.journal import Journal
from relance.store.state import StateStore

TZ = ZoneInfo("Europe/Paris")
FIRM = "compta@atelier-dupont.test"
BILLING = "facturation@atelier-dupont.test"
OWNER = "marie@atelier-dupont.test"
START = date(2026, 11, 2)
DAYS = 66
PASSWORD = "demo"


@dataclass(frozen=True)
class Client:
    name: str
    address: str


MARTIN = Client("Boulangerie Martin", "contact@boulangerie-martin.test")
LEFEVRE = Client("Garage Lefèvre", "compta@garage-lefevre.test")
ROUX = Client("Cabinet Roux", "admin@cabinet-roux.test")
NOVA = Client("Studio Nova", "hello@studio-nova.test")
CLIENTS = (MARTIN, LEFEVRE, ROUX, NOVA)


def _at(d: date, hour: int, minute: int = 0) -> datetime:
    return datetime(d.year, d.month, d.day, hour, minute, tzinfo=TZ)


def _mail(sender: str, to: str, subject: str, body: str, when: datetime,
          **headers: str) -> EmailMessage:
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


def _invoice(number: str, client: Client, amount: str, issued: date, due: date,
             sender: str = f"Atelier Dupont - Comptabilité <{FIRM}>") -> EmailMessage:
    body = (
        f"Bonjour,\n\nVeuillez trouver ci-joint notre facture n°{number} du "
        f"{issued:%d/%m/%Y}.\n\nMontant : {amount} € TTC\nÉchéance : {due:%d/%m/%Y}\n\n"
        "Règlement par virement : FR76 3000 6000 0112 3456 7890 189\n\n"
        "Bien cordialement,\nMarie Dupont\nAtelier Dupont SARL\n"
    )
    msg = _mail(sender, f"{client.name} <{client.address}>", f"Facture n°{number}", body,
                _at(issued, 11, 12))
    msg.add_attachment(_tiny_pdf(f"Facture {number} - {amount} EUR"), maintype="application",
                       subtype="pdf", filename=f"{number}.pdf")
    return msg


def _tiny_pdf(text: str) -> bytes:
    """A one-page PDF, so reminders have an invoice to attach again."""
    from fpdf import FPDF  # test/demo dependency; pypdf only reads

    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("helvetica", size=14)
    pdf.cell(text=text.encode("latin-1", "replace").decode("latin-1"))
    return bytes(pdf.output())


def seed(servers: DemoServers) -> None:
    """The firm's mailbox as it is on the first simulated morning."""
    invoices = [
        _invoice("F-2026-0040", MARTIN, "1 234,56", date(2026, 10, 20), date(2026, 11, 19)),
        _invoice("F-2026-0041", LEFEVRE, "860,00", date(2026, 10, 28), date(2026, 11, 27)),
        _invoice("F-2026-0042", ROUX, "2 400,00", date(2026, 10, 30), date(2026, 12, 5)),
    ]
    for msg in invoices:
        servers.append(FIRM, "Sent", msg.as_bytes(), ("\\Seen",))
    quote = _mail(FIRM, MARTIN.address, "Devis n°D-2026-0007",
                  "Bonjour,\n\nVoici notre devis pour la vitrine : 3 200,00 € HT.\n",
                  _at(date(2026, 10, 29), 16))
    servers.append(FIRM, "Sent", quote.as_bytes(), ("\\Seen",))
    # Invoicing software sends from the billing address and BCCs the firm's mailbox.
    bcc = _invoice("2026-118", NOVA, "450,00", date(2026, 11, 3), date(2026, 12, 3),
                   sender=f"Atelier Dupont <{BILLING}>")
    bcc.replace_header("Subject", "FACTURE 2026-118")
    servers.append(FIRM, "INBOX", bcc.as_bytes())
    news = _mail("news@fournisseur.test", FIRM, "Nos nouveautés de novembre",
                 "Découvrez nos nouveaux produits !", _at(date(2026, 11, 1), 7))
    servers.append(FIRM, "INBOX", news.as_bytes())


def _reply_to_last_reminder(servers: DemoServers, client: Client, when: datetime,
                            body: str, **headers: str) -> str | None:
    """The client answers the last reminder they received, from their own mail program."""
    received = [parse_headers(raw) for raw in servers.messages(client.address)]
    reminders = [m for m in received if "x-relance-step" in m.headers]
    if not reminders:
        return None
    last = reminders[-1]
    subject = last.subject if last.subject.lower().startswith("re:") else f"Re: {last.subject}"
    reply = _mail(f"{client.name} <{client.address}>", FIRM, subject, body, when,
                  In_Reply_To=last.message_id,
                  References=" ".join((*last.references, last.message_id)), **headers)
    servers.append(FIRM, "INBOX", reply.as_bytes())
    return last.subject


# A scene changes the world and returns when it happened (relance reacts then, as IDLE would).
Scene = Callable[[DemoServers, Path, Callable[[str], None]], datetime | None]


def _lefevre_answers(
    servers: DemoServers, home: Path, say: Callable[[str], None]
) -> datetime | None:
    when = _at(date(2026, 12, 3), 14, 20)
    subject = _reply_to_last_reminder(
        servers, LEFEVRE, when,
        "Bonjour,\n\nNous avons un souci avec la dernière livraison, pouvez-vous nous "
        "rappeler avant que nous réglions ?\n\nCordialement,\nPaul Lefèvre\n")
    if subject:
        say(f"14:20 Garage Lefèvre answers '{subject}' in the thread")
    return when


def _nova_away(
    servers: DemoServers, home: Path, say: Callable[[str], None]
) -> datetime | None:
    when = _at(date(2026, 12, 8), 9, 5)
    subject = _reply_to_last_reminder(
        servers, NOVA, when,
        "Je suis absente jusqu'au 4 janvier. Pour toute urgence : studio@studio-nova.test\n",
        Auto_Submitted="auto-replied")
    if subject:
        say("09:05 Studio Nova's out-of-office answers the reminder")
    return when


def _roux_pays(
    servers: DemoServers, home: Path, say: Callable[[str], None]
) -> datetime | None:
    store = StateStore(home / "state")
    now = _at(date(2026, 12, 10), 18)
    with store.transaction() as tx:
        case = tx.get_case("F-2026-0042")
        if case is None:
            return None
        tx.put_case(owner.paid(case, now))
    Journal(home / "state").append("owner-paid", at=now, case="F-2026-0042", via="shell")
    say("18:00 the owner types `relance paid F-2026-0042`: Cabinet Roux paid by transfer")
    return None


# What happens during a simulated day, after relance's 09:00 pass.
SCENES: dict[date, Scene] = {
    date(2026, 12, 3): _lefevre_answers,
    date(2026, 12, 8): _nova_away,
    date(2026, 12, 10): _roux_pays,
}


def _config_text(servers: DemoServers, home: Path) -> str:
    return f"""mode = "send"
timezone = "Europe/Paris"

[imap]
host = "{servers.imap_host}"
port = {servers.imap_port}
security = "none"
username = "{FIRM}"
password = "{PASSWORD}"
timeout = 10

[smtp]
host = "{servers.smtp_host}"
port = {servers.smtp_port}
security = "none"
username = "{FIRM}"
password = "{PASSWORD}"
timeout = 10

[firm]
name = "Atelier Dupont SARL"
sender = "Atelier Dupont - Comptabilité <{FIRM}>"
addresses = ["{FIRM}", "{BILLING}"]
owners = ["{OWNER}"]
iban = "FR76 3000 6000 0112 3456 7890 189"
"""


def _money(amount: object, currency: object) -> str:
    from decimal import Decimal

    from babel.numbers import format_currency

    if amount is None:
        return "no amount"
    return format_currency(Decimal(str(amount)), str(currency or "EUR"), locale="fr_FR")


def _body(raw: bytes) -> str:
    from relance.mailbox.parse import parse_message

    mail = parse_message(raw)
    attached = ", ".join(a.filename for a in mail.attachments) or "nothing"
    return "\n".join(f"  | {line}" for line in
                     [f"Subject: {mail.subject}", "", *mail.text.rstrip().splitlines()]) + (
        f"\n  (attached: {attached})")


def narrate(entry: dict[str, Any], say: Callable[[str], None]) -> None:
    """One journal entry as a sentence a newcomer understands."""
    event, case = entry["event"], entry.get("case") or ""
    lines = {
        "invoice-found": lambda e: (
            f"{case}: invoice found, {_money(e.get('amount'), e.get('currency'))} due "
            f"{e.get('due')}, for {e.get('client_name') or e.get('client')}"),
        "reminder-sent": lambda e: (
            f"{case}: {e.get('step_name')} sent to {e.get('to')}"
            + (f" ({e['days_late']} days late)" if (e.get("days_late") or 0) > 0 else "")),
        "client-replied": lambda e: f"{case}: the client replied → chase paused, owner told",
        "auto-reply": lambda e: f"{case}: an automatic reply, not an answer: no pause"
        + (f", but the next step waits for the return date ({e['waits_until'][:10]})"
           if e.get("waits_until") else ""),
        "handed-over": lambda e: (
            f"{case}: {e.get('step_name')} prepared and handed to the owner"),
        "owner-notified": lambda e: f"{case or 'firm'}: owner notified ({e.get('kind')})",
        "bounce": lambda e: f"{case}: bounce → address flagged",
    }
    describe = lines.get(event)
    if describe is not None:
        say(describe(entry))


def main(fast: bool = False, out: Callable[[str], None] | None = None) -> int:
    """Run the demo; returns 0 when the loop behaved as the story says."""
    write = out or (lambda text: print(text, flush=True))
    accounts = [DemoAccount(a, PASSWORD) for a in (FIRM, BILLING, OWNER)]
    accounts += [DemoAccount(c.address, PASSWORD) for c in CLIENTS]
    home = Path(tempfile.mkdtemp(prefix="relance-demo-"))
    clock = {"day": START}

    def say(text: str) -> None:
        write(f"{clock['day']:%a %d %b %Y}  {text}")

    quiet = logging.getLogger("relance")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # the narration tells the story; the log would repeat it
    try:
        with DemoServers(accounts) as servers:
            write(f"relance demo: embedded IMAP on {servers.imap_host}:{servers.imap_port}, "
                  f"SMTP on {servers.smtp_host}:{servers.smtp_port}, state in {home}")
            write("The firm Atelier Dupont has sent 4 invoices and 1 quote; "
                  "relance wakes every morning at 09:00.\n")
            seed(servers)
            (home / "relance.toml").write_text(_config_text(servers, home), encoding="utf-8")
            for name in ("rules", "templates"):
                defaults.copy_defaults(name, home / name)
            config = load_config(home / "relance.toml")
            runtime, problems = app.load_runtime(config)
            if runtime is None:
                for problem in problems:
                    write(problem)
                return 1
            daemon = app.Daemon(runtime, StateStore(config.state_dir),
                                Journal(config.state_dir))
            daemon.on_event = lambda entry: narrate(entry, say)
            with Mailbox(config.imap) as mailbox:
                for offset in range(DAYS):
                    day = START + timedelta(days=offset)
                    clock["day"] = day
                    daemon.run_pass(mailbox, _at(day, 9, 0))
                    scene = SCENES.get(day)
                    happened = scene(servers, home, say) if scene is not None else None
                    if happened is not None:
                        daemon.run_pass(mailbox, happened + timedelta(seconds=5))
                    if not fast:
                        time.sleep(0.02)
            write("\nTwo months later, `relance status --all`:")
            from relance.commands import case_summary

            with StateStore(config.state_dir).reading() as view:
                cases = view.cases()
            end = _at(START + timedelta(days=DAYS), 9)
            for case in sorted(cases.values(), key=lambda c: c.number):
                row = case_summary(case, runtime, end)
                write(f"  {row['number']:<12} {row['client']:<32} {row['state']:<14} "
                      f"step {row['step']} ({row['step_name'] or '-'})"
                      + (f"  — {row['reason']}" if row["reason"] else ""))
            martin = [parse_headers(raw) for raw in servers.messages(MARTIN.address)]
            write(f"\nBoulangerie Martin's inbox holds {len(martin)} reminders, all in the "
                  "invoice's thread:")
            for m in martin:
                write(f"  {m.date:%d/%m} {m.subject}  (In-Reply-To {m.in_reply_to})")
            first = servers.messages(MARTIN.address)
            if len(first) > 1:
                write("\nThe first reminder after the due date, as the client read it:\n")
                write(_body(first[1]))
            owner_box = [parse_headers(raw) for raw in servers.messages(OWNER)]
            write(f"\nThe owner received {len(owner_box)} notices:")
            for m in owner_box:
                write(f"  {m.date:%d/%m} {m.subject}")
        write("\nAll servers stopped; nothing left running. Try `relance init` next.")
        return 0
    finally:
        quiet.setLevel(level)
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
