"""SIGKILL at many points of `relance run --once --now T`, then a count at the SMTP relay.

Each "world" is one firm on the real Dovecot and SMTP relay, with seven clients (each on
its own domain) and ten invoices on a simulated calendar of mornings: invoices of one
client that group into one mail, a client who answers after a reminder, an invoice with no
amount (a case that needs facts), a BCC copy that arrives in INBOX in the middle of the
calendar, an invoice that arrives a few days in, and a few unrelated mails every morning. relance
reaches Dovecot and the relay through fault proxies (tests/faults/proxy.py).

Every morning: the day's mail arrives; one or more runs of `relance run --once --now
<that morning 09:00>` are started and killed with SIGKILL; then the same command is run
again until it exits 0. Kills land
- at a random instant of the pass (measured from the moment the process holds the
  daemon lock, so the interpreter's start-up is not where kills go to waste), or
- at a protocol moment seen by a proxy: the client sends the final "." of a reminder
  (dropped: the relay never gets it), the relay answers "250 ... queued" (the reply is
  dropped: the relay has the mail, relance never hears so), the client APPENDs the copy
  to Sent, searches Sent for a Message-ID, or FETCHes during the sync.
Some mornings the SMTP proxy also cuts the link right after a reminder's final "." and
lets the relay deliver (the RFC 1047 window, made on purpose rather than by chance).

At the end, what counts is what the relay accepted for each client: no Message-ID twice,
no (X-Relance-Invoice, X-Relance-Step) twice, nothing to the client who answered after the
answer arrived, and every invoice in the mailbox a case in the state.

Runs start in one of two ways: "exec" (`python -m relance ...`, a new interpreter, as cron
runs it) or "fork" (a zygote process that imported relance once forks a child that calls
`relance.cli.main(argv)`: the same code path without 1 s of imports, so the CI-sized
version fits its budget). The CI version: 1 world, 40 mornings, fork. With
RELANCE_FAULTS_FULL=1: 6 worlds, 46 mornings each, exec, at least 200 kills landed in
a pass; the figures print at the end (docs/reliability.md quotes them).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest

from relance import app
from relance.core.schedule import due_decisions, with_client_contacts
from relance.store.journal import Journal
from relance.store.state import StateStore
from tests.faults.conftest import (
    COURTESY,
    FULL,
    NUMBER,
    REPO_ROOT,
    Wired,
    notices_to,
    parsed,
    reminders_to,
    send_invoice,
    wire,
)
from tests.integration.helpers import at, invoice_mail, message
from tests.mailservers import Dovecot, MailUser, MakeUser, SmtpServer

pytestmark = pytest.mark.dovecot

SEED = int(os.environ.get("RELANCE_FAULTS_SEED", "20260507"))
RUN_LIMIT_S = 60.0  # a run that takes longer than this is a hang, and a failure

# -- starting runs ---------------------------------------------------------------------

ZYGOTE = r"""
import json, os, sys, traceback
import relance.app, relance.cli, relance.commands  # paid once, here

def report(obj):
    os.write(1, (json.dumps(obj) + "\n").encode())

buffer = b""
while True:
    import select
    ready, _, _ = select.select([0], [], [], 0.01)
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        report({"exit": pid, "rc": os.waitstatus_to_exitcode(status)})
    if not ready:
        continue
    chunk = os.read(0, 65536)
    if not chunk:
        break
    buffer += chunk
    while b"\n" in buffer:
        line, buffer = buffer.split(b"\n", 1)
        job = json.loads(line)
        pid = os.fork()
        if pid == 0:
            rc = 70
            try:
                log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)
                os.dup2(log, 1)
                os.dup2(log, 2)
                rc = relance.cli.main(job["argv"])
            except SystemExit as exc:
                rc = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(rc)
        report({"started": pid, "id": job["id"]})
