"""`relance run` as systemd runs it: a real process, a real `$NOTIFY_SOCKET`, real servers.

Each test starts `python -m relance run` against the session's Dovecot and SMTP relay,
listens on a datagram socket of its own as systemd would, and drives the daemon with
signals: READY, STATUS and WATCHDOG while it runs, RELOADING on SIGHUP, STOPPING and a
clean exit within 5 s on SIGTERM.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from relance import defaults
from relance.store.state import SCHEMA_VERSION, StateStore
from tests.mailservers import SMTP_PASSWORD, SMTP_USERNAME, Dovecot, MailUser, SmtpServer

pytestmark = pytest.mark.dovecot

PARIS = ZoneInfo("Europe/Paris")
CLIENT = "compta@client.test"
START_TIMEOUT_S = 20.0
STOP_LIMIT_S = 5.0


class NotifySocket:
    """What systemd listens on: an AF_UNIX datagram socket, here in the abstract namespace."""

    def __init__(self) -> None:
        self.name = f"@relance-test-{os.getpid()}-{secrets.token_hex(4)}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + self.name[1:].encode())
        self.messages: list[tuple[float, dict[str, str]]] = []

    def _drain(self, timeout: float) -> None:
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            return
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
        self.messages.append((time.monotonic(), fields))

    def wait_for(self, predicate: Callable[[dict[str, str]], bool], timeout: float,
                 after: int = 0) -> tuple[int, dict[str, str]]:
        """The first message from index `after` on that matches, waiting up to `timeout`."""
        deadline = time.monotonic() + timeout
        checked = after
        while True:
            for index in range(checked, len(self.messages)):
                if predicate(self.messages[index][1]):
                    return index, self.messages[index][1]
            checked = max(checked, len(self.messages))
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching notification in {timeout} s; got "
                                     f"{[m for _t, m in self.messages[after:]]}")
            self._drain(min(left, 0.2))

    def collect(self, seconds: float) -> list[tuple[float, dict[str, str]]]:
        start = len(self.messages)
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self._drain(min(left, 0.2))
        return self.messages[start:]

    def close(self) -> None:
        self.sock.close()


@dataclass
class Firm:
    """A firm's config directory, wired to the test servers, and its daemon processes."""

    root: Path
    config: Path
    user: MailUser
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def state_file(self) -> Path:
        return self.root / "state" / "state.json"

    def start(self, notify: NotifySocket | None = None, *, watchdog_usec: int | None = None,
              log_name: str = "daemon.log") -> Daemon:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("RELANCE_", "NOTIFY_", "WATCHDOG_", "JOURNAL_"))}
        if notify is not None:
            env["NOTIFY_SOCKET"] = notify.name
        if watchdog_usec is not None:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        log_path = self.root / log_name
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "relance", "run", "--config", str(self.config)],
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, env=env,
            )
        self.processes.append(process)
        return Daemon(process, log_path)


@dataclass
class Daemon:
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 10.0, after: int = 0) -> int:
        """Where `text` shows in the log (searching from offset `after`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.log.find(text, after)
            if found >= 0:
                return found
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not in the daemon's log:\n{self.log}")

    def stop_timed(self) -> float:
        """SIGTERM, and the seconds until the process was gone."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_LIMIT_S + 5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"no exit 10 s after SIGTERM:\n{self.log}") from None
        return time.monotonic() - started


def invoice_mail(firm_address: str, number: str, sent_at: datetime, due: datetime) -> bytes:
    message = EmailMessage()
    message["From"] = f"Atelier Test <{firm_address}>"
    message["To"] = CLIENT
    message["Subject"] = f"Facture {number}"
    message["Date"] = format_datetime(sent_at)
    message["Message-ID"] = f"<{number.lower()}@example.test>"
    message.set_content(
        f"Bonjour,\n\nVeuillez trouver la facture {number}.\n"
        f"Montant : 1 250,00 €\nÉchéance : {due:%d/%m/%Y}\n"
    )
    return message.as_bytes()


@pytest.fixture
def notify() -> Iterator[NotifySocket]:
    listener = NotifySocket()
    yield listener
    listener.close()


