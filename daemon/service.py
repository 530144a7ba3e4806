"""`relance run`: the long-running daemon around the pass, as systemd runs it.

Pass, IDLE until a change or the next due step, pass again. Signals, reconnection and
the conversation with systemd (READY, STATUS, WATCHDOG, RELOADING, STOPPING over
`$NOTIFY_SOCKET`) live here; the deciding lives in `app`.

SIGTERM (or SIGINT) ends the daemon within a second when it idles or waits to
reconnect; in the middle of a pass it first finishes the step at hand, so a reminder
is never cut between "sent" and "recorded". SIGHUP reloads rules and templates; a
broken edit is reported and the old ones stay.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable, Collection, Iterable
from datetime import datetime, timedelta
from types import FrameType
from typing import Any

from relance import heap
from relance.app import REIDLE_SECONDS, Clock, Daemon, Runtime
from relance.config import Config
from relance.core.schedule import BusinessCalendar, plan_each
from relance.logs import quote
from relance.mailbox.imap import IMAP_ERRORS, Mailbox, is_disk_error
from relance.model import OPEN_STATES, Case, CaseState, Channel, Mode
from relance.rules.model import Rules
from relance.sdnotify import Notifier, Watchdog, watchdog_interval
from relance.store.plan import Planned

log = logging.getLogger("relance")

MAX_BACKOFF_S = 300.0
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_CHANNEL_WORDS = {Channel.EMAIL: "send", Channel.LETTER: "letter", Channel.TASK: "task"}
_ATTENTION = ((CaseState.PAUSED, "paused"), (CaseState.NEEDS_FACTS, "need facts"),
              (CaseState.BAD_ADDRESS, "bad address"))


class _Stop(BaseException):
    """Raised by the SIGTERM handler while the daemon only waits for a connection."""


def status_line(cases: Iterable[Case], rules: Rules, calendar: BusinessCalendar,
                now: datetime, mode: Mode = Mode.SEND,
                planned: Planned | None = None) -> str:
    """What `systemctl status` shows: e.g. "12 open cases, next send Tue 08:30 (F-14
    reminder-1)". Pure, so it is tested without a mailbox. `planned`, when given, is
    `Daemon.planned` at `now` (the daemon has just planned for its idle timer)."""
    open_cases = [c for c in cases if c.state in OPEN_STATES]
    if planned is None:
        planned = [(c.number, p) for c, p in plan_each(open_cases, rules, calendar, now)]
    return status_text([c.state for c in open_cases], planned, now, mode)


def status_text(open_states: Collection[CaseState], planned: Planned, now: datetime,
                mode: Mode = Mode.SEND) -> str:
    """`status_line` from the open cases' states and their plans alone: what a daemon
    that reused its saved plan has, having decoded no case."""
    count = len(open_states)
    text = f"{count} open case{'' if count == 1 else 's'}"
    attention = [f"{n} {word}" for state, word in _ATTENTION
                 if (n := sum(s is state for s in open_states))]
    if attention:
        text += f" ({', '.join(attention)})"
    if planned:
        number, step = min(planned, key=lambda item: (item[1].at, item[0]))
        text += (f", next {_CHANNEL_WORDS.get(step.channel, 'step')} "
                 f"{_when(step.at, now)} ({number} {step.step_name})")
    elif count:
        text += ", nothing planned"
    if mode is not Mode.SEND:
        text = f"{mode.value}: {text}"
    return text


def _when(at: datetime, now: datetime) -> str:
    """"Tue 08:30" within the coming week, the full date further out."""
    local = at.astimezone(now.tzinfo)
    if local <= now:
        return "now"
    if local.date() - now.date() < timedelta(days=6):
        return f"{WEEKDAYS[local.weekday()]} {local:%H:%M}"
    return f"{WEEKDAYS[local.weekday()]} {local:%Y-%m-%d %H:%M}"


class Service:
    """One run of the daemon: its flags, its systemd notifier and its watchdog."""

    def __init__(self, daemon: Daemon, clock: Clock, reload: Callable[[], Runtime | None],
                 sleep: Callable[[float], None], notifier: Notifier) -> None:
        self.daemon = daemon
        self.clock = clock
        self.reload = reload
        self.sleep = sleep
        self.notifier = notifier
        self.watchdog = Watchdog(notifier, watchdog_interval())
        self.stop_requested = False
        self.reload_requested = False
        self.abortable = False  # True only while waiting: a signal may end the wait at once
        # What the rule and template files looked like: an edit reloads them, as SIGHUP does.
        self._files_seen = edited_files(daemon.config)
        self._files_checked_at = time.monotonic()

    # -- signals ----------------------------------------------------------------------
    def on_term(self, signum: int, frame: FrameType | None) -> None:
        if not self.stop_requested:
            self.stop_requested = True
            self.notifier.stopping()
        if self.abortable:
            raise _Stop

    def on_hup(self, signum: int, frame: FrameType | None) -> None:
        self.reload_requested = True

    def interrupted(self) -> bool:
        """Asked every idle slice: ends IDLE on SIGTERM, SIGHUP or an edited rule or
        template file; also the watchdog's beat."""
        self.watchdog.kick()
        now = time.monotonic()
        if now - self._files_checked_at >= FILES_CHECK_S:
            self._files_checked_at = now
            seen = edited_files(self.daemon.config)
            if seen != self._files_seen:
                self._files_seen = seen
                log.info("event=files-changed action=reload")
                self.reload_requested = True
        return self.stop_requested or self.reload_requested

    # -- the loop ---------------------------------------------------------------------
    def run(self) -> None:
        imap = self.daemon.config.imap
        with self.daemon.store.lock_daemon() as pid:
            self.daemon.warm_start(self.clock.now())
            log.info("event=started mode=%s pid=%d imap=%s watchdog=%s",
                     self.daemon.config.mode.value, pid, quote(f"{imap.host}:{imap.port}"),
                     f"{self.watchdog.interval:g}s" if self.watchdog.interval else "off")
            self.notifier.ready(f"connecting to {imap.host}:{imap.port}")
            self._chain_watchdog_to_events()
            backoff = 1.0
            while not self.stop_requested:
                self.handle_reload()
                try:
                    self.abortable = True
                    try:
                        mailbox = Mailbox(imap).connect()
                    finally:
                        self.abortable = False
                    with mailbox:
                        backoff = 1.0
                        self.serve(mailbox)
                except _Stop:
                    break
                except IMAP_ERRORS as exc:
                    reason = f"{type(exc).__name__}: {exc}"
                    if is_disk_error(exc):
                        # The state could not be written (disk full, read-only): nothing
                        # was lost; say which file, and try again later.
                        log.error("event=disk-error file=%s reason=%s retry_in=%.0fs",
                                  quote(str(getattr(exc, "filename", "") or "")),
                                  quote(reason), backoff)
                        self.notifier.status(f"cannot write the state ({reason}); "
                                             f"retrying in {backoff:.0f} s")
                        self.wait(backoff)
                        backoff = min(backoff * 2, MAX_BACKOFF_S)
                        continue
                    log.warning("event=imap-error reason=%s retry_in=%.0fs", quote(reason),
                                backoff)
                    self.notifier.status(
                        f"IMAP {imap.host}:{imap.port} failed ({reason}); "
                        f"retrying in {backoff:.0f} s")
                    self.wait(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF_S)
            self.notifier.stopping()
            self.daemon.save_plan()
            self.notifier.status("stopped")
            log.info("event=stopped")

    def serve(self, mailbox: Mailbox) -> None:
        """Pass and IDLE on one connection until a stop or a dead link."""
        while not self.stop_requested:
            self.handle_reload()
            now = self.clock.now()
            self.watchdog.kick()
            self.daemon.run_pass(mailbox, now)
            self.watchdog.kick()
            planned = self.daemon.planned(now)
            wake = self.daemon.next_wake(now, planned)
            self.report_status(now, planned)
            if self.stop_requested:
                break
            seconds = min((wake - now).total_seconds(), REIDLE_SECONDS)
            outcome = mailbox.idle_until(time.monotonic() + max(seconds, 1.0),
                                         stop=self.interrupted, tick=self.watchdog.tick,
                                         seen=self.inbox_seen())
            if outcome == "dead":
                log.warning("event=imap-silent action=reconnect")
                return

    def inbox_seen(self) -> tuple[int, int] | None:
        """(UIDVALIDITY, next UID) of INBOX as the pass left it: IDLE compares it with
        its own SELECT, so a mail landing between the pass and IDLE is not missed."""
        with self.daemon.store.reading() as view:
            cursor = view.cursor("INBOX")
        if cursor is None:
            return None
        return cursor.uidvalidity, cursor.last_uid + 1

    def wait(self, seconds: float) -> None:
        """Sleep before a reconnection, awake to signals and the watchdog."""
        step = min(0.5, self.watchdog.tick)
        waited = 0.0
        while waited < seconds and not self.stop_requested:
            self.watchdog.kick()
            if self.reload_requested:
                self.handle_reload()
            self.sleep(step)
            waited += step

    def handle_reload(self) -> None:
        """SIGHUP: new rules and templates, or the old ones and the reason in the log."""
        if not self.reload_requested:
            return
        self.reload_requested = False
        self.notifier.reloading()
        try:
            fresh = self.reload()
            reason = "rules or templates have errors (listed above)"
        except Exception as exc:  # a reload must never take the daemon down
            fresh, reason = None, f"{type(exc).__name__}: {exc}"
        if fresh is None:
            log.error("event=reload-failed reason=%s kept=previous", quote(reason))
        else:
            self.daemon.rt = fresh
            heap.thaw()  # the Runtime it replaces was frozen at start, cycles and all
            log.info("event=reloaded steps=%d templates=%d", len(fresh.rules.steps),
                     len(fresh.templates.names()))
        self.notifier.ready()
        self.report_status(self.clock.now())

    def report_status(self, now: datetime, planned: Planned | None = None) -> None:
        if not self.notifier.enabled:
            return
        rt = self.daemon.rt
        try:
            if planned is None:
                planned = self.daemon.planned(now)
            with self.daemon.store.reading() as view:
                open_states = view.open_states()
            text = status_text(open_states, planned, now.astimezone(rt.config.tz),
                               rt.config.mode)
        except Exception as exc:  # the status line is a courtesy; never fail a pass on it
            text = f"status unavailable ({type(exc).__name__}: {exc})"
        self.notifier.status(text)

    def _chain_watchdog_to_events(self) -> None:
        """A long pass (a first sync of a big mailbox) beats the watchdog at each event."""
        previous = self.daemon.on_event

        def on_event(entry: dict[str, Any]) -> None:
            self.watchdog.kick()
            if previous is not None:
                previous(entry)

        self.daemon.on_event = on_event


