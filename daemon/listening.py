"""Listening: the client's replies, bounces, payment notices, and the owner's commands by
email or by folder, and the weekly digest. Part of the Daemon (a mixin)."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import logging
from collections.abc import Iterable
from datetime import date, datetime, timedelta
from typing import Any

from relance.book import Notice, describe_case, with_thread_id
from relance.core import commands as owner_commands
from relance.core import compose
from relance.core.classify import stated_return
from relance.core.commands import CommandRefused
from relance.core.facts import apply_facts
from relance.core.letter import record_lrar
from relance.core.listen import (
    OWING_STATES,
    Command,
    digest,
    digest_due,
    format_digest,
    match_payment,
    money_text,
    parse_commands,
    plan_instalments,
    read_payment,
    reply_intent,
    trust_of,
)
from relance.core.thread import cases_for
from relance.mailbox.imap import Mailbox
from relance.mailbox.parse import parse_headers
from relance.model import (
    OPEN_STATES,
    Case,
    CaseState,
    Mail,
)
from relance.store.evidence import dkim_check
from relance.store.state import Cursor, Transaction

log = logging.getLogger("relance")

MAX_HEADER_SCAN = 64 * 1024  # where a message's own Message-ID must show


_INTENT_WORDS = {"reply": "replied", "promise": "promised to pay",
                 "dispute": "disputes the invoice"}

# Cases a payment can settle: a letter case can still be paid.
_PAYABLE = frozenset({CaseState.CHASING, CaseState.PAUSED, CaseState.BAD_ADDRESS,
                      CaseState.NEEDS_FACTS, CaseState.FORMAL_NOTICE})
# Journal events that say an invoice was paid, for the digest's "paid since last week".
_PAID_EVENTS = ("owner-paid", "payment-matched")



class Listening:
    """The listening side of `Daemon`."""

    # The last answer read (its Message-ID, then intent, excerpt and DKIM result).
    _last_reading: tuple[str, tuple[str, str, dict[str, Any] | None]] | None = None

    # -- the owner's mail: commands, by email or by folder -----------------------------
    def _owner_mail(
        self, tx: Transaction, mailbox: Mailbox, head: Mail, size: int, now: datetime,
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
                lines.append(f"ok {command.line} → {number}: {describe_case(updated)}")
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
                index = tx.thread_index()
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
                        lines.append(f"ok {verb} → {number}: {describe_case(updated)}")
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
                self.spool_notices(notices, now)  # before the commit: told twice, never lost

    # -- payment notices ---------------------------------------------------------------
    def _payment(
        self, tx: Transaction, mailbox: Mailbox, head: Mail, size: int, now: datetime,
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
        owing = list(tx.cases_in(_PAYABLE).values())
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
            updated = with_thread_id(updated, full.message_id)
            tx.put_case(updated)
            self.event(now, "payment-matched", case.number, amount=allocation.amount,
                       how=match.how, payer=notice.payer, state=updated.state.value,
                       balance=updated.balance, surplus=match.surplus or None)
            notices.append(Notice("payment", "notice-payment", updated, {
                "mail": full,
                "detail": f"{money_text(allocation.amount, notice.currency)} reçu de "
                          f"{notice.payer or full.from_addr} pour la facture n° {case.number} "
                          f"(rapproché par {'numéro' if match.how == 'number' else 'montant'}) "
                          f": {describe_case(updated)}"}))

    # -- the weekly digest ---------------------------------------------------------------
    def maybe_digest(self, now: datetime, notices: list[Notice]) -> None:
        rules = self.rt.rules
        if rules.digest is None or not self.rt.firm.owners:
            return
        with self.store.reading() as view:
            last_text = view.meta("last_digest_at")
            last = datetime.fromisoformat(last_text) if last_text else None
            local = now.astimezone(self.config.tz)
            if not digest_due(local, last, rules.digest.day, rules.digest.hour):
                return
            owing = view.cases_in(OWING_STATES)  # once a week; closed cases are not read
            paid_numbers = [
                number for number in self.journal.cases_with(_PAID_EVENTS)
                if any(e.get("event") in _PAID_EVENTS
                       and (last is None or datetime.fromisoformat(e["at"]) > last)
                       for e in self.journal.entries(number))
            ]
            paid_since = [c for n in paid_numbers
                          if (c := view.get_case(n)) is not None and c.state is CaseState.PAID]
        summary = digest(list(owing.values()), local, paid_since)
        with self.store.transaction() as tx:
            tx.set_meta("last_digest_at", now.isoformat())
            if not summary.empty:
                notices.append(Notice("digest", "notice-digest", None, {
                    "letter": compose.Rendered("", format_digest(summary, rules.language))}))
                # Spooled before the date is committed: a kill between them sends the
                # digest twice at worst, never skips a week.
                self.spool_notices(notices, now)

    def _client_replied(
        self, tx: Transaction, case: Case, mail: Mail, now: datetime
    ) -> Case | None:
        """Record a client's answer on one case; the case when this paused its reminders
        (the caller tells the owner once per answer, not once per invoice)."""
        paused = None
        intent, excerpt, dkim = self._reading_of(mail, now)
        if case.state in (CaseState.CHASING, CaseState.PAUSED):
            pause = self.rt.rules.reply_pause
            until = None
            if pause is not None:
                day = self.rt.calendar.add((mail.date or now).astimezone(self.config.tz).date(),
                                           pause)
                until = datetime.combine(day, datetime.min.time(), tzinfo=self.config.tz)
            case = paused = dataclasses.replace(
                case, state=CaseState.PAUSED, paused_until=until,
                reason=f"client {_INTENT_WORDS[intent]} {(mail.date or now):%Y-%m-%d}: "
                       f"{excerpt[:90]}",
            )
        tx.put_case(case)
        self.event(now, "client-replied", case.number, sender=mail.from_addr,
                   subject=mail.subject, state=case.state.value,
                   intent=intent, message_id=mail.message_id, dkim=dkim)
        return paused

    def _reading_of(
        self, mail: Mail, now: datetime
    ) -> tuple[str, str, dict[str, Any] | None]:
        """What an answer says (intent, excerpt) and its DKIM result, worked out once per
        answer: one answer may pause every open invoice of its client."""
        memo = self._last_reading
        if memo is None or memo[0] != mail.message_id or not mail.message_id:
            reading = (reply_intent(mail.text),
                       " ".join(compose.reply_excerpt(mail.text).split()),
                       self._dkim_on_arrival(mail, now))
            memo = self._last_reading = (mail.message_id, reading)
        return memo[1]

    def _reply_notice(self, paused: list[Case], mail: Mail, now: datetime) -> Notice:
        """One notice for one answer: about the first invoice it paused (the thread's),
        the others named in `detail`."""
        case = paused[0]
        return Notice("reply", "notice-reply", case, {
            "mail": mail, "paused_until": case.paused_until,
            "detail": reply_detail(self._reading_of(mail, now)[0],
                                   [c.number for c in paused[1:]], case.language)})

    def _history_summary(
        self, folder: str, held: list[tuple[str, str | None]], now: datetime
    ) -> Notice:
        """The first read of a folder found old answers (their notice kind and invoice
        number): the cases and the journal have them; the owner gets them in one notice
        instead of one per answer."""
        numbers = list(dict.fromkeys(number for _kind, number in held if number))
        replies = sum(kind == "reply" for kind, _number in held)
        bounces = sum(kind == "bounce" for kind, _number in held)
        since = (now - HISTORY_AGE).astimezone(self.config.tz).date()
        self.event(now, "history-summarised", folder=folder, replies=replies,
                   bounces=bounces, invoices=len(numbers))
        return Notice("history", "notice-confirm", None, {
            "detail": history_detail(folder, replies, bounces, numbers, since,
                                     self.rt.rules.language)})

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
        self, tx: Transaction, mail: Mail, mailbox: Mailbox, now: datetime,
        notices: list[Notice],
    ) -> None:
        # `_full` just read this message: its raw bytes are at hand, no second FETCH.
        raw = self._last_raw if mail.message_id.encode() in self._last_raw[:MAX_HEADER_SCAN] \
            else mailbox.fetch_message(mail.folder, mail.uid) or b""
        failed = {a.decode(errors="replace").lower()
                  for a in _bounce_addresses(raw)}
        for case in tx.cases_in(OPEN_STATES).values():
            if not failed & set(case.client_addrs):
                continue
            left = tuple(a for a in case.client_addrs if a not in failed)
            updated = with_thread_id(case, mail.message_id)
            if not left:
                updated = dataclasses.replace(
                    updated, state=CaseState.BAD_ADDRESS,
                    reason="bounced: " + ", ".join(sorted(failed & set(case.client_addrs))),
                )
                self._tell(notices, mail, Notice("bounce", "notice-bounce", updated, {
                    "mail": mail, "failed_addresses": sorted(failed & set(case.client_addrs)),
                }))
            tx.put_case(updated)
            self.event(now, "bounce", case.number, failed=sorted(failed),
                       state=updated.state.value)



# On a folder's first read (years of history adopted at once), answers older than this
# update their cases and the journal, and reach the owner in one summary.
HISTORY_AGE = timedelta(days=14)
SUMMARY_NAMES = 50  # invoices named in a history summary; the rest are counted

_INTENT_SENTENCES = {
    "fr": {"promise": "Le client annonce un paiement.", "dispute": "Le client conteste."},
    "en": {"promise": "The client says they will pay.", "dispute": "The client disputes."},
}


def reply_detail(intent: str, others: list[str], language: str) -> str:
    """The line a reply notice adds: what the client means, and the other invoices of
    theirs the same answer paused."""
    lang = "en" if language.lower().startswith("en") else "fr"
    parts = [_INTENT_SENTENCES[lang][intent]] if intent in _INTENT_SENTENCES[lang] else []
    if others:
        listed_numbers = ", ".join(others)
        parts.append(f"Cette réponse met aussi en pause les relances des factures n° "
                     f"{listed_numbers}." if lang == "fr" else
                     f"This answer also pauses the reminders of invoices {listed_numbers}.")
    return " ".join(parts)


def history_detail(folder: str, replies: int, bounces: int, numbers: list[str],
                   since: date, language: str) -> str:
    """The summary of a first read: how many old answers, which invoices they touched."""
    shown = ", ".join(numbers[:SUMMARY_NAMES])
    more = len(numbers) - SUMMARY_NAMES
    if language.lower().startswith("en"):
        text = (f"First read of {folder}: {replies} client answer(s) and {bounces} "
                f"bounce(s) from before {since:%Y-%m-%d} were recorded without a notice "
                f"each. Invoices concerned ({len(numbers)}): {shown}")
        if more > 0:
            text += f" and {more} more"
        return text + ". `relance status` shows where each one stands."
    text = (f"Première lecture de {folder} : {replies} réponse(s) de clients et {bounces} "
            f"retour(s) en erreur antérieurs au {since:%d/%m/%Y} ont été pris en compte "
            f"sans notification une à une. Factures concernées ({len(numbers)}) : {shown}")
    if more > 0:
        text += f" et {more} autres"
    return text + ". `relance status` montre où en est chacune."


def listed(address: str, senders: Iterable[str]) -> bool:
    """`address` is one of `senders`, or in a domain listed as `@bank.fr` / `bank.fr`."""
    address = address.lower()
    domain = address.rpartition("@")[2]
    for sender in senders:
        sender = sender.strip().lower()
        if sender == address or ("@" not in sender.lstrip("@") and sender.lstrip("@") == domain):
            return True
    return False


def _bounce_addresses(raw: bytes) -> frozenset[bytes]:
    """Permanently failed recipients of a DSN, by Mailman's detectors (flufl.bounce)."""
    try:
        message = email.message_from_bytes(raw, policy=email.policy.compat32)
        from flufl.bounce import all_failures  # only bounces need it (2.4 MB)

        _temporary, permanent = all_failures(message)
        return frozenset(permanent)  # a delay warning flags nothing
    except Exception:  # the detectors raise on some broken DSNs; a bounce is still a bounce
        return frozenset()

