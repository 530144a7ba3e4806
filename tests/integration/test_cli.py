"""The command line end to end: `relance VERB` against the real Dovecot and SMTP relay.

Most verbs run in-process through `relance.cli.main` (fast, output seen with capsys); a few
run as `python -m relance` in a subprocess, to prove the real entry point, its exit codes
and its logging on stderr.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from relance import cli
from relance.model import CaseState
from relance.store.state import StateStore
from tests.integration.helpers import Office, at, invoice_mail, open_office, sent_on, text_of
from tests.mailservers import Dovecot, MailUser, MakeUser, SmtpServer

pytestmark = pytest.mark.dovecot

NUMBER = "F-2026-0042"
ISSUED = date(2026, 4, 7)
DUE = date(2026, 5, 7)
COURTESY = date(2026, 5, 4)
REMINDER_1 = date(2026, 5, 12)
REMINDER_2 = date(2026, 5, 26)  # Whit Monday 25 May is a holiday
STATUS_KEYS = {
    "number", "client", "client_addresses", "amount", "paid", "balance", "currency",
    "issue_date", "due_date", "days_late", "step", "step_name", "state", "reason",
    "next_action",
}
REPO_ROOT = Path(__file__).resolve().parents[2]


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


@pytest.fixture
def chased(office: Office, client: MailUser) -> Office:
    """A firm whose invoice F-2026-0042 got its courtesy notice and first reminder."""
    office.append("Sent", invoice_mail(NUMBER, sender=office.sender,
                                       client=f"Boulangerie Martin <{client.address}>",
                                       issued=ISSUED, due=DUE))
    office.on(date(2026, 4, 20), COURTESY, REMINDER_1)
    assert len(office.messages(client)) == 2
    return office


class Relance:
    """`relance VERB ... --config FILE` in-process: (exit status, stdout, stderr)."""

    def __init__(self, office: Office, capsys: pytest.CaptureFixture[str]) -> None:
        self.config = str(office.config_path)
        self.capsys = capsys

    def __call__(self, *args: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        status = cli.main([*args, "--config", self.config])
        captured = self.capsys.readouterr()
        return status, captured.out, captured.err


@pytest.fixture
def relance(office: Office, capsys: pytest.CaptureFixture[str]) -> Relance:
    return Relance(office, capsys)


def python_m_relance(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "relance", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60, check=False)


# -- init and check -----------------------------------------------------------------------
def test_init_writes_config_rules_and_templates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "relance"

    assert cli.main(["init", str(target)]) == 0

    assert (target / "relance.toml").read_text(encoding="utf-8").startswith("#")
    assert sorted(p.name for p in (target / "rules").glob("*.yaml")) == [
        "calendar.yaml", "clients.yaml", "timing.yaml"
    ]
    assert (target / "templates" / "fr" / "reminder-1.txt").is_file()
    assert (target / "templates" / "en" / "reminder-1.txt").is_file()
    assert f"wrote {target / 'relance.toml'}" in capsys.readouterr().out


def test_config_written_by_init_passes_check_once_filled_in(
    office: Office, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The owner's first hour: `relance init`, fill in the servers, `relance check`."""
    target = tmp_path / "new"
    assert cli.main(["init", str(target)]) == 0
    config = target / "relance.toml"
    imap, smtp = config.read_text(encoding="utf-8").split("\n[smtp]\n")
    filled = {
        "imap": (office.dovecot.host, office.dovecot.imap_port, office.firm.address,
                 office.firm.password),
        "smtp": (office.smtp.host, office.smtp.port, office.smtp.username,
                 office.smtp.password),
    }

    def fill(section: str, text: str) -> str:
        host, port, username, password = filled[section]
        text = re.sub(r'(?m)^host = ".*"', f'host = "{host}"', text)
        text = re.sub(r"(?m)^port = \d+", f"port = {port}", text)
        text = re.sub(r'(?m)^security = "tls"', 'security = "none"', text)
        text = re.sub(r'(?m)^username = ".*"', f'username = "{username}"', text)
        return re.sub(r"(?m)^password_file = .*", f'password = "{password}"', text)

    config.write_text(fill("imap", imap) + "\n[smtp]\n" + fill("smtp", smtp), encoding="utf-8")
    capsys.readouterr()

    status = cli.main(["check", "--config", str(config)])

    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "imap sent folder: Sent" in captured.out
    assert "rules: 5 steps (courtesy, reminder-1, reminder-2, reminder-3, formal-notice)" in (
        captured.out)