FILES_CHECK_S = 2.0  # how often an idle daemon looks at its rule and template files


def edited_files(config: Config) -> frozenset[tuple[str, int, int]]:
    """(path, mtime, size) of every rule and template file: a cheap fingerprint."""
    found = set()
    for folder in (config.rules_dir, config.templates_dir):
        try:
            for path in folder.rglob("*"):
                if path.is_file():
                    stat = path.stat()
                    found.add((str(path), stat.st_mtime_ns, stat.st_size))
        except OSError:
            continue
    return frozenset(found)


def run_forever(
    daemon: Daemon, clock: Clock, reload: Callable[[], Runtime | None],
    sleep: Callable[[float], None] = time.sleep, notifier: Notifier | None = None,
) -> None:
    """`relance run`: pass, IDLE until a change or the next due step, pass again.

    Raises AlreadyRunning when another daemon holds the state directory. `notifier`
    defaults to the one `$NOTIFY_SOCKET` names (none: notifications are skipped).
    """
    service = Service(daemon, clock, reload, sleep,
                      notifier if notifier is not None else Notifier.from_environment())
    handlers = {signal.SIGTERM: service.on_term, signal.SIGINT: service.on_term,
                signal.SIGHUP: service.on_hup}
    previous = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
    try:
        service.run()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        service.notifier.close()
