"""The loop: mailbox events → facts → decisions → actions → mailbox.

This module is wiring only. It reads what is new in the mailbox (adapters), asks the core
what it means and what is due, carries the decisions out, and records each in the state
and the journal. Every function takes `now`: only `run` reads the clock.
"""

from __future__ import annotations

import dataclasses
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
from relance.book import Book, Notice, record_step, with_thread_id
from relance.config import Config
from relance.core import compose
from relance.core.classify import Kind, classify
from relance.core.extract import looks_like_invoice
from relance.core.listen import (
    known_numbers_in,
    new_part,
)
from relance.core.schedule import (
    BusinessCalendar,
    plan_next,
)
from relance.core.thread import cases_for
from relance.intake import Intake
from relance.listening import Listening, listed
from relance.mailbox import smtp
from relance.mailbox.imap import IMAP_ERRORS, Mailbox
from relance.mailbox.parse import ParseFailure, parse_headers, parse_message
from relance.model import (
    Attachment,
    Case,
    Firm,
    Mail,
    Mode,
)
from relance.rules.load import load_rules
from relance.rules.model import Rules
from relance.store.journal import Journal
from relance.store.secret import load_or_create_secret
from relance.store.state import Cursor, StateStore
from relance.templates import Templates, load_templates, sample_contexts

log = logging.getLogger("relance")

NOTICE_TEMPLATES = (
    "notice-reply", "notice-bounce", "notice-needs-facts", "notice-send-unknown",
    "notice-formal-notice", "notice-task", "notice-confirm", "notice-unverified",
    "notice-payment", "notice-digest", "instalment",
)
MAX_MESSAGE_BYTES = 25 * 1024 * 1024  # bigger mails are noted, not parsed
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


