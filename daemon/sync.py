"""Reading a folder: what is new since the cursor, message by message, headers first.

Part of the Daemon (a mixin over its state, journal and runtime). Each message is decided
from its headers; only candidates (an invoice sent, a client's answer, a bounce) have their
whole body fetched.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import datetime

from relance.book import Book, Notice, with_thread_id
from relance.core.classify import Kind, classify
from relance.core.extract import looks_like_invoice
from relance.core.listen import known_numbers_in, new_part
from relance.core.thread import cases_for
from relance.listening import listed
from relance.mailbox.imap import IMAP_ERRORS, Mailbox
from relance.mailbox.parse import ParseFailure, parse_headers, parse_message
from relance.model import Mail
from relance.store.state import Cursor

log = logging.getLogger("relance")

MAX_MESSAGE_BYTES = 25 * 1024 * 1024  # bigger mails are noted, not parsed


class Sync:
    """The reading side of `Daemon`."""

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