def test_init_keeps_an_existing_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["init", str(tmp_path)]) == 0
    (tmp_path / "relance.toml").write_text("# mine\n", encoding="utf-8")

    assert cli.main(["init", str(tmp_path)]) == 1

    assert (tmp_path / "relance.toml").read_text(encoding="utf-8") == "# mine\n"
    assert "--force" in capsys.readouterr().err


def test_check_reports_sent_folder_and_capabilities(relance: Relance) -> None:
    status, out, err = relance("check")

    assert status == 0, err
    assert "imap sent folder: Sent" in out
    (capabilities,) = [line for line in out.splitlines()
                       if line.startswith("imap capabilities:")]
    assert {"IDLE", "SPECIAL-USE", "UIDPLUS"} <= set(capabilities.upper().split())
    assert "smtp:" in out
    assert "all is well" in out


def test_check_reports_every_rule_error_with_file_line_and_column(
    office: Office, relance: Relance
) -> None:
    calendar = office.home / "rules" / "calendar.yaml"
    timing = office.home / "rules" / "timing.yaml"
    calendar_text = calendar.read_text(encoding="utf-8").replace("offset: +18d", "offset: +18x")
    calendar.write_text(calendar_text, encoding="utf-8")
    timing_text = timing.read_text(encoding="utf-8").replace('start: "08:30"', 'start: "8h30"')
    timing.write_text(timing_text, encoding="utf-8")

    status, _out, err = relance("check")

    assert status == 1
    places = re.findall(r"^\S*/rules/(\w+\.yaml):(\d+):(\d+): ", err, re.MULTILINE)
    assert {(name, int(line), int(col)) for name, line, col in places} == {
        ("calendar.yaml", *place_of(calendar_text, "+18x")),
        ("timing.yaml", *place_of(timing_text, '"8h30"')),
    }


def test_check_reports_an_unknown_config_key_with_its_line(
    office: Office, relance: Relance
) -> None:
    text = office.config_path.read_text(encoding="utf-8")
    text = text.replace("timeout = 10\n\n[smtp]", "timeout = 10\ncolour = \"blue\"\n\n[smtp]")
    office.config_path.write_text(text, encoding="utf-8")

    status, _out, err = relance("check")

    assert status == 1
    assert f'{office.config_path}:{line_of(text, "colour =")}: ' in err
    assert "colour" in err


def test_check_exits_1_when_the_imap_password_is_wrong(office: Office, relance: Relance) -> None:
    text = office.config_path.read_text(encoding="utf-8")
    office.config_path.write_text(
        text.replace(f'password = "{office.firm.password}"', 'password = "wrong"'),
        encoding="utf-8")

    status, _out, err = relance("check")

    assert status == 1
    assert "imap" in err


