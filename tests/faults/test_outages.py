"""Outages of the network, the servers, the disk and the clock, through fault proxies.

relance talks to the real Dovecot and to an SMTP relay of the test's own through
tests/faults/proxy.py, with 2-second timeouts. Each test breaks one thing at one moment
and looks at what the world saw: what the client received, what the owner was told, what
the state says, how long it took, what the command printed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest

from relance.mailbox.imap import IMAP_ERRORS
from relance.model import CaseState
from relance.store.journal import Journal
from relance.store.state import AtomicJSONStorage, StateLog, StateStore
from tests.faults.conftest import (
    COURTESY,
    DUE,
    FULL,
    NUMBER,
    REMINDER_1,
    REMINDER_2,
    REPO_ROOT,
    Wired,
    notices_to,
    relance_cli,
    reminders_to,
    send_invoice,
    write_config,
)
from tests.integration.helpers import Office, at, invoice_mail, message
from tests.mailservers import MailUser, MakeUser

pytestmark = pytest.mark.dovecot

TIMEOUT = 2.0  # the [imap]/[smtp] timeout the `wired` firm runs with
SLACK = 1.5  # scheduling, login and the rest of a pass on a loaded 2-core machine


@pytest.fixture
def client(make_user: MakeUser) -> MailUser:
    return make_user("client")


@pytest.fixture
def chased(wired: Wired, client: MailUser) -> Wired:
    """An invoice in Sent, known to relance (one quiet pass a week before its courtesy)."""
    send_invoice(wired.office, client)
    wired.office.pass_at(at(COURTESY - timedelta(days=7)))
    assert wired.office.case(NUMBER).state is CaseState.CHASING
    return wired


def journal_events(wired: Wired, name: str) -> list[dict[str, object]]:
    return [e for e in Journal(wired.state_dir).entries() if e["event"] == name]


# -- IMAP --------------------------------------------------------------------------------


def test_imap_stall_mid_pass_fails_within_the_timeout_and_the_next_run_works(
    chased: Wired, client: MailUser
) -> None:
    office = chased.office
    send_invoice(office, client, "F-2026-0043")  # new mail, so the pass FETCHes
    chased.imap.on_client(b" FETCH ", "stall")

    started = time.monotonic()
    with pytest.raises(IMAP_ERRORS):
        office.pass_at(at(COURTESY))
    took = time.monotonic() - started

    assert took < TIMEOUT + SLACK, f"a silent IMAP link held the pass {took:.1f} s"
    assert reminders_to(chased.relay, client.address) == []
    office.pass_at(at(COURTESY))
    assert "F-2026-0043" in office.cases()
    assert len(reminders_to(chased.relay, client.address)) == 1


def test_imap_server_silent_from_the_first_byte_fails_within_the_timeout(
    chased: Wired,
) -> None:
    chased.imap.stall()  # the TCP connection opens; the greeting never comes

    started = time.monotonic()
    result = relance_cli(chased.office.config_path, "run", "--once",
                         "--now", at(COURTESY).isoformat())
    took = time.monotonic() - started

    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert f"imap 127.0.0.1:{chased.imap.port}" in result.stderr
    assert "timed out" in result.stderr.lower()
    assert took < 5 + TIMEOUT + SLACK  # interpreter start-up, then the timeout
    chased.imap.unstall()


def test_imap_stall_costs_one_timeout_not_two(chased: Wired, client: MailUser) -> None:
    """After a read times out, relance logs out politely (LOGOUT) on the same dead link
    and waits a second timeout for its answer."""
    send_invoice(chased.office, client, "F-2026-0043")
    chased.imap.on_client(b" FETCH ", "stall")
    started = time.monotonic()
    with pytest.raises(IMAP_ERRORS):
        chased.office.pass_at(at(COURTESY))
    assert time.monotonic() - started < 1.5 * TIMEOUT


# -- SMTP --------------------------------------------------------------------------------


def test_smtp_link_cut_after_data_is_unknown_never_resent_and_the_owner_is_told(
    chased: Wired, client: MailUser
) -> None:
    office = chased.office
    chased.smtp.on_client(b"\r\n.\r\n", "cut_reply", after=b"X-Relance-Step:")

    office.pass_at(at(COURTESY))
    for day in (COURTESY + timedelta(days=1), COURTESY + timedelta(days=2), REMINDER_1):
        office.pass_at(at(day))

    received = reminders_to(chased.relay, client.address)
    assert [m["X-Relance-Step"] for m in received] == ["1", "2"]  # the relay had step 1
    courtesy = office.case(NUMBER).steps[0]
    assert courtesy.outcome == "unknown"
    (notice,) = notices_to(chased.relay, office.owner.address, "send-unknown")
    assert courtesy.message_id in notice.get_body(("plain",)).get_content()


def test_smtp_reply_that_never_comes_is_unknown_after_the_timeout(
    chased: Wired, client: MailUser
) -> None:
    office = chased.office
    chased.smtp.on_client(b"\r\n.\r\n", "stall_reply", after=b"X-Relance-Step:")

    started = time.monotonic()
    office.pass_at(at(COURTESY))
    assert time.monotonic() - started < 2 * TIMEOUT + SLACK + 1
    office.pass_at(at(COURTESY + timedelta(days=1)))

    assert len(reminders_to(chased.relay, client.address)) == 1
    assert office.case(NUMBER).steps[0].outcome == "unknown"
    assert len(notices_to(chased.relay, office.owner.address, "send-unknown")) == 1


def test_relay_that_delivers_then_answers_421_gets_the_reminder_once(
    chased: Wired, client: MailUser
) -> None:
    office = chased.office
    chased.relay.fail_next(421, "4.4.2 Connection timed out", deliver=True)

    office.pass_at(at(COURTESY))
    office.pass_at(at(COURTESY + timedelta(days=1)))

    assert len(reminders_to(chased.relay, client.address)) == 1
    assert len(notices_to(chased.relay, office.owner.address, "send-unknown")) == 1


def test_relay_that_delivers_then_answers_451_is_believed_and_retried(
    chased: Wired, client: MailUser
) -> None:
    """A 451 after the final '.' says the relay did not take the message (RFC 5321
    4.2.5), so relance tries again; a relay that delivered anyway causes the second copy.
    Pinned here so a change to this trade-off is a decision, not an accident."""
    office = chased.office
    chased.relay.fail_next(451, "4.3.0 Local error", deliver=True)

    office.pass_at(at(COURTESY))
    office.pass_at(at(COURTESY + timedelta(days=1)))

    assert len(reminders_to(chased.relay, client.address)) == 2
    assert [s.outcome for s in office.case(NUMBER).steps] == ["sent"]


def test_smtp_4xx_is_retried_on_a_later_pass_and_sent_once(
    chased: Wired, client: MailUser
) -> None:
    office = chased.office
    chased.relay.fail_next(451, "4.7.1 Try again later")

    for minute in (30, 50):
        office.pass_at(at(COURTESY, 8, minute))
    office.pass_at(at(COURTESY, 9, 30))
    office.pass_at(at(COURTESY + timedelta(days=1)))

    (reminder,) = reminders_to(chased.relay, client.address)
    assert reminder["Date"] == format_datetime(at(COURTESY, 8, 50))
    assert [e["smtp_reply"] for e in journal_events(chased, "reminder-failed")] == [
        "451 4.7.1 Try again later"]
    assert office.case(NUMBER).steps[0].outcome == "sent"


def test_smtp_5xx_is_reported_to_the_owner_and_not_retried_for_ever(
    chased: Wired, client: MailUser
) -> None:
    """Found here (a permanent refusal was retried at every pass and never reported);
    fixed in 3468908: the case pauses and the owner is told."""
    office = chased.office
    chased.relay.fail_next(554, "5.7.1 Message rejected as spam")  # the reminder only

    for day in (COURTESY, COURTESY + timedelta(days=1), COURTESY + timedelta(days=2)):
        for minute in (35, 55):
            office.pass_at(at(day, 8, minute))

    attempts = journal_events(chased, "reminder-failed")
    assert [e["smtp_reply"] for e in attempts] == ["554 5.7.1 Message rejected as spam"]
    assert reminders_to(chased.relay, client.address) == [], "retried after a 5xx"
    assert office.case(NUMBER).state is CaseState.PAUSED
    told = [m for m in notices_to(chased.relay, office.owner.address)
            if "5.7.1" in m.get_body(("plain",)).get_content()
            and m["X-Relance-Notice"] != "digest"]  # the weekly digest may mention it too
    assert len(told) == 1, "the owner must be told, once, that the server refuses it"


def test_a_one_hour_smtp_outage_loses_nothing_and_sends_nothing_twice(
    wired: Wired, make_user: MakeUser
) -> None:
    office = wired.office
    clients = [make_user("client") for _ in range(3)]
    for n, client in enumerate(clients):
        send_invoice(office, client, f"F-2026-010{n}")
    office.pass_at(at(COURTESY - timedelta(days=7)))

    wired.smtp.refuse()
    for minute in range(0, 60, 10):  # 08:30 .. 09:20, every 10 minutes: all refused
        office.pass_at(at(COURTESY, 8, 30) + timedelta(minutes=minute))
    wired.smtp.accept()
    for minute in (30, 40, 50):
        office.pass_at(at(COURTESY, 9, minute))

    assert wired.smtp.refused >= 3 * 6
    for client in clients:
        (reminder,) = reminders_to(wired.relay, client.address)
        assert reminder["Date"] == format_datetime(at(COURTESY, 9, 30))
    assert journal_events(wired, "reminder-unknown") == []


def test_a_notice_refused_by_the_smtp_server_reaches_the_owner_later(
    wired: Wired, client: MailUser
) -> None:
    office = wired.office
    send_invoice(office, client, amount=None)  # the owner must be told: no amount
    wired.relay.fail_next(451, "4.3.0 Try again later", stage="MAIL")

    office.pass_at(at(COURTESY - timedelta(days=7)))
    office.pass_at(at(COURTESY - timedelta(days=6)))

    assert office.case(NUMBER).state is CaseState.NEEDS_FACTS
    assert len(notices_to(wired.relay, office.owner.address, "needs-facts")) == 1


def test_a_reply_that_arrives_just_before_the_send_wins(
    chased: Wired, client: MailUser
) -> None:
    office = chased.office
    office.pass_at(at(COURTESY))
    (courtesy,) = reminders_to(chased.relay, client.address)
    answer = message(f"Client <{client.address}>", office.firm.address,
                     str(courtesy["Subject"]), "Le virement part demain.\n",
                     at(REMINDER_1, 9, 0), In_Reply_To=str(courtesy["Message-ID"]),
                     References=f"{courtesy['References']} {courtesy['Message-ID']}")

    def client_answers_now() -> None:
        office.dovecot.deliver_lmtp(office.firm.address, answer.as_bytes(),
                                    mail_from=client.address)
        time.sleep(0.6)  # Dovecot makes new mail visible to other sessions within 0.5 s

    # After the pass's sync, while the reminder is being prepared: the fetch of the
    # invoice mail whose PDF it attaches again (found here: nothing re-read INBOX before a
    # send; fixed in 3468908, which reads INBOX once more just before each send).
    chased.imap.on_client(b"BODY.PEEK[]", client_answers_now)
    office.pass_at(at(REMINDER_1, 9, 0))

    assert len(reminders_to(chased.relay, client.address)) == 1
    assert office.case(NUMBER).state is CaseState.PAUSED


# -- the daemon ----------------------------------------------------------------------------


@contextlib.contextmanager
def daemon(config: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RELANCE_", "NOTIFY_", "WATCHDOG_"))}
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "relance", "run", "--config",
                                    str(config)], stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=out, env=env, cwd=REPO_ROOT)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_until(predicate: object, timeout: float, what: str) -> float:
    started = time.monotonic()
    while not predicate():  # type: ignore[operator]
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - started


def bcc_invoice(office: Office, client: MailUser, number: str, when: datetime) -> bytes:
    """The invoicing software's BCC copy, as it lands in INBOX (and wakes IDLE)."""
    mail = invoice_mail(number, sender=f"Facturation <{office.billing.address}>",
                        client=f"Client <{client.address}>", issued=when.date(),
                        due=when.date() + timedelta(days=30))
    return mail.as_bytes()


