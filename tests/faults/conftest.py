"""Fixtures for the fault-injection suite: a firm whose relance talks to Dovecot and SMTP
through fault proxies, its own SMTP relay (so scripted failures never leak into other
tests), and small readers of what the outside world received.

The firm is built with tests/integration/helpers.py (`open_office`); only its
relance.toml is rewritten, to point at the proxies and to use short timeouts.
"""

from __future__ import annotations

import email
import email.policy
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.faults.proxy import FaultProxy
from tests.integration.helpers import FIRM_NAME, IBAN, Office, invoice_mail, open_office
from tests.mailservers import (
    SMTP_PASSWORD,
    SMTP_USERNAME,
    Dovecot,
    MailUser,
    MakeUser,
    SmtpServer,
)

FULL = os.environ.get("RELANCE_FAULTS_FULL") == "1"
"""RELANCE_FAULTS_FULL=1: the long versions (200+ kill points, slow outages)."""

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Wired:
    """A firm on the test servers, its relance.toml aimed at two fault proxies."""

    office: Office
    imap: FaultProxy
    smtp: FaultProxy
    relay: SmtpServer  # the relay behind `smtp` (its own, or the session's)

    @property
    def state_dir(self) -> Path:
        return self.office.home / "state"


def write_config(office: Office, *, imap_port: int, smtp_port: int, timeout: float = 10,
                 mode: str = "send", extra: str = "") -> Path:
    """relance.toml as tests/integration/helpers.py writes it, with other ports and timeouts."""
    office.config_path.write_text(f"""\
mode = "{mode}"
timezone = "Europe/Paris"
{extra}
[imap]
host = "127.0.0.1"
port = {imap_port}
security = "none"
username = "{office.firm.address}"
password = "{office.firm.password}"
timeout = {timeout}

[smtp]
host = "127.0.0.1"
port = {smtp_port}
security = "none"
username = "{office.smtp.username}"
password = "{office.smtp.password}"
timeout = {timeout}

[firm]
name = "{FIRM_NAME}"
sender = "{office.sender}"
addresses = ["{office.firm.address}", "{office.billing.address}"]
owners = ["{office.owner.address}"]
iban = "{IBAN}"
""", encoding="utf-8")
    office._daemon = None  # the next pass reads the new file
    return office.config_path


def wire(dovecot: Dovecot, relay: SmtpServer, make_user: MakeUser, home: Path,
         *, timeout: float = 10, mode: str = "send") -> Wired:
    """A fresh firm whose relance goes through two new proxies; close them when done."""
    home.mkdir(parents=True, exist_ok=True)
    office = open_office(dovecot, relay, make_user, home, mode=mode)
    imap = FaultProxy(dovecot.host, dovecot.imap_port, "imap").start()
    smtp = FaultProxy(relay.host, relay.port, "smtp").start()
    write_config(office, imap_port=imap.port, smtp_port=smtp.port, timeout=timeout, mode=mode)
    return Wired(office, imap, smtp, relay)


@pytest.fixture
def relay(dovecot: Dovecot) -> Iterator[SmtpServer]:
    """An SMTP relay for this test alone: `fail_next` here never reaches another test."""
    with SmtpServer(dovecot, username=SMTP_USERNAME, password=SMTP_PASSWORD) as server:
        yield server


@pytest.fixture
def wired(dovecot: Dovecot, relay: SmtpServer, make_user: MakeUser,
          tmp_path: Path) -> Iterator[Wired]:
    """A firm behind proxies with 2-second timeouts, its own relay, and clean-up."""
    firm = wire(dovecot, relay, make_user, tmp_path / "firm", timeout=2)
    try:
        yield firm
    finally:
        firm.imap.close()
        firm.smtp.close()


def relance_cli(config: Path, *args: str, timeout: float = 60,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m relance ARGS --config CONFIG`, as a user would type it."""
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("RELANCE_", "NOTIFY_", "WATCHDOG_"))}
    clean.update(env or {})
    return subprocess.run([sys.executable, "-m", "relance", *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=timeout, env=clean,
                          cwd=REPO_ROOT)


def parsed(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def reminders_to(relay: SmtpServer, address: str) -> list[EmailMessage]:
    """What the relay accepted for `address` that relance wrote as a reminder."""
    return [m for m in (parsed(r.data) for r in relay.received_by(address))
            if "X-Relance-Step" in m]


def notices_to(relay: SmtpServer, address: str, kind: str | None = None) -> list[EmailMessage]:
    """Notices to the owner the relay accepted (optionally of one kind)."""
    found = [m for m in (parsed(r.data) for r in relay.received_by(address))
             if "X-Relance-Notice" in m]
    return [m for m in found if kind is None or str(m["X-Relance-Notice"]) == kind]


NUMBER = "F-2026-0042"
ISSUED = date(2026, 4, 7)
DUE = date(2026, 5, 7)  # a Thursday
COURTESY = date(2026, 5, 4)  # the default calendar's first step for DUE (see test_loop.py)
REMINDER_1 = date(2026, 5, 12)
REMINDER_2 = date(2026, 5, 26)


def send_invoice(office: Office, client: MailUser, number: str = NUMBER, *,
                 issued: date = ISSUED, due: date = DUE,
                 amount: str | None = "1 234,56") -> EmailMessage:
    """The firm sends an invoice from its mail program: the copy lands in Sent."""
    mail = invoice_mail(number, sender=office.sender, client=f"Client <{client.address}>",
                        issued=issued, due=due, amount=amount)
    office.append("Sent", mail)
    return mail