@pytest.fixture
def firm(tmp_path: Path, dovecot: Dovecot, smtp_server: SmtpServer,
         make_user: Callable[[str], MailUser]) -> Iterator[Firm]:
    """A firm with one unpaid invoice in Sent, due in 30 days, and a config for it."""
    user = make_user("firm")
    root = tmp_path / "firm"
    root.mkdir()
    defaults.copy_defaults("rules", root / "rules")
    defaults.copy_defaults("templates", root / "templates")
    config = root / "relance.toml"
    config.write_text(f"""\
mode = "dry-run"
timezone = "Europe/Paris"

[imap]
host = "{dovecot.host}"
port = {dovecot.imap_port}
security = "none"
username = "{user.address}"
password = "{user.password}"
timeout = 5

[smtp]
host = "{smtp_server.host}"
port = {smtp_server.port}
security = "none"
username = "{SMTP_USERNAME}"
password = "{SMTP_PASSWORD}"

[firm]
name = "Atelier Test"
sender = "Atelier Test <{user.address}>"
addresses = ["{user.address}"]
owners = []
""", encoding="utf-8")
    now = datetime.now(PARIS).replace(microsecond=0)
    with dovecot.imap_client(user) as client:
        client.append("Sent", invoice_mail(user.address, "F-2026-0042", now, now + timedelta(30)),
                      flags=(b"\\Seen",), msg_time=now)
    running = Firm(root, config, user)
    yield running
    for process in running.processes:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_notifies_ready_status_watchdog_and_stops_cleanly(
    firm: Firm, notify: NotifySocket
) -> None:
    daemon = firm.start(notify, watchdog_usec=2_000_000)
    notify.wait_for(lambda m: m.get("READY") == "1", START_TIMEOUT_S)
    _i, status = notify.wait_for(lambda m: "open case" in m.get("STATUS", ""), START_TIMEOUT_S)
    assert status["STATUS"].startswith("dry-run: 1 open case, next send ")
    assert "(F-2026-0042 courtesy)" in status["STATUS"]

    beats = [at for at, m in notify.collect(3.0) if m.get("WATCHDOG") == "1"]
    assert len(beats) >= 3, "a 2 s watchdog wants a ping at least every second"
    assert max(b - a for a, b in itertools.pairwise(beats)) < 1.0

    mark = len(notify.messages)
    took = daemon.stop_timed()
    assert took < STOP_LIMIT_S
    assert daemon.process.returncode == 0, daemon.log
    notify.wait_for(lambda m: m.get("STOPPING") == "1", 1.0, after=mark)
    assert "event=stopped" in daemon.log
    with StateStore(firm.state_file.parent).reading() as view:
        assert list(view.cases()) == ["F-2026-0042"]
        assert view.meta("schema_version") == SCHEMA_VERSION
    assert "Traceback" not in daemon.log


def test_a_stopped_daemon_keeps_its_plan_and_the_next_start_reads_it(
    firm: Firm, notify: NotifySocket
) -> None:
    daemon = firm.start(notify)
    _i, status = notify.wait_for(lambda m: "open case" in m.get("STATUS", ""), START_TIMEOUT_S)
    daemon.stop_timed()
    assert daemon.process.returncode == 0, daemon.log
    plan = firm.state_file.parent / "plan.json"
    saved_doc = json.loads(plan.read_text(encoding="utf-8"))
    assert saved_doc["planned"] == [["F-2026-0042", 0]]
    assert saved_doc["steps"][0][:3] == [1, "courtesy", "email"]
    saved = plan.stat().st_mtime_ns

    mark = len(notify.messages)
    again = firm.start(notify)
    _i, restarted = notify.wait_for(lambda m: "open case" in m.get("STATUS", ""),
                                    START_TIMEOUT_S, after=mark)
    assert restarted["STATUS"] == status["STATUS"]
    again.stop_timed()
    assert again.process.returncode == 0, again.log
    assert plan.stat().st_mtime_ns == saved, "the plan it read still held: not rewritten"
    assert "event=plan-unreadable" not in again.log and "Traceback" not in again.log


