"""The loop: mailbox events → facts → decisions → actions → mailbox.

This module is wiring only. It reads what is new in the mailbox (adapters), asks the core
what it means and what is due, carries the decisions out, and records each in the state
and the journal. Every function takes `now`: only `run` reads the clock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import email
import email.policy
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from email.message import EmailMessage
from typing import Any

from flufl.bounce import all_failures

from relance.archive import (
    SEAL_STATES,
    cases_to_seal,
    close_case,
    ensure_folder_path,
    relance_folder,
)
from relance.config import Config
from relance.core import commands as owner_commands
from relance.core import compose
from relance.core.classify import Kind, classify, stated_return
from relance.core.commands import CommandRefused
from relance.core.extract import due_date_for, extract_invoices_with_notes, looks_like_invoice
from relance.core.facts import apply_facts
from relance.core.letter import formal_notice_for, late_penalties, record_lrar, render_formal_notice
from relance.core.listen import (
    Command,
    digest,
    digest_due,
    format_digest,
    known_numbers_in,
    match_payment,
    money_text,
    new_part,
    parse_commands,
    plan_instalments,
    read_payment,
    reply_intent,
    trust_of,
)
from relance.core.schedule import (
    BusinessCalendar,
    client_key,
    current_instalment,
    due_decisions,
    plan_next,
    step_for,
    with_client_contacts,
)
from relance.core.thread import cases_for, same_client, thread_index
from relance.mailbox import smtp
from relance.mailbox.imap import IMAP_ERRORS, Mailbox
from relance.mailbox.parse import ParseFailure, parse_headers, parse_message
from relance.model import (
    OPEN_STATES,
    Attachment,
    Case,
    CaseState,
    Channel,
    Decision,
    Firm,
    InvoiceFacts,
    Mail,
    Mode,
    StepRecord,
)
from relance.rules.load import load_rules
from relance.rules.model import Rules, Step
from relance.store.evidence import EvidenceError, dkim_check, safe_name
from relance.store.journal import Journal
from relance.store.secret import load_or_create_secret
from relance.store.state import Cursor, StateStore, Transaction
from relance.templates import Templates, load_templates, sample_contexts

log = logging.getLogger("relance")

NOTICE_TEMPLATES = (
    "notice-reply", "notice-bounce", "notice-needs-facts", "notice-send-unknown",
    "notice-formal-notice", "notice-task", "notice-confirm", "notice-unverified",
    "notice-payment", "notice-digest", "instalment",
)
MAX_HEADER_SCAN = 64 * 1024
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


class Book:
    """A transaction with the cases, the thread index and each client's open cases kept in
    memory, so that reading a batch of messages costs one decode of the state, not one per
    message. Every change goes through `put_case`, which keeps the three in step."""

    def __init__(self, tx: Transaction) -> None:
        self.tx = tx
        self._cases = tx.cases()
        self.index = thread_index(self._cases.values())
        self._by_address: dict[str, list[str]] | None = None

    def cases(self) -> dict[str, Case]:
        return self._cases

    def get_case(self, number: str) -> Case | None:
        return self._cases.get(number)

    def put_case(self, case: Case) -> None:
        self.tx.put_case(case)
        old = self._cases.get(case.number)
        self._cases[case.number] = case
        for message_id in (case.root_message_id, *case.thread_ids):
            known = self.index.get(message_id, ())
            if case.number not in known:
                self.index[message_id] = (*known, case.number)
        if old is None or old.client_addrs != case.client_addrs:
            self._by_address = None

    def open_cases_of(self, address: str) -> list[Case]:
        """The open cases of the client writing from `address` (see `same_client`)."""
        if self._by_address is None:
            by_address: dict[str, list[str]] = {}
            for case in self._cases.values():
                for known in case.client_addrs:
                    by_address.setdefault(known, []).append(case.number)
                    by_address.setdefault("@" + known.rpartition("@")[2], []).append(case.number)
            self._by_address = by_address
        numbers = dict.fromkeys(
            self._by_address.get(address, [])
            + self._by_address.get("@" + address.rpartition("@")[2], [])
        )
        found = (self._cases[n] for n in numbers)
        return [c for c in found
                if c.state in OPEN_STATES and same_client(address, c.client_addrs)]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tx, name)


@dataclass
class Notice:
    """A message for the owner, sent after the state is committed."""

    kind: str
    template: str
    case: Case | None
    extra: dict[str, Any] = field(default_factory=dict)
    attachments: tuple[Attachment, ...] = ()
    in_reply_to: str | None = None  # the owner's own mail, for a confirmation


class Daemon:
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
        if not self._drop_folders:
            self._drop_folders = self.ensure_drop_folders(mailbox)
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
        if _listed(head.from_addr, self.config.firm.payment_senders):
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
            case = _with_thread_id(case, full.message_id)
            if kind is Kind.AUTO_REPLY:
                case = self._auto_replied(case, full, now)
                tx.put_case(case)
                self.event(now, "auto-reply", number, sender=full.from_addr,
                           subject=full.subject, waits_until=case.paused_until,
                           message_id=full.message_id, dkim=self._dkim_on_arrival(full, now))
                continue
            self._client_replied(tx, case, full, now, notices)

    # -- the owner's mail: commands, by email or by folder -----------------------------
    def _owner_mail(
        self, tx: Book, mailbox: Mailbox, head: Mail, size: int, now: datetime,
        notices: list[Notice],
    ) -> bool:
        """Commands the owner wrote; True when the mail held any (applied or refused)."""
        full = self._full(mailbox, head, size, now)
        if full is None:
            return False
        commands, errors = parse_commands(full.text)
        if not commands and not errors:
            return False
        firm = self.rt.firm
        notice_ids = frozenset(
            m for m in (full.in_reply_to, *full.references)
            if m and compose.is_notice_id(m, self.secret)
        )
        trust = trust_of(full, owners=firm.owners, firm_addresses=firm.addresses,
                         authserv_id=self.config.firm.authserv_id, notice_ids=notice_ids,
                         folder_is_sent=full.folder == self._sent_folder)
        thread_numbers = cases_for(full, (), tx.index)
        if not thread_numbers and full.headers.get("x-relance-invoice"):
            thread_numbers = [full.headers["x-relance-invoice"].strip()]
        if not trust.trusted:
            self.event(now, "command-unverified", thread_numbers[0] if thread_numbers else None,
                       sender=full.from_addr, reason=trust.reason)
            notices.append(Notice("unverified", "notice-unverified", None, {
                "mail": full, "detail": trust.reason}))
            return True
        lines = [f"? {error}" for error in errors]
        touched: Case | None = None
        for command in commands:
            numbers = [command.number] if command.number else thread_numbers
            if not numbers:
                lines.append(f"? {command.line}: which invoice? Name it (e.g. "
                             f"`{command.verb} F-2026-0042`) or reply to a notification")
                continue
            for number in numbers:
                case = tx.get_case(number)
                if case is None:
                    lines.append(f"? {command.line}: no invoice {number}")
                    continue
                try:
                    updated = self.apply_command(case, command, now)
                except CommandRefused as exc:
                    lines.append(f"? {command.line}: {exc}")
                    continue
                tx.put_case(updated)
                touched = updated
                self.event(now, f"owner-{command.verb}", number, via=trust.how,
                           line=command.line, state=updated.state.value)
                lines.append(f"ok {command.line} → {number}: {_describe_case(updated)}")
        notices.append(Notice("confirm", "notice-confirm", touched, {
            "detail": "\n".join(lines)}, in_reply_to=full.message_id))
        return True

    def apply_command(self, case: Case, command: Command, now: datetime) -> Case:
        """One command of the owner, the same function whether typed or mailed."""
        tz = self.config.tz
        if command.verb == "paid":
            return owner_commands.paid(case, now, command.amount)
        if command.verb == "pause":
            until = (owner_commands.pause_end(now, tz, command.until, None) if command.until
                     else now + command.duration if command.duration else None)
            return owner_commands.pause(case, now, until, f"paused by the owner {now:%Y-%m-%d}")
        if command.verb == "resume":
            return owner_commands.resume(case)
        if command.verb == "stop":
            return owner_commands.stop(case, now)
        if command.verb == "facts":
            return apply_facts(case, now, command.amount, command.due)
        if command.verb == "sent-lrar":
            today = now.astimezone(tz).date()
            return record_lrar(case, command.sent_on or today, today=today)
        if command.verb == "plan":
            return self._plan(case, command, now)
        raise CommandRefused(f"{command.verb}: not a command relance knows")

    def _plan(self, case: Case, command: Command, now: datetime) -> Case:
        """Instalments: the balance split exactly, each chased once if not paid on time."""
        if case.state not in OPEN_STATES and case.state is not CaseState.FORMAL_NOTICE:
            raise CommandRefused(f"{case.number} is {case.state.value}: no plan to make")
        if case.balance is None or command.count is None:
            raise CommandRefused(f"{case.number}: no amount known to split; set it first")
        today = now.astimezone(self.config.tz).date()
        parts = plan_instalments(case.balance, command.count, command.period or "monthly",
                                 today)
        # Earlier payments stay counted: the plan covers what is still owed after them.
        already = case.paid + case.credited
        if already:
            parts = [(parts[0][0], parts[0][1] + already), *parts[1:]]
        return dataclasses.replace(
            case, instalments=tuple(parts), state=CaseState.CHASING, paused_until=None,
            reason=f"plan: {len(parts)} instalments, {parts[0][0]:%Y-%m-%d} to "
                   f"{parts[-1][0]:%Y-%m-%d}",
        )

    def sync_drop_folders(self, mailbox: Mailbox, now: datetime, notices: list[Notice]) -> None:
        """A message of a thread dragged into Relance/Paid, /Pause or /Stop is a command:
        only someone with the mailbox's password can move it there."""
        for verb, folder in self._drop_folders.items():
            state = mailbox.folder_state(folder)
            with self.store.reading() as view:
                cursor = view.cursor(folder)
            last = cursor.last_uid if cursor and cursor.uidvalidity == state.uidvalidity else 0
            if state.uidnext and state.uidnext - 1 <= last:
                continue
            uids = mailbox.uids_after(last)
            heads = list(mailbox.fetch_headers(uids))
            with self.store.transaction() as tx:
                index = thread_index(tx.cases().values())
                for fetched in heads:
                    head = parse_headers(fetched.header_bytes, folder, fetched.uid)
                    # The message itself may be of the thread (the invoice, a reminder),
                    # or answer one.
                    numbers = list(index.get(head.message_id, ())) or cases_for(head, (), index)
                    if not numbers and head.headers.get("x-relance-invoice"):
                        numbers = [head.headers["x-relance-invoice"].strip()]
                    lines = []
                    touched = None
                    for number in numbers:
                        case = tx.get_case(number)
                        if case is None:
                            continue
                        try:
                            updated = self.apply_command(case, Command(verb=verb, line=verb),
                                                         now)
                        except CommandRefused as exc:
                            lines.append(f"? {verb} {number}: {exc}")
                            continue
                        tx.put_case(updated)
                        touched = updated
                        self.event(now, f"owner-{verb}", number, via="folder", folder=folder)
                        lines.append(f"ok {verb} → {number}: {_describe_case(updated)}")
                    if not numbers:
                        self.event(now, "drop-unmatched", folder=folder, uid=fetched.uid,
                                   subject=head.subject)
                    elif lines:
                        notices.append(Notice("confirm", "notice-confirm", touched,
                                              {"detail": "\n".join(lines)}))
                if uids:
                    tx.set_cursor(Cursor(folder, state.uidvalidity, uids[-1],
                                         state.highestmodseq))
                elif cursor is None or cursor.uidvalidity != state.uidvalidity:
                    tx.set_cursor(Cursor(folder, state.uidvalidity, 0, state.highestmodseq))

    # -- payment notices ---------------------------------------------------------------
    def _payment(
        self, tx: Book, mailbox: Mailbox, head: Mail, size: int, now: datetime,
        notices: list[Notice],
    ) -> None:
        full = self._full(mailbox, head, size, now)
        if full is None:
            return
        trust = trust_of(full, owners=self.config.firm.payment_senders, firm_addresses=(),
                         authserv_id=self.config.firm.authserv_id, notice_ids=frozenset(),
                         folder_is_sent=False)
        if not trust.trusted:
            self.event(now, "payment-unverified", sender=full.from_addr, reason=trust.reason)
            notices.append(Notice("payment-unverified", "notice-unverified", None, {
                "mail": full, "detail": trust.reason}))
            return
        owing = [c for c in tx.cases().values() if c.state in _PAYABLE]
        notice = read_payment(full, [c.number for c in owing])
        if notice is None:
            self.event(now, "payment-unreadable", sender=full.from_addr, subject=full.subject)
            return
        match = match_payment(notice, owing)
        if not match.matched:
            self.event(now, "payment-unmatched", amount=notice.amount, currency=notice.currency,
                       payer=notice.payer, reason=match.reason)
            notices.append(Notice("payment-unmatched", "notice-payment", None, {
                "mail": full, "detail": f"{money_text(notice.amount, notice.currency)} "
                                        f"de {notice.payer or '?'}: {match.reason}"}))
            return
        for allocation in match.allocations:
            case = tx.get_case(allocation.number)
            if case is None:
                continue
            try:
                updated = owner_commands.paid(case, now, allocation.amount)
            except CommandRefused:
                continue
            updated = _with_thread_id(updated, full.message_id)
            tx.put_case(updated)
            self.event(now, "payment-matched", case.number, amount=allocation.amount,
                       how=match.how, payer=notice.payer, state=updated.state.value,
                       balance=updated.balance, surplus=match.surplus or None)
            notices.append(Notice("payment", "notice-payment", updated, {
                "mail": full,
                "detail": f"{money_text(allocation.amount, notice.currency)} reçu de "
                          f"{notice.payer or full.from_addr} pour la facture n° {case.number} "
                          f"(rapproché par {'numéro' if match.how == 'number' else 'montant'}) "
                          f": {_describe_case(updated)}"}))

    # -- the weekly digest ---------------------------------------------------------------
    def maybe_digest(self, now: datetime, notices: list[Notice]) -> None:
        rules = self.rt.rules
        if rules.digest is None or not self.rt.firm.owners:
            return
        with self.store.reading() as view:
            last_text = view.meta("last_digest_at")
            cases = view.cases()
        last = datetime.fromisoformat(last_text) if last_text else None
        local = now.astimezone(self.config.tz)
        if not digest_due(local, last, rules.digest.day, rules.digest.hour):
            return
        paid_numbers = {
            e.get("case") for e in self.journal.entries()
            if e.get("event") in ("owner-paid", "payment-matched")
            and (last is None or datetime.fromisoformat(e["at"]) > last)
        }
        paid_since = [c for c in cases.values()
                      if c.number in paid_numbers and c.state is CaseState.PAID]
        summary = digest(list(cases.values()), local, paid_since)
        with self.store.transaction() as tx:
            tx.set_meta("last_digest_at", now.isoformat())
        if summary.empty:
            return
        notices.append(Notice("digest", "notice-digest", None, {
            "letter": compose.Rendered("", format_digest(summary, rules.language))}))

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
        updated = _with_thread_id(case, head.message_id)
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
            case = _with_thread_id(case, head.message_id)
            if last is None or at > last:
                case = dataclasses.replace(case, last_contact_at=at)
            tx.put_case(case)
            self.event(now, "firm-wrote", number, subject=head.subject, written_at=at)

    def _invoice_mail(
        self, tx: Book, mail: Mail, now: datetime, notices: list[Notice]
    ) -> None:
        found, notes = extract_invoices_with_notes(mail)
        if notes:
            self.event(now, "extraction-notes", folder=mail.folder, uid=mail.uid,
                       subject=mail.subject, notes=list(notes))
        for facts in found:
            if facts.kind == "credit_note":
                self._credit_note(tx, facts, mail, now, notices)
                continue
            existing = tx.get_case(facts.number)
            if existing is not None:
                self._invoice_again(tx, existing, facts, mail, now, notices)
                continue
            for replaced in facts.refers_to:
                self._replaced(tx, replaced, facts.number, now, notices)
            case = self._open_case(facts, mail, now)
            tx.put_case(case)
            self.event(now, "invoice-found", case.number, client=",".join(case.client_addrs),
                       client_name=case.client_name or None,
                       amount=case.amount, currency=case.currency, due=case.due_date,
                       state=case.state.value, source=facts.source,
                       missing=list(facts.missing) or None, notes=list(facts.notes) or None)
            if case.state is CaseState.NEEDS_FACTS:
                # Only what blocks chasing is "missing": a due date worked out from
                # the payment terms is known.
                notices.append(Notice("needs-facts", "notice-needs-facts", case, {
                    "facts": dataclasses.replace(facts, missing=()), "mail": mail,
                    "missing": list(_missing(case)), "detail": "; ".join(facts.notes)}))

    def _credit_note(
        self, tx: Book, facts: InvoiceFacts, mail: Mail, now: datetime,
        notices: list[Notice],
    ) -> None:
        """A credit note (avoir) lowers what the invoice it names still owes, once."""
        target = tx.get_case(facts.refers_to[0]) if len(facts.refers_to) == 1 else None
        why = ""
        if target is None:
            why = ("it names no invoice relance knows" if len(facts.refers_to) <= 1
                   else "it names several invoices: " + ", ".join(facts.refers_to))
        elif facts.number in target.credit_notes:
            return  # the same credit note again: applied already
        elif facts.amount is None:
            why = "its amount could not be read"
        elif facts.currency != target.currency:
            why = f"it is in {facts.currency}, the invoice in {target.currency}"
        elif target.state not in OPEN_STATES or target.balance is None:
            why = f"invoice {target.number} is {target.state.value}"
        if target is None or why or facts.amount is None or target.balance is None:
            self.event(now, "credit-note-unapplied", facts.number, amount=facts.amount,
                       refers_to=list(facts.refers_to) or None, reason=why)
            if target is not None:
                notices.append(Notice("credit-note", "notice-confirm", target, {"detail": (
                    f"? avoir {facts.number} ({money_text(facts.amount or Decimal(0))}) "
                    f"non appliqué : {why}. Appliquez-le avec `relance paid {target.number} "
                    f"--amount MONTANT` si c'est juste.")}))
            return
        credited = min(facts.amount, target.balance)
        before = target.balance
        updated = dataclasses.replace(
            _with_thread_id(target, mail.message_id),
            credited=target.credited + credited,
            credit_notes=(*target.credit_notes, facts.number),
        )
        if updated.balance is not None and updated.balance <= 0:
            updated = dataclasses.replace(updated, state=CaseState.STOPPED,
                                          reason=f"cancelled by credit note {facts.number}")
        tx.put_case(updated)
        self.event(now, "credit-note-applied", target.number, credit_note=facts.number,
                   credited=credited, balance_before=before, balance_after=updated.balance,
                   state=updated.state.value)
        notices.append(Notice("credit-note", "notice-confirm", updated, {"detail": (
            f"ok avoir {facts.number} appliqué à la facture n° {target.number} : "
            f"{money_text(credited, target.currency)} en moins, {_describe_case(updated)}")}))

    def _replaced(
        self, tx: Book, number: str, by: str, now: datetime, notices: list[Notice]
    ) -> None:
        """A corrected invoice replaces an earlier one: the earlier one is not chased."""
        old = tx.get_case(number)
        if old is None or old.state not in OPEN_STATES:
            return
        tx.put_case(dataclasses.replace(old, state=CaseState.STOPPED,
                                        reason=f"replaced by invoice {by}"))
        self.event(now, "invoice-replaced", number, by=by, steps_sent=old.last_step)
        if any(step.outcome == "sent" for step in old.steps):
            notices.append(Notice("replaced", "notice-confirm", old, {"detail": (
                f"ok la facture n° {by} remplace la facture n° {number}, qui avait déjà été "
                f"relancée {old.last_step} fois : ses relances s'arrêtent, celles de {by} "
                "suivront leur propre calendrier.")}))

    def _invoice_again(
        self, tx: Book, case: Case, facts: InvoiceFacts, mail: Mail, now: datetime,
        notices: list[Notice],
    ) -> None:
        """The same number again: one case, thread kept; new facts only where safe."""
        updated = _with_thread_id(case, mail.message_id)
        rules = self.rt.rules
        profile = rules.profile_for(case.client_addrs)
        terms = profile.terms if profile and profile.terms else rules.default_terms
        due = due_date_for(facts, terms.days, terms.end_of_month)
        differs = (facts.amount is not None and facts.amount != case.amount) or (
            due is not None and due != case.due_date)
        if case.state is CaseState.NEEDS_FACTS and (facts.amount is not None or due):
            with contextlib.suppress(CommandRefused):
                updated = apply_facts(updated, now, facts.amount if case.amount is None
                                      else None, due if case.due_date is None else None)
        elif differs and not case.steps and case.state in OPEN_STATES:
            updated = dataclasses.replace(updated, amount=facts.amount or case.amount,
                                          due_date=due or case.due_date)
            self.event(now, "invoice-corrected", case.number, amount=updated.amount,
                       due=updated.due_date)
        elif differs:
            self.event(now, "invoice-resent-differs", case.number, amount=facts.amount, due=due)
            notices.append(Notice("resent", "notice-confirm", case, {"detail": (
                f"? la facture n° {case.number} a été renvoyée avec d'autres montants ou "
                f"dates ({money_text(facts.amount) if facts.amount else '?'}, échéance "
                f"{due or '?'}), alors que des relances sont déjà parties : rien n'a changé. "
                f"Confirmez avec `relance facts {case.number} --amount ... --due ...`.")}))
        if updated != case:
            tx.put_case(updated)
            self.event(now, "invoice-resent", case.number, subject=mail.subject,
                       state=updated.state.value)

    def _open_case(self, facts: InvoiceFacts, mail: Mail, now: datetime) -> Case:
        firm = self.rt.firm
        rules = self.rt.rules
        inside = set(firm.addresses) | set(firm.owners)
        clients = tuple(a for a in mail.recipients if a not in inside)
        profile = rules.profile_for(clients)
        terms = profile.terms if profile and profile.terms else rules.default_terms
        due = due_date_for(facts, terms.days, terms.end_of_month)
        case = Case(
            number=facts.number,
            client_addrs=clients,
            client_name=(profile.name if profile and profile.name else facts.client_name)
            or next((mail.names[a] for a in clients if a in mail.names), ""),
            subject=mail.subject,
            root_message_id=mail.message_id,
            root_references=mail.references,
            amount=facts.amount,
            currency=facts.currency,
            issue_date=facts.issue_date or (mail.date.date() if mail.date else None),
            due_date=due,
            thread_ids=(mail.message_id,),
            last_contact_at=mail.date,
            invoice_folder=mail.folder,
            invoice_uid=mail.uid,
            language=(profile.language if profile and profile.language else rules.language),
            opened_at=now,
        )
        if profile is not None and profile.never_chase:
            return dataclasses.replace(case, state=CaseState.STOPPED, reason="never-chase client")
        if facts.amount is None or due is None:
            return dataclasses.replace(case, state=CaseState.NEEDS_FACTS,
                                       reason="missing: " + ", ".join(_missing(case)))
        sent_at = mail.date or now
        if sent_at < now - timedelta(days=rules.adopt_max_age.days):
            return dataclasses.replace(
                case, state=CaseState.DONE,
                reason=f"older than {rules.adopt_max_age.days} days when first seen; not chased",
            )
        return case

    def _client_replied(
        self, tx: Book, case: Case, mail: Mail, now: datetime, notices: list[Notice]
    ) -> None:
        if case.state in (CaseState.CHASING, CaseState.PAUSED):
            intent = reply_intent(mail.text)
            excerpt = " ".join(compose.reply_excerpt(mail.text).split())
            pause = self.rt.rules.reply_pause
            until = None
            if pause is not None:
                day = self.rt.calendar.add((mail.date or now).astimezone(self.config.tz).date(),
                                           pause)
                until = datetime.combine(day, datetime.min.time(), tzinfo=self.config.tz)
            case = dataclasses.replace(
                case, state=CaseState.PAUSED, paused_until=until,
                reason=f"client {_INTENT_WORDS[intent]} {(mail.date or now):%Y-%m-%d}: "
                       f"{excerpt[:90]}",
            )
            notices.append(Notice("reply", "notice-reply", case, {
                "mail": mail, "paused_until": until,
                "detail": "" if intent == "reply" else intent}))
        tx.put_case(case)
        self.event(now, "client-replied", case.number, sender=mail.from_addr,
                   subject=mail.subject, state=case.state.value,
                   intent=reply_intent(mail.text), message_id=mail.message_id,
                   dkim=self._dkim_on_arrival(mail, now))

    def _dkim_on_arrival(self, mail: Mail, now: datetime) -> dict[str, Any] | None:
        """DKIM of a client's message checked when it arrives (dkimpy), for the evidence
        bundle: a key rotated later cannot then cast doubt on it."""
        raw = self._last_raw
        if not raw or mail.message_id.encode() not in raw[:MAX_HEADER_SCAN]:
            return None
        return dkim_check(raw, now)

    def _auto_replied(self, case: Case, mail: Mail, now: datetime) -> Case:
        """An out-of-office is not an answer, but its stated return date may hold the
        next step (rules: after_auto_reply = wait)."""
        if self.rt.rules.after_auto_reply != "wait" or case.state is not CaseState.CHASING:
            return case
        today = (mail.date or now).astimezone(self.config.tz).date()
        back = stated_return(f"{mail.subject}\n{mail.text}", today)
        if back is None or back <= today:
            return case
        until = datetime.combine(back, datetime.min.time(), tzinfo=self.config.tz)
        return dataclasses.replace(case, state=CaseState.PAUSED, paused_until=until,
                                   reason=f"out of office until {back:%Y-%m-%d}")

    def _bounce(
        self, tx: Book, mail: Mail, mailbox: Mailbox, now: datetime,
        notices: list[Notice],
    ) -> None:
        raw = mailbox.fetch_message(mail.folder, mail.uid) or b""
        failed = {a.decode(errors="replace").lower()
                  for a in _bounce_addresses(raw)}
        for case in tx.cases().values():
            if case.state not in OPEN_STATES or not failed & set(case.client_addrs):
                continue
            left = tuple(a for a in case.client_addrs if a not in failed)
            updated = _with_thread_id(case, mail.message_id)
            if not left:
                updated = dataclasses.replace(
                    updated, state=CaseState.BAD_ADDRESS,
                    reason="bounced: " + ", ".join(sorted(failed & set(case.client_addrs))),
                )
                notices.append(Notice("bounce", "notice-bounce", updated, {
                    "mail": mail, "failed_addresses": sorted(failed & set(case.client_addrs)),
                }))
            tx.put_case(updated)
            self.event(now, "bounce", case.number, failed=sorted(failed),
                       state=updated.state.value)

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
            steps = _group_steps(record.number, record.step_index, record.step_name)
            touched: list[Case] = []
            with self.store.transaction() as tx:
                tx.send_result(record.message_id, status, "resolved after restart", at=now)
                for number, step_index, step_name in steps:
                    case = tx.get_case(number)
                    if case is None or case.last_step >= step_index:
                        continue
                    case = _record_step(case, step_index, step_name, record.created_at,
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

    # -- acting -----------------------------------------------------------------------
    def act(self, mailbox: Mailbox, sent_folder: str, now: datetime, notices: list[Notice]) -> None:
        """Carry out what is due: one mail per client, listing every invoice due."""
        with self.store.reading() as view:
            cases = view.cases()
        effective = with_client_contacts(cases.values())
        decisions = due_decisions(effective, self.rt.rules, self.rt.calendar, now)
        groups: dict[str, list[Decision]] = {}
        for decision in decisions:
            case = cases[decision.number]
            if decision.channel is Channel.EMAIL:
                groups.setdefault(client_key(case), []).append(decision)
            else:
                self._guarded(case, decision, now,
                              lambda c=case, d=decision: self.hand_over(c, d, now, notices))
        for group in groups.values():
            # The most overdue invoice leads: the mail replies in its thread.
            group.sort(key=lambda d: (cases[d.number].due_date, d.number))
            lead = cases[group[0].number]
            self._guarded(lead, group[0], now, lambda g=group: self.send_reminder(
                mailbox, sent_folder, [(cases[d.number], d) for d in g], now, notices))

    def _guarded(self, case: Case, decision: Decision, now: datetime,
                 action: Callable[[], None]) -> None:
        """One broken case must not stop the others; a dead link must stop the pass."""
        try:
            action()
        except IMAP_ERRORS:
            raise
        except Exception as exc:
            log.exception("case %s: step %s failed", case.number, decision.step_name)
            self.event(now, "step-failed", case.number, step=decision.step_index,
                       reason=f"{type(exc).__name__}: {exc}")

    def render(
        self, case: Case, decision: Decision, now: datetime,
        attachments: Iterable[Attachment] = (), others: Iterable[Case] = (),
    ) -> compose.Rendered:
        others = tuple(others)
        current = current_instalment(case) if case.instalments else None
        instalment = None if current is None else compose.InstalmentVars(
            index=current[0], count=len(case.instalments), date=current[1],
            owed=current[2], plan=tuple(case.instalments),
        )
        context = compose.template_context(
            case, decision, self.rt.firm, now, case.steps,
            attachments=[a.filename for a in attachments], others=others,
            late=self.late_fees((case, *others), decision, now), instalment=instalment,
        )
        return self.rt.templates.render(decision.template, case.language, context)

    def late_fees(
        self, cases: tuple[Case, ...], decision: Decision, now: datetime
    ) -> compose.LateVars:
        """Penalties to the day on every invoice of the reminder, and one indemnity each."""
        law = self.rt.rules.late_payment
        today = now.astimezone(self.config.tz).date()
        penalties = sum(
            (late_penalties(c.balance or Decimal(0), c.due_date, today, law.rate)
             for c in cases if c.due_date is not None), Decimal("0.00"))
        indemnity = law.indemnity * len(cases) if law.business_clients else Decimal("0.00")
        balance = sum((c.balance or Decimal(0) for c in cases), Decimal(0))
        return compose.LateVars(
            rate=law.rate, penalties=penalties, indemnity=indemnity,
            total=balance + penalties + indemnity,
            shown=decision.step_index >= law.show_from_step and law.business_clients,
        )

    def send_reminder(
        self, mailbox: Mailbox, sent_folder: str, items: list[tuple[Case, Decision]],
        now: datetime, notices: list[Notice],
    ) -> None:
        """One reminder to a client, for one invoice or several, sent at most once."""
        case, decision = items[0]
        message_id = compose.reminder_message_id(case, decision.step_index, self.rt.firm.domain)
        attachments: tuple[Attachment, ...] = ()
        for item_case, item_decision in items:
            attachments += self._invoice_attachments(mailbox, item_case)
            if self._step(item_case, item_decision).attach_previous:
                attachments += self._previous_reminders(mailbox, sent_folder, item_case)
        rendered = self.render(case, decision, now, attachments, [c for c, _ in items[1:]])
        profile = self.rt.rules.profile_for(case.client_addrs)
        extra: tuple[str, ...] = ()
        if profile is not None and decision.step_index >= profile.extra_contacts_from:
            extra = profile.extra_contacts
        message = compose.build_reminder(case, decision, self.rt.firm, rendered, now,
                                         message_id, attachments, extra)
        numbers = " ".join(c.number for c, _ in items)
        mode = self.config.mode
        if mode is Mode.DRY_RUN:
            self.event(now, "would-send", case.number, invoices=numbers,
                       step=decision.step_index, step_name=decision.step_name,
                       to=message["To"], subject=message["Subject"])
            return
        if mode is Mode.SEND and mailbox.find_message_id(sent_folder, message_id):
            # Already in Sent: a state restored from a backup, or a copy the provider
            # filed itself. The client has it; record it, never send it again.
            self._already_sent(items, message_id, now)
            return
        with self.store.transaction() as tx:
            for item_case, item_decision in items:
                fresh = tx.get_case(item_case.number)
                if fresh is None or fresh.last_step >= item_decision.step_index or not (
                    fresh.state is CaseState.CHASING
                    or (fresh.state is CaseState.PAUSED and fresh.paused_until is not None
                        and fresh.paused_until <= now)
                ):
                    return  # the owner or a reply got there first; next pass decides again
            previous = tx.send(message_id)
            if previous is not None and previous.status != "failed":
                return
            if mode is Mode.SEND and previous is None:
                tx.send_intent(message_id, numbers,
                               decision.step_index, _group_label(items), now)
            elif mode is Mode.SEND:
                tx.retry_intent(message_id, at=now)
        if mode is Mode.DRAFT:
            mailbox.append(mailbox.drafts_folder(), message.as_bytes(), (b"\\Draft",), now)
            outcome = smtp.SendOutcome("drafted", "appended to Drafts")
        else:
            outcome = smtp.send(self.config.smtp, message)
        with self.store.transaction() as tx:
            if mode is Mode.SEND:
                tx.send_result(message_id, outcome.status, outcome.reply, at=now)
            if outcome.status in ("sent", "unknown", "drafted"):
                for item_case, item_decision in items:
                    fresh = tx.get_case(item_case.number) or item_case
                    fresh = _record_step(fresh, item_decision.step_index,
                                         item_decision.step_name, now, message_id,
                                         outcome.status)
                    if outcome.status == "sent":
                        fresh = dataclasses.replace(fresh, last_contact_at=now)
                    tx.put_case(fresh)
        for item_case, item_decision in items:
            self.event(now, f"reminder-{outcome.status}", item_case.number,
                       step=item_decision.step_index, step_name=item_decision.step_name,
                       to=message["To"], message_id=message_id, smtp_reply=outcome.reply,
                       refused=outcome.refused or None, grouped_with=numbers
                       if len(items) > 1 else None, balance=item_case.balance,
                       days_late=(now.date() - item_case.due_date).days
                       if item_case.due_date else None)
        if outcome.status == "sent" and self.config.smtp.copy_to_sent:
            mailbox.append(sent_folder, message.as_bytes(), (b"\\Seen",), now)
        elif outcome.status == "unknown":
            notices.append(Notice("send-unknown", "notice-send-unknown", case, {
                "message_id": message_id, "step_name": decision.step_name,
                "step_index": decision.step_index, "attempted_at": now,
                "detail": outcome.reply,
            }))

    def _already_sent(
        self, items: list[tuple[Case, Decision]], message_id: str, now: datetime
    ) -> None:
        with self.store.transaction() as tx:
            for item_case, item_decision in items:
                fresh = tx.get_case(item_case.number) or item_case
                if fresh.last_step < item_decision.step_index:
                    tx.put_case(_record_step(fresh, item_decision.step_index,
                                             item_decision.step_name, now, message_id, "sent"))
        for item_case, item_decision in items:
            self.event(now, "reminder-found-in-sent", item_case.number,
                       step=item_decision.step_index, message_id=message_id)

    def hand_over(
        self, case: Case, decision: Decision, now: datetime, notices: list[Notice]
    ) -> None:
        """A letter or a task is the owner's to carry out: mail it to them."""
        rendered = self.render(case, decision, now)
        message_id = compose.reminder_message_id(case, decision.step_index, self.rt.firm.domain)
        state = CaseState.FORMAL_NOTICE if decision.channel is Channel.LETTER else case.state
        with self.store.transaction() as tx:
            fresh = tx.get_case(case.number) or case
            if fresh.last_step >= decision.step_index:
                return
            fresh = _record_step(fresh, decision.step_index, decision.step_name, now,
                                 message_id, "handed-over")
            fresh = dataclasses.replace(fresh, state=state, reason=(
                f"{decision.step_name} handed to the owner {now:%Y-%m-%d}"
                if state is CaseState.FORMAL_NOTICE else fresh.reason))
            tx.put_case(fresh)
        self.event(now, "handed-over", case.number, step=decision.step_index,
                   step_name=decision.step_name, channel=decision.channel.value)
        template = ("notice-formal-notice" if decision.channel is Channel.LETTER
                    else "notice-task")
        attachments: tuple[Attachment, ...] = ()
        detail = ""
        if decision.channel is Channel.LETTER:
            letter = self.letter(fresh, now)
            attachments = (letter,) if letter is not None else ()
            self._letters[case.number] = attachments
            if letter is None:
                detail = "the letter could not be made: see the journal"
        notices.append(Notice(decision.channel.value, template, fresh, {
            "letter": rendered, "step_name": decision.step_name,
            "step_index": decision.step_index, "detail": detail,
        }, attachments))

    def letter(self, case: Case, now: datetime) -> Attachment | None:
        """The formal notice as a PDF to print and send by registered post."""
        law = self.rt.rules.late_payment
        try:
            notice = formal_notice_for([case], self.rt.firm, now.astimezone(self.config.tz).date(),
                                       ecb_rate=law.ecb_rate)
            made = render_formal_notice(notice)
        except (ValueError, OSError, RuntimeError) as exc:
            self.event(now, "letter-failed", case.number, reason=f"{type(exc).__name__}: {exc}")
            return None
        self.event(now, "letter-made", case.number, total=made.total, penalties=made.penalties,
                   to_fill=list(made.to_fill) or None)
        return Attachment(f"mise-en-demeure-{safe_name(case.number)}.pdf", "application/pdf",
                          made.pdf)

    # -- evidence ---------------------------------------------------------------------
    def seal_closed(self, mailbox: Mailbox, now: datetime) -> None:
        """Archive and seal every case that closed (paid, stopped, letter) with news since
        its last bundle: the evidence a lawyer needs, written as soon as it exists."""
        with self.store.reading() as view:
            cases = view.cases()
        if not any(c.state in SEAL_STATES for c in cases.values()):
            return
        for number in cases_to_seal(cases, self.journal.entries()):
            try:
                close_case(mailbox, cases[number], self.journal, self.config.evidence_dir, now,
                           firm=self.rt.firm, documents=self._letters.pop(number, ()),
                           tz=self.config.tz, record=self.event)
            except IMAP_ERRORS:
                raise
            except (EvidenceError, OSError) as exc:
                self.event(now, "evidence-failed", number, reason=f"{type(exc).__name__}: {exc}")

    def _step(self, case: Case, decision: Decision) -> Step:
        return step_for(self.rt.rules, case, decision.step_index)

    def _invoice_attachments(self, mailbox: Mailbox, case: Case) -> tuple[Attachment, ...]:
        """The invoice's own PDFs, attached again so the client has it at hand."""
        raw = self._find_raw(mailbox, case.invoice_folder, case.invoice_uid, case.root_message_id)
        if raw is None:
            return ()
        try:
            mail = parse_message(raw)
        except ParseFailure:
            return ()
        return tuple(a for a in mail.attachments
                     if a.content_type == "application/pdf" or a.filename.lower().endswith(".pdf"))

    def _previous_reminders(
        self, mailbox: Mailbox, sent_folder: str, case: Case
    ) -> tuple[Attachment, ...]:
        found = []
        for step in case.steps:
            if step.outcome != "sent":
                continue
            uids = mailbox.find_message_id(sent_folder, step.message_id)
            raw = mailbox.fetch_message(sent_folder, uids[0]) if uids else None
            if raw is not None:
                found.append(Attachment(f"{step.name}.eml", "message/rfc822", raw))
        return tuple(found)

    def _find_raw(self, mailbox: Mailbox, folder: str, uid: int, message_id: str) -> bytes | None:
        if folder and uid:
            raw = mailbox.fetch_message(folder, uid)
            if raw is not None and message_id.encode() in raw[:64 * 1024]:
                return raw
        if folder:  # UIDs renumbered (UIDVALIDITY): find it again by its Message-ID
            uids = mailbox.find_message_id(folder, message_id)
            if uids:
                return mailbox.fetch_message(folder, uids[0])
        return None

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
                        tx.put_case(_with_thread_id(fresh, str(message["Message-ID"]).strip()))
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


_INTENT_WORDS = {"reply": "replied", "promise": "promised to pay",
                 "dispute": "disputes the invoice"}
# Cases a payment can settle: a letter case can still be paid.
_PAYABLE = frozenset({CaseState.CHASING, CaseState.PAUSED, CaseState.BAD_ADDRESS,
                      CaseState.NEEDS_FACTS, CaseState.FORMAL_NOTICE})
# Notices about no invoice (an unverified command, an unmatched payment, the digest).
_NO_CASE = Case(number="", client_addrs=(), subject="", root_message_id="<none@relance>")


def _listed(address: str, senders: Iterable[str]) -> bool:
    """`address` is one of `senders`, or in a domain listed as `@bank.fr` / `bank.fr`."""
    address = address.lower()
    domain = address.rpartition("@")[2]
    for sender in senders:
        sender = sender.strip().lower()
        if sender == address or ("@" not in sender.lstrip("@") and sender.lstrip("@") == domain):
            return True
    return False


def _describe_case(case: Case) -> str:
    balance = case.balance
    text = case.state.value
    if balance is not None and case.state is not CaseState.PAID:
        text += f", {money_text(balance, case.currency)} still owed"
    if case.paused_until is not None:
        text += f", until {case.paused_until:%Y-%m-%d}"
    return text


def _with_thread_id(case: Case, message_id: str) -> Case:
    if not message_id or message_id in case.thread_ids:
        return case
    return dataclasses.replace(case, thread_ids=(*case.thread_ids, message_id))


def _group_label(items: list[tuple[Case, Decision]]) -> str:
    """The step names of a grouped reminder, in the order of its invoices' numbers."""
    return " ".join(f"{d.step_index}:{d.step_name}" for _, d in items)


def _group_steps(numbers: str, step_index: int, label: str) -> list[tuple[str, int, str]]:
    """(number, step index, step name) for each invoice a send intent covered."""
    parts = numbers.split()
    labels = label.split()
    if len(labels) == len(parts) and all(":" in x for x in labels):
        return [(n, int(x.split(":", 1)[0]), x.split(":", 1)[1])
                for n, x in zip(parts, labels, strict=True)]
    return [(n, step_index, label) for n in parts]


def _record_step(
    case: Case, index: int, name: str, at: datetime, message_id: str, outcome: str
) -> Case:
    record = StepRecord(index=index, name=name, at=at, message_id=message_id, outcome=outcome)
    state, reason = case.state, case.reason
    if state is CaseState.PAUSED and case.paused_until is not None:
        state, reason = CaseState.CHASING, ""  # a timed pause that ran out
    return dataclasses.replace(
        case, steps=(*case.steps, record), state=state, reason=reason,
        paused_until=None if state is CaseState.CHASING else case.paused_until,
        thread_ids=(*case.thread_ids, message_id) if message_id not in case.thread_ids
        else case.thread_ids,
    )


def _missing(case: Case) -> list[str]:
    missing = []
    if case.amount is None:
        missing.append("amount")
    if case.due_date is None:
        missing.append("due_date")
    return missing


def _bounce_addresses(raw: bytes) -> frozenset[bytes]:
    """Permanently failed recipients of a DSN, by Mailman's detectors (flufl.bounce)."""
    try:
        message = email.message_from_bytes(raw, policy=email.policy.compat32)
        _temporary, permanent = all_failures(message)
        return frozenset(permanent)  # a delay warning flags nothing
    except Exception:  # the detectors raise on some broken DSNs; a bounce is still a bounce
        return frozenset()


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