"""


class Run:
    """One started `relance run --once`: its pid, a way to wait, a way to kill."""

    pid: int

    def wait(self, timeout: float) -> int | None:
        raise NotImplementedError

    def kill(self) -> bool:
        """SIGKILL; whether the process was still there to receive it."""
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            return False
        return self.wait(10) == -signal.SIGKILL


class ExecRun(Run):
    def __init__(self, argv: list[str], log: Path, env: dict[str, str]) -> None:
        with log.open("ab") as out:
            self.process = subprocess.Popen([sys.executable, "-m", "relance", *argv],
                                            stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                            env=env, cwd=REPO_ROOT)
        self.pid = self.process.pid

    def wait(self, timeout: float) -> int | None:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None


class Zygote:
    """A process that imported relance once and forks a child per run."""

    def __init__(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, env=env, cwd=REPO_ROOT)
        self.started: dict[int, int] = {}
        self.exits: dict[int, int] = {}
        self.cond = threading.Condition()
        self.ids = iter(range(1, 1 << 30))
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            event = json.loads(line)
            with self.cond:
                if "started" in event:
                    self.started[event["id"]] = event["started"]
                else:
                    self.exits[event["exit"]] = event["rc"]
                self.cond.notify_all()

    def spawn(self, argv: list[str], log: Path) -> ForkRun:
        job_id = next(self.ids)
        assert self.process.stdin is not None
        with self.cond:
            self.process.stdin.write((json.dumps({"id": job_id, "argv": argv,
                                                  "log": str(log)}) + "\n").encode())
            self.process.stdin.flush()
            if not self.cond.wait_for(lambda: job_id in self.started, timeout=10):
                raise AssertionError("the zygote did not fork")
            return ForkRun(self, self.started.pop(job_id))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            assert self.process.stdin is not None
            self.process.stdin.close()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class ForkRun(Run):
    def __init__(self, zygote: Zygote, pid: int) -> None:
        self.zygote = zygote
        self.pid = pid

    def wait(self, timeout: float) -> int | None:
        with self.zygote.cond:
            if self.zygote.cond.wait_for(lambda: self.pid in self.zygote.exits, timeout):
                return self.zygote.exits[self.pid]
        return None


class Launcher:
    """Starts runs the chosen way ("exec" or "fork")."""

    def __init__(self, how: str) -> None:
        self.how = how
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("RELANCE_", "NOTIFY_", "WATCHDOG_"))}
        self.zygote = Zygote(self.env) if how == "fork" else None

    def start(self, argv: list[str], log: Path) -> Run:
        if self.zygote is not None:
            return self.zygote.spawn(argv, log)
        return ExecRun(argv, log, self.env)

    def close(self) -> None:
        if self.zygote is not None:
            self.zygote.close()


# -- the figures -----------------------------------------------------------------------


@dataclass
class Figures:
    worlds: int = 0
    mornings: int = 0
    runs: int = 0
    kills_attempted: int = 0  # SIGKILL sent to a run still alive (in its pass, or exiting)
    kills_in_pass: int = 0  # ... that held the daemon lock: killed inside run_once
    finished_before_kill: int = 0  # runs that completed before their fuse burnt (not kills)
    kills_by_mode: collections.Counter[str] = field(default_factory=collections.Counter)
    kills_by_window: collections.Counter[str] = field(default_factory=collections.Counter)
    cuts_after_data: int = 0  # SMTP links cut after a reminder's final "." on purpose
    sends: int = 0  # reminders the relay accepted for clients
    duplicates_by_message_id: int = 0
    duplicates_by_invoice_step: int = 0
    invoices: int = 0
    lost_cases: int = 0
    cold_cases: int = 0  # cases in the cold file at the end (last year's invoices)
    sends_after_reply: int = 0
    unknown_outcomes: int = 0  # send records "unknown" at the end
    unknown_notices: int = 0  # notices "send-unknown" the owner received
    unknown_not_told: int = 0  # unknown outcomes whose Message-ID no notice names
    unknown_but_delivered: int = 0  # unknown outcomes the relay did have (client got it)
    sent_missing_from_sent_folder: int = 0  # "sent" records without their copy in Sent
    journal_gaps: int = 0  # send records with no journal line naming their Message-ID
    reply_notices: int = 0
    replies: int = 0
    replies_not_told: int = 0  # answers that paused a case but no "reply" notice reached
    seeds: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def add(self, other: Figures) -> None:
        for name, value in vars(other).items():
            mine = getattr(self, name)
            if isinstance(value, collections.Counter):
                mine.update(value)
            elif isinstance(value, list):
                mine.extend(value)
            else:
                setattr(self, name, mine + value)

    def table(self) -> str:
        rows = [(name, value) for name, value in vars(self).items()
                if name not in ("problems",)]
        return "\n".join(f"{name:32} {value}" for name, value in rows)


# -- one world -------------------------------------------------------------------------


@dataclass
class Invoice:
    number: str
    client: MailUser
    issued: date
    due: date
    amount: str | None
    arrives: date  # the morning before which it is in the mailbox
    folder: str  # "Sent", or "INBOX" for the BCC copy from the billing address


class World:
    """One firm, its clients and invoices on a calendar, and the kills of each morning."""

    def __init__(self, index: int, seed: int, dovecot: Dovecot, relay: SmtpServer,
                 make_user: MakeUser, home: Path, launcher: Launcher, mornings: int) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.dovecot = dovecot
        self.relay = relay
        self.launcher = launcher
        self.wired: Wired = wire(dovecot, relay, make_user, home)
        self.office = self.wired.office
        self.figures = Figures(worlds=1, seeds=[seed])
        self.lock_path = self.wired.state_dir / "daemon.lock"
        self.log = home / "runs.log"
        # How long the last full pass took, for passes that send and for quiet ones.
        self.durations = {True: 0.5, False: 0.06}
        self.current_pid = 0
        rng = self.rng
        d0 = date(2026, 5, 4) + timedelta(days=rng.randrange(0, 21))
        self.first = d0 - timedelta(days=8)
        self.last = self.first + timedelta(days=mornings - 1)
        # Each client its own firm and domain (none of them a mailbox here: the relay
        # records what it accepts for them). A shared domain would make every client one
        # client to relance (thread.same_client), and one answer would pause them all.
        clients = [MailUser(f"compta@client{n}-w{index}.test", "", Path())
                   for n in range(7)]
        self.replier = clients[2]
        self.reply_after = rng.choice((1, 2))  # the client answers after this many reminders
        self.replied_at: int | None = None  # how many reminders it had when it answered
        prefix = f"F-2026-{index:02d}"

        def due(spread: int) -> date:
            return d0 + timedelta(days=rng.randrange(0, spread))

        second_due = d0 + timedelta(days=2 + rng.randrange(0, 11))
        bcc_day = self.first + timedelta(days=rng.randrange(6, 12))
        later = [due(25) for _ in range(4)]
        self.invoices = [
            Invoice(f"{prefix}01", clients[0], d0 - timedelta(30), d0, "1 234,56",
                    self.first, "Sent"),
            Invoice(f"{prefix}02", clients[1], d0 - timedelta(28), d0 + timedelta(2),
                    "980,00", self.first, "Sent"),
            Invoice(f"{prefix}03", clients[1], second_due - timedelta(30), second_due,
                    "455,10", self.first, "Sent"),
            Invoice(f"{prefix}04", clients[2], d0 - timedelta(27), due(5), "2 400,00",
                    self.first, "Sent"),
            Invoice(f"{prefix}05", clients[3], d0 - timedelta(27), d0 + timedelta(3), None,
                    self.first, "Sent"),
            Invoice(f"{prefix}06", clients[4], bcc_day, bcc_day + timedelta(30), "310,00",
                    bcc_day, "INBOX"),
            Invoice(f"{prefix}07", clients[5], later[0] - timedelta(30), later[0], "75,00",
                    self.first, "Sent"),
            Invoice(f"{prefix}08", clients[5], later[1] - timedelta(30), later[1], "1 075,00",
                    self.first, "Sent"),
            Invoice(f"{prefix}09", clients[6], later[2] - timedelta(30), later[2], "12,50",
                    self.first, "Sent"),
            Invoice(f"{prefix}10", clients[0], later[3] - timedelta(30), later[3], "640,00",
                    self.first + timedelta(days=3), "Sent"),
        ]
        # Last year's invoices dragged into Sent on a few mornings (a firm importing its
        # old mail): each is adopted as history, closed, and moved to the cold file by the
        # pass that finds it, so kills land in that move too.
        for k in range(3):
            day = self.first + timedelta(days=rng.randrange(1, mornings))
            issued = day - timedelta(days=400 + 7 * k)
            self.invoices.append(Invoice(f"{prefix}H{k}", clients[3 + k], issued,
                                         issued + timedelta(30), "500,00", day, "Sent"))
        self.clients = clients
        self.figures.invoices = len(self.invoices)
        config = self.office.config()
        runtime, problems = app.load_runtime(config)
        assert runtime is not None, problems
        self.runtime = runtime

    # -- the calendar ------------------------------------------------------------------
    def live(self) -> Figures:
        try:
            day = self.first
            while day <= self.last:
                self.morning(day)
                day += timedelta(days=1)
            self.count()
        finally:
            self.wired.imap.close()
            self.wired.smtp.close()
        return self.figures

    def morning(self, day: date) -> None:
        self.figures.mornings += 1
        for invoice in self.invoices:
            if invoice.arrives == day:
                self.seed_invoice(invoice)
        self.maybe_reply(day)
        self.noise(day)
        now = at(day, 9)
        sending = self.sends_expected(now)
        kills = self.rng.choices((1, 2, 3), weights=(70, 22, 8))[0]
        for _ in range(kills):
            self.kill_once(now, sending)
        cut = None
        if self.sends_expected(now) and self.rng.random() < 0.25:
            cut = self.wired.smtp.on_client(b"\r\n.\r\n", "cut_reply",
                                            after=b"X-Relance-Step:")
        self.complete(now, sending)
        self.wired.smtp.clear_triggers()
        if cut is not None and cut.fired:
            self.figures.cuts_after_data += 1

    def seed_invoice(self, invoice: Invoice) -> None:
        folder_sender = (self.office.sender if invoice.folder == "Sent"
                         else f"Atelier Dupont - Facturation <{self.office.billing.address}>")
        mail = invoice_mail(invoice.number, sender=folder_sender,
                            client=f"Client {invoice.client.address.split('@')[0]} "
                                   f"<{invoice.client.address}>",
                            issued=invoice.issued, due=invoice.due, amount=invoice.amount)
        self.office.append(invoice.folder, mail)

    def maybe_reply(self, day: date) -> None:
        if self.replied_at is not None:
            return
        received = self.reminders_to(self.replier)
        if len(received) < self.reply_after:
            return
        last = received[-1]
        answer = message(f"Client <{self.replier.address}>", self.office.firm.address,
                         str(last["Subject"]), "Bonjour, je regarde cela et je reviens vers "
                         "vous.\n", at(day, 7, 45), In_Reply_To=str(last["Message-ID"]),
                         References=f"{last['References']} {last['Message-ID']}")
        self.dovecot.deliver_lmtp(self.office.firm.address, answer.as_bytes(),
                                  mail_from=self.replier.address)
        self.replied_at = len(received)
        self.figures.replies += 1

    def noise(self, day: date) -> None:
        """Most of an inbox is about nothing: a newsletter, a supplier, a colleague."""
        for n in range(self.rng.randrange(1, 4)):
            mail = message(f"Lettre {n} <news{n}@lettres.test>", self.office.firm.address,
                           f"Les nouvelles du {day:%d/%m}", "Rien à voir.\n", at(day, 6, n))
            self.dovecot.deliver_lmtp(self.office.firm.address, mail.as_bytes())

    def sends_expected(self, now: datetime) -> bool:
        """Whether today's pass will send (as far as the state says before it runs)."""
        with StateStore(self.wired.state_dir).reading() as view:
            cases = view.cases()
        rt = self.runtime
        return bool(due_decisions(with_client_contacts(cases.values()), rt.rules,
                                  rt.calendar, now))

    # -- runs and kills ----------------------------------------------------------------
    def argv(self, now: datetime) -> list[str]:
        return ["run", "--once", "--now", now.isoformat(),
                "--config", str(self.office.config_path)]

    def start(self, now: datetime) -> Run:
        self.figures.runs += 1
        run = self.launcher.start(self.argv(now), self.log)
        self.current_pid = run.pid
        return run

    def holds_lock(self, pid: int) -> bool:
        try:
            return self.lock_path.read_text().strip() == str(pid)
        except FileNotFoundError:
            return False

    def kill_once(self, now: datetime, sending: bool) -> None:
        """One kill point: runs are started and killed until one dies inside the pass
        (a run that finishes first was a full pass; the next try gets a shorter fuse)."""
        modes = ["random"] * 6 + ["imap-fetch", "imap-search"]
        if sending:
            modes += ["smtp-final-dot", "smtp-queued-reply", "imap-append"] * 2
        mode = self.rng.choice(modes)
        fuse = self.durations[sending] * 1.2
        for _ in range(4):
            if self.try_kill(now, mode, fuse):
                return
            mode, fuse = "random", self.durations[False]

    def try_kill(self, now: datetime, mode: str, fuse: float) -> bool:
        killed = threading.Event()
        run_box: list[Run] = []

        def kill_now() -> bool:
            if run_box and not killed.is_set():
                killed.set()
                with contextlib.suppress(ProcessLookupError):
                    os.kill(run_box[0].pid, signal.SIGKILL)
            return False  # drop the chunk: the peer never sees it

        if mode == "smtp-final-dot":
            self.wired.smtp.on_client(b"\r\n.\r\n", kill_now, after=b"X-Relance-Step:")
        elif mode == "smtp-queued-reply":
            self.wired.smtp.on_server(b"queued as", kill_now)
        elif mode == "imap-append":
            self.wired.imap.on_client(b" APPEND ", kill_now)
        elif mode == "imap-search":
            self.wired.imap.on_client(b"HEADER Message-ID", kill_now)
        elif mode == "imap-fetch":
            self.wired.imap.on_client(b" FETCH ", kill_now)
        before = self.send_statuses()
        run = self.start(now)
        run_box.append(run)
        try:
            deadline = time.monotonic() + RUN_LIMIT_S
            while not self.holds_lock(run.pid) and run.wait(0.002) is None:
                assert time.monotonic() < deadline, "a run never took the daemon lock"
            if mode == "random":
                if run.wait(self.rng.uniform(0, fuse)) is None:
                    kill_now()
            elif run.wait(max(fuse * 2, 1.0)) is None and not killed.is_set():
                mode = "random"  # the moment never came: the clock kills instead
                kill_now()
            rc = run.wait(RUN_LIMIT_S)
            assert rc is not None, "a killed run did not die"
        finally:
            self.wired.imap.clear_triggers()
            self.wired.smtp.clear_triggers()
        if rc != -signal.SIGKILL:
            assert rc == 0, f"run exited {rc}: see {self.log}"
            self.figures.finished_before_kill += 1
            return False
        self.figures.kills_attempted += 1
        self.figures.kills_by_mode[mode] += 1
        if self.holds_lock(run.pid):
            self.figures.kills_in_pass += 1
            self.figures.kills_by_window[self.window_of_kill(before)] += 1
        else:
            # The lock was seen taken before the fuse was lit: the pass had ended and
            # released it; the kill hit the interpreter on its way out.
            self.figures.kills_by_window["after the pass (lock released, exiting)"] += 1
            return False  # not a kill point in the pass: try again with a shorter fuse
        return True

    def send_statuses(self) -> dict[str, str]:
        with StateStore(self.wired.state_dir).reading() as view:
            return {s.message_id: s.status for s in view.sends()}

    def window_of_kill(self, before: dict[str, str]) -> str:
        """Where the pass was when it died, from what changed in the state's send records
        during the killed run, what the relay holds, and what Sent holds."""
        changed = {mid: status for mid, status in self.send_statuses().items()
                   if before.get(mid) != status}
        if "intent" in changed.values():
            delivered = self.delivered_ids()
            if any(mid in delivered for mid, st in changed.items() if st == "intent"):
                return "intent recorded, relay has the mail, no result"
            return "intent recorded, relay has nothing"
        if "sent" in changed.values():
            in_sent = self.sent_folder_ids()
            if any(st == "sent" and mid not in in_sent for mid, st in changed.items()):
                return "result recorded, copy not yet in Sent"
            return "after a send and its copy"
        if changed:
            return "pending send resolved after restart"
        return "elsewhere (sync, decisions, notices)"

    def complete(self, now: datetime, sending: bool) -> None:
        """The same command again, until it exits 0 (it must, within two tries)."""
        for _ in range(2):
            run = self.start(now)
            started = time.monotonic()
            locked: float | None = None
            while (rc := run.wait(0.005)) is None:
                if locked is None and self.holds_lock(run.pid):
                    locked = time.monotonic()
                assert time.monotonic() - started < RUN_LIMIT_S, "a run hangs"
            if rc == 0:
                self.durations[sending] = time.monotonic() - (locked or started)
                return
        raise AssertionError(f"relance run --once --now {now} exited {rc}; see {self.log}")

    # -- what the world saw ------------------------------------------------------------
    def reminders_to(self, client: MailUser) -> list[EmailMessage]:
        return [m for m in (parsed(r.data) for r in self.relay.received_by(client.address))
                if "X-Relance-Step" in m]

    def delivered_ids(self) -> set[str]:
        return {str(parsed(r.data)["Message-ID"]) for c in self.clients
                for r in self.relay.received_by(c.address)}

    def sent_folder_ids(self) -> set[str]:
        with self.dovecot.imap_client(self.office.firm) as client:
            client.select_folder("Sent", readonly=True)
            uids = client.search(["HEADER", "X-Relance-Step", ""])
            fetched = client.fetch(uids, [b"BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"]) \
                if uids else {}
        ids = set()
        for data in fetched.values():
            raw = next(v for k, v in data.items() if k.startswith(b"BODY"))
            ids.add(str(parsed(raw)["Message-ID"]))
        return ids

    def count(self) -> None:
        f = self.figures
        by_id: collections.Counter[str] = collections.Counter()
        by_step: collections.Counter[tuple[str, str]] = collections.Counter()
        for client in self.clients:
            received = self.reminders_to(client)
            f.sends += len(received)
            for mail in received:
                by_id[str(mail["Message-ID"])] += 1
                by_step[(str(mail["X-Relance-Invoice"]), str(mail["X-Relance-Step"]))] += 1
        f.duplicates_by_message_id = sum(n - 1 for n in by_id.values())
        f.duplicates_by_invoice_step = sum(n - 1 for n in by_step.values())
        if self.replied_at is not None:
            f.sends_after_reply = len(self.reminders_to(self.replier)) - self.replied_at
        with StateStore(self.wired.state_dir).reading() as view:
            cases = view.cases()
            sends = view.sends()
            f.cold_cases = view.cold_count()
        f.lost_cases = sum(inv.number not in cases for inv in self.invoices)
        owner = self.office.owner.address
        unknown_texts = [_text(m) for m in notices_to(self.relay, owner, "send-unknown")]
        f.unknown_notices = len(unknown_texts)
        f.reply_notices = len(notices_to(self.relay, owner, "reply"))
        f.replies_not_told = max(0, f.replies - f.reply_notices)
        delivered = self.delivered_ids()
        unknown = [s for s in sends if s.status == "unknown"]
        f.unknown_outcomes = len(unknown)
        f.unknown_not_told = sum(not any(s.message_id in t for t in unknown_texts)
                                 for s in unknown)
        f.unknown_but_delivered = sum(s.message_id in delivered for s in unknown)
        in_sent = self.sent_folder_ids()
        f.sent_missing_from_sent_folder = sum(
            s.status == "sent" and s.message_id not in in_sent for s in sends)
        journal_ids = {e.get("message_id") for e in Journal(self.wired.state_dir).entries()}
        f.journal_gaps = sum(s.message_id not in journal_ids for s in sends
                             if s.status != "intent")
        if any(s.status == "intent" for s in sends):
            f.problems.append(f"seed {self.seed}: an intent is still unresolved")
        if f.sends == 0:
            f.problems.append(f"seed {self.seed}: nothing was ever sent (a vacuous world)")