def case_known(state_dir: Path, number: str) -> bool:
    """Whether the daemon's state holds a case, read as relance reads it (snapshot + log)."""
    if not (state_dir / "state.json").exists():
        return False
    with StateStore(state_dir).reading() as view:
        return view.get_case(number) is not None


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_daemon_waits_out_an_imap_server_that_is_down_and_connects_when_it_is_back(
    wired: Wired, client: MailUser
) -> None:
    office = wired.office
    write_config(office, imap_port=wired.imap.port, smtp_port=wired.smtp.port,
                 timeout=TIMEOUT, mode="dry-run")
    wired.imap.refuse()
    with daemon(office.config_path, office.home / "daemon.log") as process:
        wait_until(lambda: wired.imap.refused >= 3, 15, "three refused attempts (1 s, 2 s)")
        wired.imap.accept()
        took = wait_until(lambda: wired.imap.connections >= 1, 10, "a connection once back")
        office.dovecot.deliver_lmtp(office.firm.address, bcc_invoice(
            office, client, "F-2026-0201", datetime.now(office.config().tz)))
        wait_until(lambda: case_known(wired.state_dir, "F-2026-0201"), 15,
                   "the invoice seen after the outage")
        assert process.poll() is None
    log = (office.home / "daemon.log").read_text()
    assert log.count("event=imap-error") >= 3
    assert took < 8 + 1  # the backoff so far was 1, 2, 4 s: the next try is at most 8 s away


