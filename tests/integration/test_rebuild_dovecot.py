"""`relance rebuild` end to end: a state file lost after weeks of chasing is rebuilt from
the mailbox and the journal, and the next pass sends the next step only."""

from __future__ import annotations

import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from relance.model import CaseState
from tests.integration.helpers import Office, at, invoice_mail, message, open_office
from tests.mailservers import Dovecot, MakeUser, SmtpServer

pytestmark = pytest.mark.dovecot

CHASED, REPLIED, PAID = "F-2026-0042", "F-2026-0043", "F-2026-0044"
ISSUED, DUE = date(2026, 4, 7), date(2026, 5, 7)
COURTESY, REMINDER_1, REMINDER_2 = date(2026, 5, 4), date(2026, 5, 12), date(2026, 5, 26)


def relance(office: Office, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "relance", *args, "--config",
                           str(office.config_path)], cwd=office.home, capture_output=True,
                          text=True, timeout=120, check=False)


def test_rebuild_after_a_lost_state_sends_the_next_step_only(
    dovecot: Dovecot, smtp_server: SmtpServer, make_user: MakeUser, tmp_path: Path
) -> None:
    office = open_office(dovecot, smtp_server, make_user, tmp_path)
    clients = {n: make_user("client") for n in (CHASED, REPLIED, PAID)}
    for number, client in clients.items():
        office.append("Sent", invoice_mail(number, sender=office.sender,
                                           client=f"Client <{client.address}>",
                                           issued=ISSUED, due=DUE))
    office.on(date(2026, 4, 20), COURTESY)
    paid = relance(office, "paid", PAID, "--now", at(date(2026, 5, 5)).isoformat())
    assert paid.returncode == 0, paid.stderr
    office.on(REMINDER_1)
    reminder = office.messages(clients[REPLIED])[-1]
    office.append("INBOX", message(
        clients[REPLIED].address, office.firm.address, f"Re: {reminder['Subject']}",
        f"Bonjour, nous contestons la facture {REPLIED}, je vous appelle.\n",
        at(date(2026, 5, 13), 8),
        In_Reply_To=reminder["Message-ID"], References=reminder["Message-ID"]))
    office.on(date(2026, 5, 13))
    before = {n: len(office.received_by(c)) for n, c in clients.items()}
    assert before == {CHASED: 2, REPLIED: 2, PAID: 1}
    assert office.case(REPLIED).state is CaseState.PAUSED
    decided = {n: (c.state, c.paid, c.paused_until, c.steps) for n, c in office.cases().items()}

    state_dir = office.config().state_dir
    (state_dir / "state.json").write_text('{"cases": {"1": {"number": "F-20', encoding="utf-8")
    (state_dir / "state.log").write_bytes(b"garbage\n")
    refused = relance(office, "run", "--once", "--now", at(REMINDER_2).isoformat())
    assert refused.returncode == 1
    assert f"{state_dir / 'state.json'}: line 1" in refused.stderr
    assert "Traceback" not in refused.stderr

    rebuilt = relance(office, "rebuild", "--now", at(date(2026, 5, 20)).isoformat())

    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "cases: 3 from the mailbox (3 known to the journal)" in rebuilt.stdout
    assert "steps restored: 5" in rebuilt.stdout
    assert sorted(p.name for p in state_dir.glob("state.*.broken-*")) == [
        "state.json.broken-20260520T090000", "state.log.broken-20260520T090000"]
    assert {n: (c.state, c.paid, c.paused_until, c.steps)
            for n, c in office.cases().items()} == decided
    assert office.case(CHASED).last_step == 2
    assert office.case(REPLIED).state is CaseState.PAUSED
    assert office.case(PAID).state is CaseState.PAID
    assert [e["event"] for e in office.journal()][-1] == "state-rebuilt"

    again = relance(office, "run", "--once", "--now", at(REMINDER_2).isoformat())

    assert again.returncode == 0, again.stderr
    after = {n: len(office.received_by(c)) for n, c in clients.items()}
    assert after == {CHASED: 3, REPLIED: 2, PAID: 1}  # the next step, nothing twice
    assert office.received_by(clients[CHASED])[-1]["X-Relance-Step"] == "3"
    assert office.case(REPLIED).state is CaseState.PAUSED
    assert office.case(PAID).state is CaseState.PAID


def test_rebuild_refuses_while_the_daemon_runs(
    dovecot: Dovecot, smtp_server: SmtpServer, make_user: MakeUser, tmp_path: Path
) -> None:
    office = open_office(dovecot, smtp_server, make_user, tmp_path)
    store = office.daemon.store
    with store.lock_daemon():
        refused = relance(office, "rebuild")
    assert refused.returncode == 1
    assert "relance is already running" in refused.stderr
    assert "stop the daemon first" in refused.stderr
    assert not list(store.state_dir.glob("*.broken-*"))