class Daemon(Intake, Listening, Acting):
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

    # -- sync -------------------------------------------------------------------------
    def sync_folder(
        self, mailbox: Mailbox, folder: str, now: datetime, notices: list[Notice]
    ) -> None:
        state = mailbox.folder_state(folder)
        with self.store.reading() as view:
            cursor = view.cursor(folder)
        last_uid = 0
        if cursor is not None and cursor.uidvalidity == state.uidvalidity:
            last_uid = cursor.last_uid
            if state.uidnext and state.uidnext - 1 <= last_uid:
                return  # nothing new: a restart costs one SELECT per folder
        elif cursor is not None:
            self.event(now, "uidvalidity-changed", folder=folder,
                       old=cursor.uidvalidity, new=state.uidvalidity)
        uids = mailbox.uids_after(last_uid)
        if not uids:
            self._save_cursor(Cursor(folder, state.uidvalidity, last_uid, state.highestmodseq))
            return
        for chunk_start in range(0, len(uids), 500):
            chunk = uids[chunk_start : chunk_start + 500]
            heads = list(mailbox.fetch_headers(chunk))
            with self.store.transaction() as raw_tx:
                tx = Book(raw_tx)
                for fetched in heads:
                    try:
                        mail = parse_headers(fetched.header_bytes, folder, fetched.uid)
                        self.handle(tx, mailbox, mail, fetched.size, now, notices)
                    except IMAP_ERRORS:
                        raise
                    except Exception as exc:
                        # One message must never stop the mailbox: log it, skip it, go on.
                        if not isinstance(exc, (ParseFailure, ValueError, UnicodeError,
                                                LookupError)):
                            log.exception("folder %s uid %s: unexpected error", folder,
                                          fetched.uid)
                        self.event(now, "message-skipped", folder=folder, uid=fetched.uid,
                                   reason=f"{type(exc).__name__}: {exc}")
                tx.set_cursor(Cursor(folder, state.uidvalidity, chunk[-1], state.highestmodseq))
            # the folder stays selected read-only by fetch_headers; re-select if handle moved
            mailbox.folder_state(folder)

    def _save_cursor(self, cursor: Cursor) -> None:
        with self.store.transaction() as tx:
            tx.set_cursor(cursor)

    def handle(
        self, tx: Book, mailbox: Mailbox, head: Mail, size: int, now: datetime,
        notices: list[Notice],
    ) -> None:
        """Decide what one new message means, from its headers first."""
        firm = self.rt.firm
        kind = classify(head, firm)
        if kind is Kind.OWN:
            self._own_copy(tx, head, now)
            return
        in_sent = head.folder == self._sent_folder
        from_owner = head.from_addr in firm.owners
        owner_mail = from_owner or (kind is Kind.FIRM and in_sent and not self._to_clients(head))
        if owner_mail and (
            self._owner_mail(tx, mailbox, head, size, now, notices) or kind is not Kind.FIRM
        ):
            return
        if listed(head.from_addr, self.config.firm.payment_senders):
            self._payment(tx, mailbox, head, size, now, notices)
            return
        index = tx.index
        if kind is Kind.FIRM:
            numbers = cases_for(head, (), index)  # thread headers only
            if numbers:
                self._firm_wrote(tx, numbers, head, now)
                if "multipart/mixed" in head.headers.get("content-type", "").lower():
                    # A reply carrying a document: a credit note or a corrected invoice.
                    full = self._full(mailbox, head, size, now)
                    if full is not None:
                        self._invoice_mail(tx, full, now, notices)
            elif self._to_clients(head) and looks_like_invoice(
                head.subject, head.headers.get("content-type", "")
            ):
                full = self._full(mailbox, head, size, now)
                if full is not None:
                    self._invoice_mail(tx, full, now, notices)
            return
        theirs = tx.open_cases_of(head.from_addr)
        numbers = cases_for(head, theirs, index)
        if not numbers and not (theirs or kind is Kind.BOUNCE):
            return  # not about any case: most of an inbox
        full = self._full(mailbox, head, size, now)
        if full is None:
            return
        if kind is Kind.BOUNCE:
            self._bounce(tx, full, mailbox, now, notices)
            return
        numbers = numbers or cases_for(full, theirs, index)
        if kind is Kind.REPLY and theirs:
            # A reply that names invoices is about those; one that names none is about
            # every open invoice of that client (they answered "the" reminder).
            # The subject is the thread's: only what the client wrote names an invoice.
            named = known_numbers_in(new_part(full.text), [c.number for c in theirs])
            numbers = named or (sorted({*numbers, *(c.number for c in theirs)})
                                if numbers else [])
        for number in numbers:
            case = tx.get_case(number)
            if case is None:
                continue
            case = with_thread_id(case, full.message_id)
            if kind is Kind.AUTO_REPLY:
                case = self._auto_replied(case, full, now)
                tx.put_case(case)
                self.event(now, "auto-reply", number, sender=full.from_addr,
                           subject=full.subject, waits_until=case.paused_until,
                           message_id=full.message_id, dkim=self._dkim_on_arrival(full, now))
                continue
            self._client_replied(tx, case, full, now, notices)


    def _to_clients(self, mail: Mail) -> bool:
        inside = set(self.rt.firm.addresses) | set(self.rt.firm.owners)
        return any(a not in inside for a in mail.recipients)

    def _full(self, mailbox: Mailbox, head: Mail, size: int, now: datetime) -> Mail | None:
        if size > MAX_MESSAGE_BYTES:
            self.event(now, "message-too-big", folder=head.folder, uid=head.uid, size=size,
                       subject=head.subject)
            return None
        raw = mailbox.fetch_message(head.folder, head.uid)
        if raw is None:
            return None
        self._last_raw = raw  # for the DKIM check of a client's message, as it arrived
        try:
            return parse_message(raw, head.folder, head.uid)
        except ParseFailure as exc:
            self.event(now, "message-skipped", folder=head.folder, uid=head.uid, reason=str(exc))
            return None

    def _own_copy(self, tx: Book, head: Mail, now: datetime) -> None:
        """A copy of our own reminder (in Sent, or sent by the owner from Drafts)."""
        number = head.headers.get("x-relance-invoice", "").strip()
        case = tx.get_case(number) if number else None
        if case is None or "x-relance-step" not in head.headers:
            return
        updated = with_thread_id(case, head.message_id)
        step_header = head.headers.get("x-relance-step", "").strip()
        drafted = [s for s in case.steps if s.outcome == "drafted" and (
            s.message_id == head.message_id or str(s.index) == step_header)]
        if drafted and head.folder != "INBOX":
            # The owner sent a reminder relance had put in Drafts: now it is a contact.
            at = head.date or now
            updated = dataclasses.replace(
                updated,
                steps=tuple(dataclasses.replace(s, outcome="sent", at=at) if s in drafted
                            else s for s in updated.steps),
                last_contact_at=max(at, updated.last_contact_at or at),
            )
            self.event(now, "draft-sent-by-owner", number, message_id=head.message_id, at=at)
        if updated is not case:
            tx.put_case(updated)

    def _firm_wrote(self, tx: Book, numbers: list[str], head: Mail, now: datetime) -> None:
        """The firm wrote by hand in a thread: a contact, so the next step keeps its gap."""
        for number in numbers:
            case = tx.get_case(number)
            if case is None:
                continue
            at = head.date or now
            last = case.last_contact_at
            case = with_thread_id(case, head.message_id)
            if last is None or at > last:
                case = dataclasses.replace(case, last_contact_at=at)
            tx.put_case(case)
            self.event(now, "firm-wrote", number, subject=head.subject, written_at=at)


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