def _text(mail: EmailMessage) -> str:
    body = mail.get_body(("plain",))
    return str(body.get_content()) if body is not None else ""


def live_worlds(count: int, mornings: int, how: str, min_in_pass: int, workers: int,
                dovecot: Dovecot, relay: SmtpServer, make_user: MakeUser,
                tmp_path: Path) -> Figures:
    """Run `count` worlds (more if fewer than `min_in_pass` kills landed in a pass)."""
    launcher = Launcher(how)
    total = Figures()
    try:
        index = 0
        while index < count or (total.kills_in_pass < min_in_pass and index < count * 3):
            batch = range(index, index + (workers if index >= count else count - index))
            worlds = [World(i, SEED + i, dovecot, relay, make_user, tmp_path / f"world{i}",
                            launcher, mornings) for i in batch]
            with ThreadPoolExecutor(max_workers=workers) as pool:
                for figures in pool.map(World.live, worlds):
                    total.add(figures)
            index = batch.stop
    finally:
        launcher.close()
    return total


def assert_promises(total: Figures) -> None:
    report = total.table()
    print(f"\nkill-point figures ({'full' if FULL else 'CI'}):\n{report}")
    assert total.problems == [], report
    assert total.duplicates_by_message_id == 0, report
    assert total.duplicates_by_invoice_step == 0, report
    assert total.lost_cases == 0, report
    assert total.sends_after_reply == 0, report
    assert total.sends > 0 and total.kills_in_pass > 0, report
    assert total.cold_cases > 0, report