def test_daemon_reconnects_at_once_after_the_imap_link_is_reset_during_idle(
    wired: Wired, client: MailUser
) -> None:
    office = wired.office
    write_config(office, imap_port=wired.imap.port, smtp_port=wired.smtp.port,
                 timeout=TIMEOUT, mode="dry-run")
    now = datetime.now(office.config().tz)

    with daemon(office.config_path, office.home / "daemon.log") as process:
        office.dovecot.deliver_lmtp(office.firm.address,
                                    bcc_invoice(office, client, "F-2026-0201", now))
        wait_until(lambda: case_known(wired.state_dir, "F-2026-0201"), 20,
                   "the first invoice seen")
        wait_until(lambda: wired.imap.open_connections == 1, 5, "one link, idling")
        time.sleep(0.5)
        connections = wired.imap.connections
        cpu_before = cpu_seconds(process.pid)

        assert wired.imap.reset_all() == 1
        try:
            wait_until(lambda: wired.imap.connections > connections, 10,
                       "a new IMAP connection after the reset")
        finally:
            cpu = cpu_seconds(process.pid) - cpu_before
        office.dovecot.deliver_lmtp(office.firm.address,
                                    bcc_invoice(office, client, "F-2026-0202", now))
        wait_until(lambda: case_known(wired.state_dir, "F-2026-0202"), 10,
                   "mail seen after the reset")
        assert process.poll() is None
    assert cpu < 2.0, f"{cpu:.1f} s of CPU while reconnecting"