def test_sighup_reloads_rules_and_keeps_them_when_the_edit_is_broken(
    firm: Firm, notify: NotifySocket
) -> None:
    daemon = firm.start(notify)
    notify.wait_for(lambda m: "courtesy" in m.get("STATUS", ""), START_TIMEOUT_S)
    calendar = firm.root / "rules" / "calendar.yaml"
    text = calendar.read_text()

    calendar.write_text(text.replace("- name: courtesy", "- name: heads-up", 1))
    mark = len(notify.messages)
    daemon.process.send_signal(signal.SIGHUP)
    notify.wait_for(lambda m: m.get("RELOADING") == "1", 5.0, after=mark)
    notify.wait_for(lambda m: m.get("READY") == "1", 5.0, after=mark)
    notify.wait_for(lambda m: "(F-2026-0042 heads-up)" in m.get("STATUS", ""), 5.0, after=mark)
    reloaded_at = daemon.wait_log("event=reloaded")

    broken = text.replace("- name: courtesy", "- name: heads-up", 1).replace(
        "offset: -5d", "offset: soon", 1)
    calendar.write_text(broken)
    line = broken.splitlines().index("    offset: soon") + 1
    mark = len(notify.messages)
    daemon.process.send_signal(signal.SIGHUP)
    notify.wait_for(lambda m: m.get("READY") == "1", 5.0, after=mark)
    daemon.wait_log("event=reload-failed", after=reloaded_at)
    assert f"calendar.yaml:{line}:" in daemon.log
    _i, status = notify.wait_for(lambda m: "STATUS" in m, 5.0, after=mark)
    assert "(F-2026-0042 heads-up)" in status["STATUS"], "the previous rules stay"
    assert daemon.process.poll() is None, "a broken edit must not stop the daemon"

    assert daemon.stop_timed() < STOP_LIMIT_S
    assert daemon.process.returncode == 0, daemon.log


def test_an_edited_rule_file_reloads_without_a_signal(
    firm: Firm, notify: NotifySocket
) -> None:
    daemon = firm.start(notify)
    notify.wait_for(lambda m: "courtesy" in m.get("STATUS", ""), START_TIMEOUT_S)
    calendar = firm.root / "rules" / "calendar.yaml"
    mark = len(notify.messages)
    calendar.write_text(calendar.read_text().replace("- name: courtesy", "- name: heads-up", 1))
    notify.wait_for(lambda m: m.get("RELOADING") == "1", 10.0, after=mark)
    notify.wait_for(lambda m: "(F-2026-0042 heads-up)" in m.get("STATUS", ""), 10.0, after=mark)
    daemon.wait_log("event=files-changed")
    daemon.wait_log("event=reloaded")
    assert daemon.stop_timed() < STOP_LIMIT_S


def test_second_daemon_on_the_same_state_refuses(firm: Firm, notify: NotifySocket) -> None:
    first = firm.start(notify)
    notify.wait_for(lambda m: m.get("READY") == "1", START_TIMEOUT_S)
    second = firm.start(log_name="second.log")
    assert second.process.wait(timeout=START_TIMEOUT_S) == 1
    assert "already running" in second.log
    assert f"process {first.process.pid}" in second.log
    assert first.process.poll() is None
    assert first.stop_timed() < STOP_LIMIT_S


def test_sigterm_while_the_server_is_unreachable(firm: Firm, notify: NotifySocket) -> None:
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    config = firm.config.read_text()
    start = config.index("[imap]")
    imap_port = config.index("port = ", start)
    end = config.index("\n", imap_port)
    firm.config.write_text(config[:imap_port] + f"port = {port}" + config[end:])

    daemon = firm.start(notify, watchdog_usec=2_000_000)
    notify.wait_for(lambda m: m.get("READY") == "1", START_TIMEOUT_S)
    _i, status = notify.wait_for(lambda m: "retrying in" in m.get("STATUS", ""), 10.0)
    assert f"127.0.0.1:{port} failed" in status["STATUS"]
    beats = [m for _t, m in notify.collect(1.5) if m.get("WATCHDOG") == "1"]
    assert beats, "the watchdog beats while waiting to reconnect"
    assert daemon.stop_timed() < STOP_LIMIT_S
    assert daemon.process.returncode == 0, daemon.log
    assert "event=imap-error" in daemon.log


def test_runs_without_systemd(firm: Firm) -> None:
    """No $NOTIFY_SOCKET (a shell, a container): the same daemon, no notifications."""
    daemon = firm.start()
    daemon.wait_log("event=started", START_TIMEOUT_S)
    daemon.wait_log("event=invoice-found case=F-2026-0042", 10.0)
    assert daemon.stop_timed() < STOP_LIMIT_S
    assert daemon.process.returncode == 0, daemon.log
    assert "notify" not in daemon.log
