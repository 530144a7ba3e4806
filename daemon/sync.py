"""Reading a folder: what is new since the cursor, message by message, headers first.

Part of the Daemon (a mixin over its state, journal and runtime). Each message is decided
from its headers; only candidates (an invoice sent, a client's answer, a bounce) have their
whole body fetched, a batch at a time: `prefetch_candidates` guesses, from a chunk's
headers, which bodies `handle` will ask for, and one FETCH brings up to `BODY_BATCH` of them.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from relance.book import Notice, with_thread_id
from relance.core.classify import Kind, classify
from relance.core.extract import invoice_named_by_headers, looks_like_invoice
from relance.core.listen import new_part
from relance.core.thread import answerable, cases_for, known_numbers_in
from relance.listening import HISTORY_AGE, listed
from relance.mailbox.imap import BODY_BATCH, IMAP_ERRORS, FetchedHeaders, Mailbox
from relance.mailbox.parse import ParseFailure, parse_headers, parse_message
from relance.model import Case, Firm, InvoiceFacts, Mail
from relance.store.state import Cursor, Transaction

log = logging.getLogger("relance")

MAX_MESSAGE_BYTES = 25 * 1024 * 1024  # bigger mails are noted, not parsed
HEADER_CHUNK = 500  # messages decided per state transaction
# Whole messages held in memory at once, at most: 4 MB holds about 200 invoices of 20 KB
# with their PDF (BODY_BATCH's count); 20 MB cost 2 MB more peak at 100k messages.
BATCH_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class PrefetchContext:
    """What `prefetch_candidates` looks at besides the headers: the firm, the Sent folder's
    name, the Message-IDs of every known case's thread, and who has open cases."""

    firm: Firm
    payment_senders: Sequence[str]
    sent_folder: str
    known_ids: Collection[str]
    # the sender has open cases this mail could answer (`StateView.open_cases_of`, `answerable`)
    is_client: Callable[[Mail], bool]
    # invoices sent before this are adopted as history from their headers (`history_invoice`)
    history_before: datetime | None = None


def history_invoice(head: Mail, history_before: datetime | None) -> InvoiceFacts | None:
    """An invoice the firm sent before `history_before` (the rules' `adopt_max_age` ago)
    whose subject names it: adopted as history from its headers alone, its body never
    fetched. It will not be chased, so its amount and due date are not worth a PDF read
    (on a first read, years of them)."""
    if history_before is None or head.date is None or head.date >= history_before:
        return None
    return invoice_named_by_headers(head)


def prefetch_candidates(heads: Iterable[Mail], ctx: PrefetchContext) -> list[int]:
    """UIDs of the messages whose whole body `Sync.handle` will probably ask for.

    Pure, and generous: a body fetched for nothing costs a fraction of a millisecond in a
    batch, one missed costs a FETCH of its own. It follows `handle`'s branches: the
    owner's mail (commands), payment notices, the firm's invoice-like mail to clients or
    mail in a known thread, and anything else in a known thread, from a client with open
    cases, or a bounce. Invoices found earlier in the same chunk count as known, so the
    answer to an invoice read in the same chunk is fetched with it.
    """
    firm = ctx.firm
    new_ids: set[str] = set()
    new_clients: set[str] = set()
    wanted: list[int] = []

    def in_thread(mail: Mail) -> bool:
        return any(m and (m in ctx.known_ids or m in new_ids)
                   for m in (mail.in_reply_to, *mail.references))

    for head in heads:
        kind = classify(head, firm)
        if kind is Kind.OWN:
            continue
        to_clients = bool(firm.outsiders(head.recipients))
        if head.from_addr in firm.owners or (
            kind is Kind.FIRM and head.folder == ctx.sent_folder and not to_clients
        ) or listed(head.from_addr, ctx.payment_senders):
            wanted.append(head.uid)
            continue
        if kind is Kind.FIRM:
            invoice_like = to_clients and looks_like_invoice(
                head.subject, head.headers.get("content-type", ""))
            if invoice_like:
                new_ids.add(head.message_id)
                if history_invoice(head, ctx.history_before) is not None:
                    continue  # adopted from its headers
                new_clients.update(firm.outsiders(head.recipients))
            if invoice_like or in_thread(head):
                wanted.append(head.uid)
            continue
        if (kind is Kind.BOUNCE or in_thread(head) or head.from_addr in new_clients
                or ctx.is_client(head)):
            wanted.append(head.uid)
    return wanted