def test_imap_password_from_the_environment(
    office: Office, relance: Relance, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = office.config_path.read_text(encoding="utf-8")
    office.config_path.write_text(
        text.replace(f'password = "{office.firm.password}"\n', ""), encoding="utf-8")
    monkeypatch.setenv("RELANCE_IMAP__PASSWORD", office.firm.password)

    status, out, err = relance("check")

    assert status == 0, err
    assert "all is well" in out


def test_password_file_is_relative_to_the_config(
    office: Office, relance: Relance, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (office.home / "secrets").mkdir()
    (office.home / "secrets" / "imap").write_text(office.firm.password + "\n")
    text = office.config_path.read_text(encoding="utf-8")
    office.config_path.write_text(
        text.replace(f'password = "{office.firm.password}"', 'password_file = "secrets/imap"'),
        encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    status, out, err = relance("check")

    assert status == 0, err
    assert "all is well" in out


def line_of(text: str, needle: str) -> int:
    return place_of(text, needle)[0]


def place_of(text: str, needle: str) -> tuple[int, int]:
    """(line, column), both from 1, of the one place `needle` appears in `text`."""
    (place,) = [(n, line.index(needle) + 1)
                for n, line in enumerate(text.splitlines(), start=1) if needle in line]
    return place


# -- status and show ----------------------------------------------------------------------
def test_status_json_has_the_documented_keys(
    chased: Office, client: MailUser, relance: Relance
) -> None:
    status, out, _err = relance("status", "--json", "--now", at(date(2026, 5, 13)).isoformat())

    assert status == 0
    shown = json.loads(out)
    assert shown["now"] == at(date(2026, 5, 13)).isoformat()
    (row,) = shown["cases"]
    assert set(row) == STATUS_KEYS
    assert row == {
        "number": NUMBER,
        "client": "Boulangerie Martin",
        "client_addresses": [client.address],
        "amount": "1234.56",
        "paid": row["paid"],
        "balance": "1234.56",
        "currency": "EUR",
        "issue_date": "2026-04-07",
        "due_date": "2026-05-07",
        "days_late": 6,
        "step": 2,
        "step_name": "reminder-1",
        "state": "chasing",
        "reason": None,
        "next_action": {
            "step": 3,
            "name": "reminder-2",
            "channel": "email",
            "at": at(REMINDER_2, 8, 30).isoformat(),
        },
    }
    assert Decimal(row["paid"]) == 0


def test_status_lists_open_cases_as_a_table(chased: Office, relance: Relance) -> None:
    status, out, _err = relance("status", "--now", at(date(2026, 5, 13)).isoformat())

    assert status == 0
    header, row = out.splitlines()
    assert header.split()[:3] == ["NUMBER", "CLIENT", "DUE"]
    assert row.startswith(NUMBER)
    assert "chasing" in row
    assert "reminder-2 2026-05-26 08:30" in row


def test_show_prints_the_next_reminder_as_it_will_leave(chased: Office, relance: Relance) -> None:
    status, out, _err = relance("show", NUMBER, "--now", at(date(2026, 5, 13)).isoformat())

    assert status == 0
    assert "state: chasing" in out
    assert "reminder-sent" in out  # the timeline
    _, after = out.split("\nnext: ", 1)
    assert after.startswith(f"reminder-2 (email) at {at(REMINDER_2, 8, 30).isoformat()}")
    text = after.replace("\u202f", " ").replace("\u00a0", " ")
    assert "1 234,56 €" in text
    assert "7 mai 2026" in text


def test_show_prints_the_subject_and_body_the_reminder_will_carry(
    chased: Office, client: MailUser, relance: Relance
) -> None:
    _status, out, _err = relance("show", NUMBER, "--now", at(date(2026, 5, 13)).isoformat())

    assert f"Subject: Re: Facture n° {NUMBER}" in out
    assert f"En pièce jointe : {NUMBER}.pdf." in out
    # and the reminder that did leave says so too
    assert f"En pièce jointe : {NUMBER}.pdf." in text_of(chased.messages(client)[1])


def test_show_unknown_number_exits_1(office: Office, relance: Relance) -> None:
    status, _out, err = relance("show", "F-0000")

    assert status == 1
    assert "F-0000" in err


# -- the owner's commands -----------------------------------------------------------------
def test_pause_for_14_days_then_the_chase_goes_on(
    chased: Office, client: MailUser, relance: Relance
) -> None:
    status, out, _err = relance("pause", NUMBER, "--for", "14d",
                                "--now", at(date(2026, 5, 20), 18).isoformat())
    assert (status, out.strip()) == (0, f"{NUMBER}: paused, balance 1234.56 EUR, until 2026-06-03")

    chased.mornings(date(2026, 5, 21), date(2026, 6, 5))

    # reminder-2 (26 May) waits for the end of the pause, 3 June at 18:00: the next morning
    assert [sent_on(m) for m in chased.messages(client)][2:] == [at(date(2026, 6, 4))]
    assert chased.case(NUMBER).state is CaseState.CHASING


def test_pause_then_resume(chased: Office, client: MailUser, relance: Relance) -> None:
    assert relance("pause", NUMBER, "--now", at(date(2026, 5, 20), 18).isoformat())[0] == 0
    chased.mornings(date(2026, 5, 21), date(2026, 5, 27))
    assert len(chased.messages(client)) == 2
    assert chased.case(NUMBER).state is CaseState.PAUSED

    status, out, _err = relance("resume", NUMBER, "--now", at(date(2026, 5, 27), 18).isoformat())
    chased.mornings(date(2026, 5, 28), date(2026, 5, 28))

    assert (status, out.split(",")[0]) == (0, f"{NUMBER}: chasing")
    assert [sent_on(m) for m in chased.messages(client)][2:] == [at(date(2026, 5, 28))]


def test_stop_ends_the_chase(chased: Office, client: MailUser, relance: Relance) -> None:
    status, out, _err = relance("stop", NUMBER, "--now", at(date(2026, 5, 14)).isoformat())
    chased.on(REMINDER_2, date(2026, 6, 8), date(2026, 6, 16))  # when the next steps were due

    assert (status, out.split(",")[0].strip()) == (0, f"{NUMBER}: stopped")
    assert len(chased.messages(client)) == 2
    assert relance("status", "--json")[1].count(NUMBER) == 0  # no longer open
    assert json.loads(relance("status", "--json", "--all")[1])["cases"][0]["state"] == "stopped"


def test_partial_payment_leaves_the_balance_chased(
    chased: Office, client: MailUser, relance: Relance
) -> None:
    status, out, _err = relance("paid", NUMBER, "--amount", "234,56",
                                "--now", at(date(2026, 5, 14)).isoformat())
    chased.mornings(date(2026, 5, 15), REMINDER_2)

    assert (status, out.strip()) == (0, f"{NUMBER}: chasing, balance 1000.00 EUR")
    reminder_2 = chased.messages(client)[2]
    assert "1 000,00 €" in text_of(reminder_2)


def test_command_on_unknown_number_exits_1(office: Office, relance: Relance) -> None:
    status, _out, err = relance("paid", "F-0000")

    assert status == 1
    assert "F-0000" in err


def test_command_refused_exits_1(chased: Office, relance: Relance) -> None:
    assert relance("stop", NUMBER)[0] == 0

    status, _out, err = relance("resume", NUMBER)

    assert status == 1
    assert "stopped" in err


def test_pause_for_a_duration_it_cannot_read_exits_1(chased: Office, relance: Relance) -> None:
    status, _out, err = relance("pause", NUMBER, "--for", "2 fortnights")

    assert status == 1
    assert "2 fortnights" in err
    assert chased.case(NUMBER).state is CaseState.CHASING


def test_paid_with_an_amount_it_cannot_read_exits_1(chased: Office, relance: Relance) -> None:
    status, _out, err = relance("paid", NUMBER, "--amount", "abc")

    assert status == 1
    assert '"abc" is not an amount' in err
    assert chased.case(NUMBER).state is CaseState.CHASING


def test_second_daemon_on_the_same_state_refuses_to_run(
    office: Office, relance: Relance
) -> None:
    with StateStore(office.config().state_dir).lock_daemon():
        status, _out, err = relance("run", "--once", "--now", at(COURTESY).isoformat())

    assert status == 1
    assert "running" in err


@pytest.mark.parametrize("args", [
    [],
    ["frobnicate"],
    ["pause"],
    ["pause", NUMBER, "--for", "14d", "--until", "2026-06-01"],
    ["pause", NUMBER, "--until", "next week"],
    ["run", "--once", "--now", "tomorrow"],
    ["status", "--colour"],
])
def test_bad_usage_exits_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        cli.main(args)

    assert stopped.value.code == 2
    assert "usage: relance" in capsys.readouterr().err


# -- the real entry point -----------------------------------------------------------------
def test_python_m_relance_run_once_sends_and_logs(office: Office, client: MailUser) -> None:
    office.append("Sent", invoice_mail(NUMBER, sender=office.sender, client=client.address,
                                       issued=ISSUED, due=DUE))

    done = python_m_relance("run", "--once", "--config", str(office.config_path),
                            "--now", at(COURTESY).isoformat(), cwd=office.home)

    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    events = re.findall(r"event=([\w-]+)", done.stderr)
    assert events[:2] == ["invoice-found", "reminder-sent"]
    assert "Traceback" not in done.stderr
    (courtesy,) = office.messages(client)
    assert sent_on(courtesy) == at(COURTESY)


def test_python_m_relance_bad_usage_exits_2(tmp_path: Path) -> None:
    done = python_m_relance("status", "--json", "--colour", cwd=tmp_path)

    assert done.returncode == 2
    assert "usage: relance" in done.stderr


def test_python_m_relance_without_config_exits_1(tmp_path: Path) -> None:
    done = python_m_relance("status", cwd=tmp_path)

    assert done.returncode == 1
    assert "relance.toml" in done.stderr
    assert "Traceback" not in done.stderr


def test_weekly_digest_lists_what_was_paid_since_the_last_one(
    chased: Office, relance: Relance
) -> None:
    """`relance paid` on Thursday 14 May: the digest of Monday 18 May lists the invoice
    as paid since the last digest (sent with the reminder of Tuesday 12 May), which did
    not."""
    status, _out, _err = relance("paid", NUMBER, "--now", at(date(2026, 5, 14)).isoformat())
    assert status == 0
    chased.on(date(2026, 5, 18))
    digests = [m for m in chased.messages(chased.owner) if m["X-Relance-Notice"] == "digest"]
    by_day = {sent_on(m).date(): text_of(m) for m in digests}
    assert "Réglées depuis le dernier point (1)" in by_day[date(2026, 5, 18)]
    assert NUMBER in by_day[date(2026, 5, 18)]
    assert "Réglées" not in by_day[REMINDER_1]