@pytest.mark.skipif(not FULL, reason="waits out the 300 s silent-link limit; FULL only")
def test_daemon_reconnects_after_the_imap_link_goes_silent_during_idle(wired: Wired) -> None:
    office = wired.office
    write_config(office, imap_port=wired.imap.port, smtp_port=wired.smtp.port,
                 timeout=TIMEOUT, mode="dry-run")
    with daemon(office.config_path, office.home / "daemon.log"):
        wait_until(lambda: wired.imap.open_connections == 1, 20, "one link, idling")
        time.sleep(1)
        connections = wired.imap.connections
        wired.imap.stall()
        # The daemon's own bound: no sign of life for max(4 x timeout, 300 s).
        deadline = max(TIMEOUT * 4, 300.0) + 2 * TIMEOUT + 15
        log = office.home / "daemon.log"
        took = wait_until(lambda: "imap-silent" in log.read_text()
                          or "imap-error" in log.read_text(), deadline,
                          "the silent link noticed")
        # New connections are held too while stall() lasts: release them now.
        wired.imap.unstall()
        wait_until(lambda: wired.imap.connections > connections, 30, "a new IMAP connection")
        assert took <= deadline


# -- the state -----------------------------------------------------------------------------

CORRUPT_STATES = {
    "truncated": b'{"cases":{"1":{"number":"F-1","client_addrs":["a@b"',
    "binary": bytes(range(256)),
    "a list": b"[]",
    "a table that is a list": b'{"cases":[]}',
    "a case without its fields": b'{"cases":{"1":{"number":"F-1"}}}',
    "an intent without its date": (
        b'{"sends":{"1":{"message_id":"<x@y>","number":"F-1","status":"intent"}}}'),
    "an amount that is a float": (
        b'{"cases":{"1":{"number":"F-1","client_addrs":["a@b.c"],"subject":"s",'
        b'"root_message_id":"<r@b.c>","amount":12.5}}}'),
    "a version from the future": b'{"meta":{"1":{"schema_version":99}}}',
    "a version that is text": b'{"meta":{"1":{"schema_version":"one"}}}',
    "a cursor without its folder": b'{"cursors":{"1":{"uidvalidity":1}}}',
}