def plan_batches(
    sized: Iterable[tuple[int, int]], max_count: int = BODY_BATCH,
    max_bytes: int = BATCH_BYTES, too_big: int = MAX_MESSAGE_BYTES,
) -> list[list[int]]:
    """(uid, RFC822.SIZE) pairs grouped into FETCH batches of at most `max_count` messages
    and `max_bytes` (a single message over it gets a batch of its own); messages over
    `too_big` are left out: `_full` notes them without fetching."""
    batches: list[list[int]] = []
    current: list[int] = []
    current_bytes = 0
    for uid, size in sized:
        if size > too_big:
            continue
        if current and (len(current) >= max_count or current_bytes + size > max_bytes):
            batches.append(current)
            current, current_bytes = [], 0
        current.append(uid)
        current_bytes += size
    if current:
        batches.append(current)
    return batches


class Prefetched:
    """The bodies of one chunk's candidates, fetched one batch at a time as `_full` asks
    for them, so at most one batch is held in memory."""

    def __init__(self, mailbox: Mailbox, folder: str, batches: Sequence[Sequence[int]]):
        self.mailbox = mailbox
        self.folder = folder
        self.batches = batches
        self._batch_of = {uid: i for i, batch in enumerate(batches) for uid in batch}
        self._loaded = -1
        self._bodies: dict[int, bytes] = {}

    def planned(self, folder: str, uid: int) -> bool:
        return folder == self.folder and uid in self._batch_of

    def body(self, uid: int) -> bytes | None:
        """The body of a planned UID (None when the server no longer has it)."""
        index = self._batch_of[uid]
        if index != self._loaded:
            self._bodies = {}  # drop the previous batch before the next one arrives
            self._bodies = self.mailbox.fetch_messages(self.folder, self.batches[index])
            self._loaded = index
        return self._bodies.get(uid)