@pytest.fixture
def shared_relay(smtp_server: SmtpServer) -> SmtpServer:
    """Worlds share the session relay: each has its own clients, and no scripted failures."""
    return smtp_server


@pytest.mark.skipif(FULL, reason="RELANCE_FAULTS_FULL=1 runs the full version instead")
def test_kills_at_40_points_never_duplicate_lose_or_send_after_a_reply(
    dovecot: Dovecot, shared_relay: SmtpServer, make_user: MakeUser, tmp_path: Path
) -> None:
    total = live_worlds(1, 40, "fork", 30, 1, dovecot, shared_relay, make_user, tmp_path)
    assert_promises(total)
    assert total.kills_attempted >= 40 * 1.2 * 0.8


@pytest.mark.skipif(not FULL, reason="the full version: RELANCE_FAULTS_FULL=1 (about 15 min)")
def test_kills_at_200_points_never_duplicate_lose_or_send_after_a_reply(
    dovecot: Dovecot, shared_relay: SmtpServer, make_user: MakeUser, tmp_path: Path
) -> None:
    how = os.environ.get("RELANCE_FAULTS_SPAWN", "exec")
    total = live_worlds(6, 46, how, 200, 3, dovecot, shared_relay, make_user, tmp_path)
    assert_promises(total)
    assert total.kills_in_pass >= 200
    out = os.environ.get("RELANCE_FAULTS_REPORT")
    if out:
        Path(out).write_text(json.dumps(
            {k: (dict(v) if isinstance(v, collections.Counter) else v)
             for k, v in vars(total).items()}, indent=2, default=str))