@pytest.mark.parametrize("corruption", [
    name
    for name in sorted(CORRUPT_STATES)])
def test_unreadable_state_stops_run_with_a_message_naming_the_file(
    chased: Wired, corruption: str
) -> None:
    state = chased.state_dir / "state.json"
    state.write_bytes(CORRUPT_STATES[corruption])

    result = relance_cli(chased.office.config_path, "run", "--once",
                         "--now", at(COURTESY).isoformat())

    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert str(state) in result.stderr, result.stderr
    kept = [p.read_bytes() for p in (state, state.with_name("state.json.v0.bak"))
            if p.exists()]
    assert CORRUPT_STATES[corruption] in kept, "the file (or its backup) must be left alone"
    assert reminders_to(chased.relay, chased.office.firm.address) == []


def test_unreadable_state_stops_the_daemon_too(chased: Wired) -> None:
    state = chased.state_dir / "state.json"
    state.write_bytes(CORRUPT_STATES["truncated"])
    result = relance_cli(chased.office.config_path, "run", timeout=30)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert str(state) in result.stderr


def test_damaged_notice_key_stops_run_with_a_message_naming_the_file(chased: Wired) -> None:
    key = chased.state_dir / "notice.key"
    key.write_text("not hex at all\n")
    result = relance_cli(chased.office.config_path, "run", "--once",
                         "--now", at(COURTESY).isoformat())
    assert result.returncode == 1
    assert "Traceback" not in result.stderr, result.stderr
    assert "notice.key" in result.stderr


def test_a_second_daemon_on_the_same_state_refuses(chased: Wired) -> None:
    office = chased.office
    write_config(office, imap_port=chased.imap.port, smtp_port=chased.smtp.port,
                 timeout=TIMEOUT, mode="dry-run")
    lock = chased.state_dir / "daemon.lock"
    with daemon(office.config_path, office.home / "daemon.log") as first:
        wait_until(lambda: lock.exists() and lock.read_text().strip() == str(first.pid), 20,
                   "the first daemon holds the lock")
        for args in (("run",), ("run", "--once", "--now", at(COURTESY).isoformat())):
            second = relance_cli(office.config_path, *args, timeout=30)
            assert second.returncode == 1, second.stderr
            assert "already running" in second.stderr
            assert str(first.pid) in second.stderr
            assert "Traceback" not in second.stderr
        assert first.poll() is None


