"""The loop: mailbox events → facts → decisions → actions → mailbox.

This module is wiring only. It reads what is new in the mailbox (adapters), asks the core
what it means and what is due, carries the decisions out, and records each in the state
and the journal. Every function takes `now`: only `run` reads the clock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from typing import Any

from relance.acting import Acting, group_steps
from relance.archive import (
    ensure_folder_path,
    relance_folder,
)
from relance.book import Notice, record_step, with_thread_id
from relance.config import Config
from relance.core import compose
from relance.core.schedule import (
    BusinessCalendar,
    plan_next,
)
from relance.intake import Intake
from relance.listening import Listening
from relance.mailbox import smtp
from relance.mailbox.imap import Mailbox
from relance.model import (
    Attachment,
    Case,
    Firm,
    Mode,
)
from relance.rules.load import load_rules
from relance.rules.model import Rules
from relance.store.journal import Journal
from relance.store.secret import load_or_create_secret
from relance.store.state import StateStore
from relance.sync import Sync
from relance.templates import Templates, load_templates, sample_contexts

log = logging.getLogger("relance")

NOTICE_TEMPLATES = (
    "notice-reply", "notice-bounce", "notice-needs-facts", "notice-send-unknown",
    "notice-formal-notice", "notice-task", "notice-confirm", "notice-unverified",
    "notice-payment", "notice-digest", "instalment",
)
REIDLE_SECONDS = 9 * 60  # re-issue IDLE before providers drop it at 10 minutes


@dataclass(frozen=True)
class Runtime:
    """What a pass decides with; rebuilt on SIGHUP, kept when the new files are broken."""

    config: Config
    rules: Rules
    templates: Templates
    calendar: BusinessCalendar
    firm: Firm


def load_runtime(config: Config) -> tuple[Runtime | None, list[str]]:
    """Rules and templates from disk, validated; problems as `FILE:LINE: message`."""
    rules, rule_errors = load_rules(config.rules_dir)
    templates, template_errors = load_templates(config.templates_dir)
    problems = [str(e) for e in rule_errors] + [str(e) for e in template_errors]
    if rules is None or templates is None:
        return None, problems
    try:
        calendar = BusinessCalendar.from_rules(rules, config.tz)
    except ValueError as exc:
        return None, [*problems, f"{config.rules_dir}: {exc}"]
    runtime = Runtime(config, rules, templates, calendar, config.firm.as_firm())
    required = [step.template for step in rules.steps] + list(NOTICE_TEMPLATES)
    problems += [str(e) for e in templates.check(sample_contexts(runtime.firm), required)]
    return (None if problems else runtime), problems


class Daemon(Sync, Intake, Listening, Acting):
    """One firm's mailbox and state; `run_pass` is the whole loop once."""

    def __init__(self, runtime: Runtime, store: StateStore, journal: Journal) -> None:
        self.rt = runtime
        self.store = store
        self.journal = journal
        self.on_event: Callable[[dict[str, Any]], None] | None = None
        self.secret = load_or_create_secret(store.state_dir)
        self._sent_folder = ""
        self._last_raw = b""
        self._drop_folders: dict[str, str] = {}
        # Letters made this run, kept for the case's evidence bundle.
        self._letters: dict[str, tuple[Attachment, ...]] = {}

    @property
    def config(self) -> Config:
        return self.rt.config

    # -- journal and log --------------------------------------------------------------
    def event(self, now: datetime, name: str, case: str | None = None, **details: Any) -> None:
        """One decision or fact: durable in the journal, one line in the log."""
        entry = self.journal.append(name, at=now, case=case, **details)
        shown = " ".join(f"{k}={_logfmt(v)}" for k, v in details.items() if v is not None)
        log.info("event=%s%s %s", name, f" case={case}" if case else "", shown)
        if self.on_event is not None:
            self.on_event(entry)

    # -- the pass ---------------------------------------------------------------------
    def run_pass(self, mailbox: Mailbox, now: datetime) -> None:
        """Sync what is new, then act on what is due at `now`."""
        notices: list[Notice] = []
        sent_folder = self._sent_folder = mailbox.sent_folder()
        if not self._drop_folders and self.config.mode is not Mode.DRY_RUN:
            self._drop_folders = self.ensure_drop_folders(mailbox)  # dry-run creates nothing
        self.resolve_pending_sends(mailbox, sent_folder, now, notices)
        for folder in (sent_folder, "INBOX"):
            self.sync_folder(mailbox, folder, now, notices)
        self.sync_drop_folders(mailbox, now, notices)
        self.act(mailbox, sent_folder, now, notices)
        self.seal_closed(mailbox, now)
        self.maybe_digest(now, notices)
        self.send_notices(notices, now)

    def ensure_drop_folders(self, mailbox: Mailbox) -> dict[str, str]:
        """Relance/Paid, /Pause, /Stop: created when missing, named with the server's
        own hierarchy separator."""
        folders = {}
        for verb, name in (("paid", "Paid"), ("pause", "Pause"), ("stop", "Stop")):
            folder = relance_folder(mailbox, name)
            ensure_folder_path(mailbox, folder)
            folders[verb] = folder
        return folders

    # -- at most once -----------------------------------------------------------------
    def resolve_pending_sends(
        self, mailbox: Mailbox, sent_folder: str, now: datetime, notices: list[Notice]
    ) -> None:
        """An intent with no result means a crash mid-send: look in Sent, never resend."""
        with self.store.reading() as view:
            pending = view.sends("intent")
        for record in pending:
            found = mailbox.find_message_id(sent_folder, record.message_id)
            status = "sent" if found else "unknown"
            steps = group_steps(record.number, record.step_index, record.step_name)
            touched: list[Case] = []
            with self.store.transaction() as tx:
                tx.send_result(record.message_id, status, "resolved after restart", at=now)
                for number, step_index, step_name in steps:
                    case = tx.get_case(number)
                    if case is None or case.last_step >= step_index:
                        continue
                    case = record_step(case, step_index, step_name, record.created_at,
                                        record.message_id, status)
                    tx.put_case(case)
                    touched.append(case)
            for case in touched:
                self.event(now, "send-resolved", case.number, message_id=record.message_id,
                           status=status)
            if status == "unknown" and touched:
                notices.append(Notice("send-unknown", "notice-send-unknown", touched[0], {
                    "message_id": record.message_id, "step_name": steps[0][2],
                    "step_index": steps[0][1], "attempted_at": record.created_at,
                    "detail": "the daemon stopped during the send; the copy is not in Sent",
                }))


    # -- telling the owner ------------------------------------------------------------
    def send_notices(self, notices: Iterable[Notice], now: datetime) -> None:
        firm = self.rt.firm
        for position, notice in enumerate(notices):
            if not firm.owners:
                continue
            try:
                message = self.build_notice(notice, now, position)
            except Exception as exc:
                log.exception("notice %s could not be written", notice.kind)
                self.event(now, "notice-failed", notice.case.number if notice.case else None,
                           kind=notice.kind, reason=f"{type(exc).__name__}: {exc}")
                continue
            if self.config.mode is Mode.DRY_RUN:
                self.event(now, "would-notify", notice.case.number if notice.case else None,
                           kind=notice.kind, subject=message["Subject"])
                continue
            outcome = smtp.send(self.config.smtp, message)
            if notice.case is not None and outcome.status != "failed":
                # The owner's answer to this notice will reference it: keep it in the
                # case's thread so the answer finds its case.
                with self.store.transaction() as tx:
                    fresh = tx.get_case(notice.case.number)
                    if fresh is not None:
                        tx.put_case(with_thread_id(fresh, str(message["Message-ID"]).strip()))
            self.event(now, "owner-notified", notice.case.number if notice.case else None,
                       kind=notice.kind, status=outcome.status, smtp_reply=outcome.reply)

    def build_notice(self, notice: Notice, now: datetime, position: int = 0) -> EmailMessage:
        case = notice.case or _NO_CASE
        notice_vars = compose.notice_vars(notice.kind, **notice.extra)
        context = compose.template_context(
            case, None, self.rt.firm, now, case.steps, notice=notice_vars,
            attachments=[a.filename for a in notice.attachments],
        )
        rendered = self.rt.templates.render(notice.template, case.language, context)
        message_id = compose.notice_message_id(
            case.number or None, notice.kind, now + timedelta(microseconds=position),
            self.rt.firm.domain, self.secret,
        )
        # The notices of one case form one thread in the owner's mail program.
        parent = notice.in_reply_to or next(
            (m for m in reversed(case.thread_ids) if compose.is_notice_id(m, self.secret)), None)
        return compose.build_owner_notice(self.rt.firm, rendered.subject, rendered.text, now,
                                          message_id, notice.case, parent,
                                          kind=notice.kind, attachments=notice.attachments)

    # -- the daemon -------------------------------------------------------------------
    def next_wake(self, now: datetime) -> datetime:
        """The earliest planned step (or a send window opening), for the idle timer."""
        with self.store.reading() as view:
            cases = view.cases()
        planned = [p.at for c in cases.values()
                   if (p := plan_next(c, self.rt.rules, self.rt.calendar, now)) is not None]
        future = [at for at in planned if at > now]
        return min(future, default=now + timedelta(seconds=REIDLE_SECONDS))


# Notices about no invoice (an unverified command, an unmatched payment, the digest).
_NO_CASE = Case(number="", client_addrs=(), subject="", root_message_id="<none@relance>")


def _logfmt(value: Any) -> str:
    text = "" if value is None else str(value)
    if not text or any(c in text for c in ' "='):
        return '"' + text.replace('"', '\\"') + '"'
    return text


class Clock:
    """The only place the daemon reads the time; `--now` replaces it with a fixed instant."""

    def __init__(self, tz: Any, fixed: datetime | None = None) -> None:
        self.tz = tz
        self.fixed = fixed

    def now(self) -> datetime:
        return self.fixed if self.fixed is not None else datetime.now(self.tz)


def run_once(daemon: Daemon, now: datetime) -> None:
    """`relance run --once`: one pass at `now`, then exit."""
    with daemon.store.lock_daemon(), Mailbox(daemon.config.imap) as mailbox:
        daemon.run_pass(mailbox, now)