# -- kills at one chosen moment ------------------------------------------------------------


@pytest.fixture
def firm(dovecot: Dovecot, relay: SmtpServer, make_user: MakeUser,
         tmp_path: Path) -> Iterator[Wired]:
    wired = wire(dovecot, relay, make_user, tmp_path / "firm")
    yield wired
    wired.imap.close()
    wired.smtp.close()


def run_killed_at(wired: Wired, now: datetime, arm: Callable[[Callable[[], bool]], object]
                  ) -> int | None:
    """`python -m relance run --once --now NOW`, SIGKILLed when the proxy sees the moment
    `arm` sets up (the chunk is dropped); its exit status (-9 when the kill landed)."""
    launcher = Launcher("exec")
    box: list[Run] = []

    def kill_now() -> bool:
        for _ in range(200):
            if box:
                break
            time.sleep(0.01)
        with contextlib.suppress(ProcessLookupError):
            os.kill(box[0].pid, signal.SIGKILL)
        return False

    arm(kill_now)
    run = launcher.start(["run", "--once", "--now", now.isoformat(),
                          "--config", str(wired.office.config_path)],
                         wired.office.home / "runs.log")
    box.append(run)
    try:
        return run.wait(RUN_LIMIT_S)
    finally:
        wired.imap.clear_triggers()
        wired.smtp.clear_triggers()