# -- the disk ----------------------------------------------------------------------------


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 kB tmpfs: a disk that fills up. Skips where mounting is not allowed."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); "
                    "test_disk_full_in_process covers the error path")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory: Path) -> Path:
    """Write a file until the disk refuses another byte."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (4096, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"x" * size)
    finally:
        os.close(fd)
    return filler


def chased_on_tiny_disk(wired: Wired, client: MailUser, tiny_disk: Path) -> Office:
    """An office whose state lives on the tiny disk, its first invoice already read."""
    office = wired.office
    write_config(office, imap_port=wired.imap.port, smtp_port=wired.smtp.port,
                 timeout=TIMEOUT, extra=f'state_dir = "{tiny_disk / "state"}"\n')
    send_invoice(office, client)
    office.pass_at(at(COURTESY - timedelta(days=7)))
    return office


def test_disk_full_gives_a_clear_error_keeps_the_state_and_sends_nothing(
    wired: Wired, client: MailUser, tiny_disk: Path
) -> None:
    office = chased_on_tiny_disk(wired, client, tiny_disk)
    state = tiny_disk / "state" / "state.json"
    before = state.read_bytes()
    send_invoice(office, client, "F-2026-0043")  # something to write about
    filler = fill(tiny_disk)

    result = relance_cli(office.config_path, "run", "--once", "--now", at(COURTESY).isoformat())

    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "No space left on device" in result.stderr
    assert state.read_bytes() == before
    json.loads(before)
    assert reminders_to(wired.relay, client.address) == []

    filler.unlink()
    result = relance_cli(office.config_path, "run", "--once", "--now", at(COURTESY).isoformat())
    assert result.returncode == 0, result.stderr
    assert len(reminders_to(wired.relay, client.address)) == 1  # one mail, both invoices


def test_disk_full_error_names_the_state_not_the_imap_server(
    wired: Wired, client: MailUser, tiny_disk: Path
) -> None:
    office = chased_on_tiny_disk(wired, client, tiny_disk)
    fill(tiny_disk)
    send_invoice(office, client, "F-2026-0043")

    result = relance_cli(office.config_path, "run", "--once", "--now", at(COURTESY).isoformat())

    assert "imap" not in result.stderr.lower(), result.stderr
    assert str(tiny_disk / "state") in result.stderr


def test_disk_full_in_process_leaves_the_old_state_whole(
    chased: Wired, client: MailUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where no tmpfs can be mounted: every write of the state fails with ENOSPC."""
    files = [chased.state_dir / "state.json", chased.state_dir / "state.log"]
    before = [f.read_bytes() if f.exists() else None for f in files]
    send_invoice(chased.office, client, "F-2026-0043")

    def no_space(self: AtomicJSONStorage, encoded: bytes) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))

    def no_space_in_log(self: StateLog, *args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path))

    monkeypatch.setattr(AtomicJSONStorage, "write_bytes", no_space)
    monkeypatch.setattr(StateLog, "append", no_space_in_log)
    with pytest.raises(OSError):
        chased.office.pass_at(at(COURTESY))
    monkeypatch.undo()

    assert [f.read_bytes() if f.exists() else None for f in files] == before
    assert reminders_to(chased.relay, client.address) == []
    assert not list(chased.state_dir.glob(".state.json.*.tmp"))


# -- the clock -----------------------------------------------------------------------------


def test_clock_going_back_sends_nothing_again_and_does_not_crash(
    chased: Wired, client: MailUser
) -> None:
    office = chased.office
    office.pass_at(at(REMINDER_1))  # reminder-1 (the courtesy was skipped: past due)
    for back in (at(REMINDER_1, 8, 45), at(COURTESY), at(DUE - timedelta(days=2)),
                 at(REMINDER_1 - timedelta(days=1))):
        result = relance_cli(office.config_path, "run", "--once", "--now", back.isoformat())
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
    office.pass_at(at(REMINDER_1))
    office.pass_at(at(REMINDER_1 + timedelta(days=1)))

    assert [m["X-Relance-Step"] for m in reminders_to(chased.relay, client.address)] == ["2"]
    office.pass_at(at(REMINDER_2))
    assert [m["X-Relance-Step"] for m in reminders_to(chased.relay, client.address)] == [
        "2", "3"]


def test_clock_jumping_a_month_ahead_sends_only_the_next_step_per_client(
    wired: Wired, make_user: MakeUser
) -> None:
    office = wired.office
    one, two = make_user("client"), make_user("client")
    send_invoice(office, one, "F-2026-0301")
    send_invoice(office, two, "F-2026-0302")
    send_invoice(office, two, "F-2026-0303", due=DUE + timedelta(days=3))
    office.pass_at(at(COURTESY))
    assert len(reminders_to(wired.relay, one.address)) == 1

    jump = COURTESY + timedelta(days=35)  # 9 June: reminder-2 and reminder-3 both past
    for day in (jump, jump + timedelta(days=1), jump + timedelta(days=2)):
        office.pass_at(at(day))

    for client in (one, two):
        steps = [m["X-Relance-Step"] for m in reminders_to(wired.relay, client.address)]
        assert steps == ["1", "2"], f"{client.address}: {steps}"
    dates = [m["Date"] for m in reminders_to(wired.relay, two.address)]
    assert dates[1] == format_datetime(at(jump))