class Sync:
    """The reading side of `Daemon`."""

    _prefetched: Prefetched | None = None
    # On a first read: answers dated before this are summarised, not told one by one.
    _quiet_before: datetime | None = None
    # Their (kind, invoice number): only what the summary needs, not the mails themselves.
    _held: list[tuple[str, str | None]] | None = None

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
        # UIDs below UIDNEXT that SEARCH does not return were expunged for good: the
        # cursor may pass them, so IDLE's UIDNEXT check does not wake for nothing.
        seen_up_to = max(last_uid, state.uidnext - 1 if state.uidnext else 0)
        uids = mailbox.uids_after(last_uid)
        if not uids:
            self._save_cursor(Cursor(folder, state.uidvalidity, seen_up_to,
                                     state.highestmodseq))
            return
        first_read = cursor is None or cursor.uidvalidity != state.uidvalidity
        self._quiet_before = now - HISTORY_AGE if first_read else None
        self._held = []
        try:
            for chunk_start in range(0, len(uids), HEADER_CHUNK):
                chunk = uids[chunk_start : chunk_start + HEADER_CHUNK]
                last = chunk_start + HEADER_CHUNK >= len(uids)
                up_to = max(chunk[-1], seen_up_to) if last else chunk[-1]
                self._sync_chunk(mailbox, folder, chunk, Cursor(
                    folder, state.uidvalidity, up_to, state.highestmodseq), now, notices)
            if self._held:
                notices.append(self._history_summary(folder, self._held, now))
        finally:
            self._quiet_before = None
            self._held = None

    def _sync_chunk(
        self, mailbox: Mailbox, folder: str, chunk: Sequence[int], cursor: Cursor,
        now: datetime, notices: list[Notice],
    ) -> None:
        """Decide one chunk of messages in one state transaction, bodies prefetched."""
        heads = list(mailbox.fetch_headers(chunk))
        # The journal's lines are fsynced once, when the batch ends: before the state
        # commits (the `with` exits inner first), so no committed change lacks its line.
        with self.store.transaction() as tx, self.journal.batch():
            parsed: list[tuple[FetchedHeaders, Mail | Exception]] = []
            for fetched in heads:
                try:
                    parsed.append((fetched, parse_headers(fetched.header_bytes, folder,
                                                          fetched.uid)))
                except Exception as exc:  # told per message below, like any other error
                    parsed.append((fetched, exc))
            self._prefetched = self._plan_prefetch(mailbox, folder, tx, parsed, now)
            try:
                for fetched, mail in parsed:
                    try:
                        if isinstance(mail, Exception):
                            raise mail
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
            finally:
                self._prefetched = None
            tx.set_cursor(cursor)
            # This chunk's notices are spooled before its changes commit: a kill between
            # the two tells the owner twice (the chunk is read again), never not at all
            # (seen once in the full kill campaign when they were spooled after).
            self.spool_notices(notices, now)
        # handle may have selected another folder (a MOVE): back to this one, if so
        mailbox.select(folder, readonly=True)

    def _plan_prefetch(
        self, mailbox: Mailbox, folder: str, tx: Transaction,
        parsed: Sequence[tuple[FetchedHeaders, Mail | Exception]], now: datetime,
    ) -> Prefetched:
        sizes = {fetched.uid: fetched.size for fetched, _ in parsed}
        ctx = PrefetchContext(
            firm=self.rt.firm, payment_senders=tuple(self.config.firm.payment_senders),
            sent_folder=self._sent_folder, known_ids=tx.index,
            is_client=lambda mail: bool(answerable(tx.open_cases_of(mail.from_addr), mail)),
            history_before=self._history_before(now),
        )
        wanted = prefetch_candidates(
            (mail for _, mail in parsed if isinstance(mail, Mail)), ctx)
        return Prefetched(mailbox, folder, plan_batches((uid, sizes[uid]) for uid in wanted))

    def _save_cursor(self, cursor: Cursor) -> None:
        with self.store.transaction() as tx:
            tx.set_cursor(cursor)

    def handle(
        self, tx: Transaction, mailbox: Mailbox, head: Mail, size: int, now: datetime,
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
                history = history_invoice(head, self._history_before(now))
                if history is not None:
                    self._adopt_history(tx, history, head, now)
                    return
                full = self._full(mailbox, head, size, now)
                if full is not None:
                    self._invoice_mail(tx, full, now, notices)
            return
        theirs = answerable(tx.open_cases_of(head.from_addr), head)
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
            if named or self._is_history(full):
                # An answer found as history on a first read is about its own thread: it
                # says nothing of the client's other invoices, and spreading each of
                # years of answers over every open invoice of its client grew with the
                # square of the mailbox (40k entries at 100k messages).
                numbers = named or numbers
            elif numbers:
                # The thread's own invoices first: the notice is about them.
                numbers = [*numbers, *sorted({c.number for c in theirs} - set(numbers))]
        paused: list[Case] = []
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
            replied = self._client_replied(tx, case, full, now)
            if replied is not None:
                paused.append(replied)
        if paused:
            # One reply, one notice, however many invoices it paused.
            self._tell(notices, full, self._reply_notice(paused, full, now))

    def _to_clients(self, mail: Mail) -> bool:
        return bool(self.rt.firm.outsiders(mail.recipients))

    def _is_history(self, mail: Mail) -> bool:
        """On a first read, an answer older than `HISTORY_AGE`: summed up, not told."""
        quiet_before = self._quiet_before
        return quiet_before is not None and mail.date is not None and mail.date < quiet_before

    def _tell(self, notices: list[Notice], mail: Mail, notice: Notice) -> None:
        """A notice about a client's answer: held for the first read's summary when the
        answer is history (older than `HISTORY_AGE`), otherwise told on its own."""
        held = self._held
        if held is not None and self._is_history(mail):
            held.append((notice.kind, notice.case.number if notice.case else None))
        else:
            notices.append(notice)

    def _full(self, mailbox: Mailbox, head: Mail, size: int, now: datetime) -> Mail | None:
        if size > MAX_MESSAGE_BYTES:
            self.event(now, "message-too-big", folder=head.folder, uid=head.uid, size=size,
                       subject=head.subject)
            return None
        prefetched = self._prefetched
        if prefetched is not None and prefetched.planned(head.folder, head.uid):
            raw = prefetched.body(head.uid)
        else:
            raw = mailbox.fetch_message(head.folder, head.uid)  # the guess missed it
        if raw is None:
            return None
        self._last_raw = raw  # for the DKIM check of a client's message, as it arrived
        try:
            return parse_message(raw, head.folder, head.uid)
        except ParseFailure as exc:
            self.event(now, "message-skipped", folder=head.folder, uid=head.uid, reason=str(exc))
            return None

    def _own_copy(self, tx: Transaction, head: Mail, now: datetime) -> None:
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
            self.event(now, "draft-sent-by-owner", number, message_id=head.message_id,
                       written_at=at)
        if updated is not case:
            tx.put_case(updated)

    def _firm_wrote(self, tx: Transaction, numbers: list[str], head: Mail, now: datetime) -> None:
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