def in_sent(wired: Wired, message_id: str) -> bool:
    with wired.office.dovecot.imap_client(wired.office.firm) as imap:
        imap.select_folder("Sent", readonly=True)
        return bool(imap.search(["HEADER", "Message-ID", message_id]))


def test_kill_after_the_relay_accepted_never_sends_twice_and_tells_the_owner(
    firm: Wired, make_user: MakeUser
) -> None:
    client = make_user("client")
    send_invoice(firm.office, client)
    firm.office.pass_at(at(COURTESY - timedelta(days=7)))

    rc = run_killed_at(firm, at(COURTESY),
                       lambda kill: firm.smtp.on_server(b"queued as", kill))
    assert rc == -signal.SIGKILL
    for day in (COURTESY, COURTESY + timedelta(days=1)):
        firm.office.pass_at(at(day))

    (reminder,) = reminders_to(firm.relay, client.address)
    (notice,) = notices_to(firm.relay, firm.office.owner.address, "send-unknown")
    assert str(reminder["Message-ID"]) in _text(notice)
    assert firm.office.case(NUMBER).steps[0].outcome == "unknown"


def test_kill_before_the_copy_reaches_sent_still_files_the_copy_later(
    firm: Wired, make_user: MakeUser
) -> None:
    client = make_user("client")
    send_invoice(firm.office, client)
    firm.office.pass_at(at(COURTESY - timedelta(days=7)))

    rc = run_killed_at(firm, at(COURTESY), lambda kill: firm.imap.on_client(b" APPEND ", kill))
    assert rc == -signal.SIGKILL
    firm.office.pass_at(at(COURTESY))
    firm.office.pass_at(at(COURTESY + timedelta(days=1)))

    (reminder,) = reminders_to(firm.relay, client.address)
    assert firm.office.case(NUMBER).steps[0].outcome == "sent"
    assert in_sent(firm, str(reminder["Message-ID"]))


def test_kill_before_the_reply_notice_leaves_still_tells_the_owner(
    firm: Wired, make_user: MakeUser
) -> None:
    client = make_user("client")
    office = firm.office
    send_invoice(office, client)
    office.pass_at(at(COURTESY))
    (courtesy,) = reminders_to(firm.relay, client.address)
    answer = message(f"Client <{client.address}>", office.firm.address,
                     str(courtesy["Subject"]), "Je paie vendredi.\n", at(COURTESY, 15),
                     In_Reply_To=str(courtesy["Message-ID"]),
                     References=f"{courtesy['References']} {courtesy['Message-ID']}")
    office.dovecot.deliver_lmtp(office.firm.address, answer.as_bytes(),
                                mail_from=client.address)

    rc = run_killed_at(firm, at(COURTESY + timedelta(days=1)),
                       lambda kill: firm.smtp.on_client(b"\r\n.\r\n", kill,
                                                        after=b"X-Relance-Notice: reply"))
    assert rc == -signal.SIGKILL
    office.pass_at(at(COURTESY + timedelta(days=1)))
    office.pass_at(at(COURTESY + timedelta(days=2)))

    assert office.case(NUMBER).state.value == "paused"
    assert len(notices_to(firm.relay, office.owner.address, "reply")) == 1


class _Killed(BaseException):
    """Stands for SIGKILL inside the process: nothing after it runs."""


def test_kill_between_the_state_and_the_journal_still_journals_the_send(
    firm: Wired, make_user: MakeUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = make_user("client")
    send_invoice(firm.office, client)
    firm.office.pass_at(at(COURTESY - timedelta(days=7)))
    real_append = Journal.append

    def die_on_the_send(self: Journal, event: str, **kwargs: object) -> object:
        if event == "reminder-sent":
            raise _Killed
        return real_append(self, event, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Journal, "append", die_on_the_send)
    with pytest.raises(_Killed):
        firm.office.pass_at(at(COURTESY))
    monkeypatch.undo()
    firm.office._daemon = None  # a new process
    firm.office.pass_at(at(COURTESY))
    firm.office.pass_at(at(COURTESY + timedelta(days=1)))

    (reminder,) = reminders_to(firm.relay, client.address)
    journalled = {e.get("message_id") for e in Journal(firm.state_dir).entries()}
    assert str(reminder["Message-ID"]) in journalled
