"""Acting on what is due: one reminder per client, sent at most once; letters and tasks
handed to the owner; closed cases sealed as evidence. Part of the Daemon (a mixin)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta
from decimal import Decimal

from imapclient.exceptions import IMAPClientAbortError, IMAPClientError

from relance.archive import (
    COLD_AFTER,
    SEAL_STATES,
    cases_to_chill,
    cases_to_seal,
    close_case,
)
from relance.book import Notice, record_step
from relance.core import compose
from relance.core.letter import formal_notice_for, late_penalties, render_formal_notice
from relance.core.schedule import (
    client_key,
    contact_window,
    current_instalment,
    due_decisions,
    step_for,
    with_client_contacts,
)
from relance.mailbox import smtp
from relance.mailbox.imap import IMAP_ERRORS, Mailbox
from relance.mailbox.parse import ParseFailure, parse_message
from relance.model import (
    OPEN_STATES,
    Attachment,
    Case,
    CaseState,
    Channel,
    Decision,
    Mode,
)
from relance.rules.model import Step
from relance.store.evidence import EvidenceError, safe_name
from relance.store.state import COLD_FILE

log = logging.getLogger("relance")

_SEAL_SCAN = "seal_scan"
"""In the state's meta: the journal's identity when a scan last found nothing to seal and
nothing left to move cold. A start with years of journal skips indexing it until then."""


class Acting:
    """The acting side of `Daemon`."""

    # -- acting -----------------------------------------------------------------------
    def act(self, mailbox: Mailbox, sent_folder: str, now: datetime, notices: list[Notice]) -> None:
        """Carry out what is due: one mail per client, listing every invoice due."""
        if not self.rt.calendar.in_window(now):
            # Nothing is due outside the send window (`due_decisions`): a pass there (most
            # of a day, and every restart then) decodes no case and copies none.
            return
        with self.store.reading() as view:
            if self.nothing_due(view, now):  # a plan that still holds says so
                return
            cases = view.cases_in(OPEN_STATES)
            # Closed cases only lend their recent mail to the per-client gap.
            recent = view.closed_cases_since(now - contact_window(self.rt.rules))
        effective = with_client_contacts([*cases.values(), *recent.values()])
        decisions = due_decisions(effective, self.rt.rules, self.rt.calendar, now)
        groups: dict[str, list[Decision]] = {}
        for decision in decisions:
            case = cases[decision.number]
            if decision.channel is Channel.EMAIL:
                groups.setdefault(client_key(case), []).append(decision)
            else:
                self._guarded(case, decision, now,
                              lambda c=case, d=decision: self.hand_over(c, d, now, notices))
                self.spool_notices(notices, now)  # each action's notices, once committed
        for group in groups.values():
            # The most overdue invoice leads: the mail replies in its thread.
            group.sort(key=lambda d: (cases[d.number].due_date, d.number))
            lead = cases[group[0].number]
            self._guarded(lead, group[0], now, lambda g=group: self.send_reminder(
                mailbox, sent_folder, [(cases[d.number], d) for d in g], now, notices))
            self.spool_notices(notices, now)

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
        if mode is not Mode.DRY_RUN:
            # News on the case that arrived since this pass's sync wins (a reply a second
            # ago): read INBOX once more; nothing new costs one SELECT.
            self.sync_folder(mailbox, "INBOX", now, notices)
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
        copy_to_sent = mode is Mode.SEND and self.config.smtp.copy_to_sent
        if copy_to_sent:
            # The copy Sent owes, kept until it is filed: a crash between the server's
            # "250" and the APPEND leaves it here for `file_pending_copies`.
            self.to_sent.put(message_id, message.as_bytes())
        if mode is Mode.DRAFT:
            mailbox.append(mailbox.drafts_folder(), message.as_bytes(), (b"\\Draft",), now)
            outcome = smtp.SendOutcome("drafted", "appended to Drafts")
        else:
            outcome = smtp.send(self.config.smtp, message)
        with self.store.transaction() as tx:
            if mode is Mode.SEND:
                tx.send_result(message_id, outcome.status, outcome.reply, at=now)
            if outcome.status == "failed" and not outcome.transient:
                # A permanent refusal: retrying every pass would change nothing.
                for item_case, _decision in items:
                    fresh = tx.get_case(item_case.number) or item_case
                    tx.put_case(dataclasses.replace(
                        fresh, state=CaseState.PAUSED, paused_until=None,
                        reason=f"the mail server refused the reminder: {outcome.reply}"))
                notices.append(Notice("refused", "notice-confirm", case, {"detail": (
                    f"? la relance de la facture n° {case.number} ({decision.step_name}) a été "
                    f"refusée par le serveur d'envoi : {outcome.reply}. Les relances de cette "
                    "facture sont en pause : vérifiez l'adresse du client, puis `resume`.")}))
            if outcome.status in ("sent", "unknown", "drafted"):
                for item_case, item_decision in items:
                    fresh = tx.get_case(item_case.number) or item_case
                    fresh = record_step(fresh, item_decision.step_index,
                                         item_decision.step_name, now, message_id,
                                         outcome.status)
                    if outcome.status == "sent":
                        fresh = dataclasses.replace(fresh, last_contact_at=now)
                    tx.put_case(fresh)
            # Journalled before the commit: a kill between the two leaves the intent on
            # disk and this line in the journal, from which the next pass resolves it.
            for item_case, item_decision in items:
                self.event(now, f"reminder-{outcome.status}", item_case.number,
                           step=item_decision.step_index, step_name=item_decision.step_name,
                           to=message["To"], message_id=message_id, smtp_reply=outcome.reply,
                           refused=outcome.refused or None, grouped_with=numbers
                           if len(items) > 1 else None, balance=item_case.balance,
                           days_late=(now.date() - item_case.due_date).days
                           if item_case.due_date else None)
            if outcome.status == "unknown":
                notices.append(Notice("send-unknown", "notice-send-unknown", case, {
                    "message_id": message_id, "step_name": decision.step_name,
                    "step_index": decision.step_index, "attempted_at": now,
                    "detail": outcome.reply,
                }))
            # Spooled before the commit too: a kill between the two then tells the owner
            # twice (the restart resolves the intent and tells again), never not at all.
            self.spool_notices(notices, now)
        if copy_to_sent:
            if outcome.status == "sent":
                mailbox.append(sent_folder, message.as_bytes(), (b"\\Seen",), now)
            # Filed, or never to be filed: a copy of an "unknown" send in Sent would make
            # a later lookup say "sent"; a failed one is spooled again by its retry.
            self.to_sent.remove(message_id)

    def file_pending_copies(self, mailbox: Mailbox, sent_folder: str, now: datetime) -> None:
        """File the copies of reminders the server took but Sent does not show (a crash
        or a dead link between the "250" and the APPEND); drop those that will never be
        filed. Runs after `resolve_pending_sends`, so a crash mid-send is settled first."""
        if self.config.mode is Mode.DRY_RUN:
            return
        spooled, damaged = self.to_sent.items()
        for bad in damaged:
            self._set_aside(self.to_sent, bad.path, bad.reason, now)
        if not spooled:
            return
        with self.store.reading() as view:
            records = {item.message_id: view.send(item.message_id) for item in spooled}
        for item in spooled:
            record = records[item.message_id]
            if record is not None and record.status == "intent":
                continue  # not settled yet (resolve_pending_sends failed): next pass
            if (record is not None and record.status == "sent"
                    and self.config.smtp.copy_to_sent
                    and not mailbox.find_message_id(sent_folder, item.message_id)):
                try:
                    mailbox.append(sent_folder, item.raw, (b"\\Seen",),
                                   record.recorded_at or now)
                except IMAPClientAbortError:
                    raise  # a dead link: the copy waits for the next pass
                except IMAPClientError as exc:
                    # The server answered NO (quota, size): trying at every pass would
                    # stop every pass here. Keep the copy in failed/ and say so.
                    log.error("copy of %s refused by the IMAP server (%s): kept in %s",
                              item.message_id, exc, self.to_sent.directory / "failed")
                    for number in record.number.split():
                        self.event(now, "copy-refused", number, message_id=item.message_id,
                                   folder=sent_folder, reason=str(exc))
                    self._set_aside(self.to_sent, item.path, str(exc), now, journal=False)
                    continue
                for number in record.number.split():
                    self.event(now, "reminder-filed", number, message_id=item.message_id,
                               folder=sent_folder)
            self.to_sent.remove(item.message_id)

    def _already_sent(
        self, items: list[tuple[Case, Decision]], message_id: str, now: datetime
    ) -> None:
        with self.store.transaction() as tx:
            for item_case, item_decision in items:
                fresh = tx.get_case(item_case.number) or item_case
                if fresh.last_step < item_decision.step_index:
                    tx.put_case(record_step(fresh, item_decision.step_index,
                                             item_decision.step_name, now, message_id, "sent"))
            for item_case, item_decision in items:  # journalled before the commit
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
            fresh = record_step(fresh, decision.step_index, decision.step_name, now,
                                 message_id, "handed-over")
            fresh = dataclasses.replace(fresh, state=state, reason=(
                f"{decision.step_name} handed to the owner {now:%Y-%m-%d}"
                if state is CaseState.FORMAL_NOTICE else fresh.reason))
            tx.put_case(fresh)
            # Journalled, and the owner's notice spooled, before the commit: a kill in
            # between redoes the hand-over (told twice at worst), never loses it.
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
            self.spool_notices(notices, now)

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
        its last bundle: the evidence a lawyer needs, written as soon as it exists. Then
        move the settled cases sealed before this pass and quiet since to the cold file."""
        # The journal's identity before the state is read: a change of state is journaled
        # after its commit (the shell) or within this pass before sealing, so every line
        # this identity covers is reflected in the view below, and a line appended later
        # changes the identity, which makes the next pass scan again.
        journal_seen = self.journal.identity()
        with self.store.reading() as view:
            if not view.any_case_in(SEAL_STATES):
                return
            cases = view.case_map()  # a case decoded only when the journal names it
            settled = view.settled_numbers(now - self._quiet_before_cold())
            if not settled and journal_seen is not None \
                    and view.meta(_SEAL_SCAN) == journal_seen:
                return  # no news since a scan that left nothing to seal or to move
        by_case = self.journal.events_by_case()

        def events() -> Iterator[dict[str, str]]:
            return ({"case": number, "event": event}
                    for number, names in by_case.items() for event in names)

        chilled = self._chill(cases_to_chill(settled, cases, events()), now) if settled else []
        to_seal = cases_to_seal(cases, events())
        if not to_seal and len(chilled) == len(settled):
            with self.store.transaction() as tx:
                tx.set_meta(_SEAL_SCAN, journal_seen)
        for number in to_seal:
            try:
                # Dry-run never changes the mailbox: the bundle is written, nothing moved.
                close_case(mailbox, cases[number], self.journal, self.config.evidence_dir, now,
                           firm=self.rt.firm, documents=self._letters.pop(number, ()),
                           tz=self.config.tz, record=self.event,
                           archive=self.config.mode is not Mode.DRY_RUN)
            except IMAP_ERRORS:
                raise
            except (EvidenceError, OSError) as exc:
                self.event(now, "evidence-failed", number, reason=f"{type(exc).__name__}: {exc}")

    def _quiet_before_cold(self) -> timedelta:
        """How long a settled case stays hot after its last step or contact: longer than
        the per-client gap looks back (`contact_window`), so a pass never needs a cold
        case, and at least COLD_AFTER, so a rule change does not either."""
        return max(COLD_AFTER, contact_window(self.rt.rules))

    def _chill(self, numbers: list[str], now: datetime) -> list[str]:
        """Move sealed, quiet cases out of the hot state; the numbers moved. A failure
        (disk full) moves nothing and is only logged: the cases stay hot, and the next
        pass tries again."""
        if not numbers:
            return []
        try:
            moved = self.store.move_cold(numbers)
        except OSError as exc:
            log.warning("event=cold-move-failed cases=%d reason=%s", len(numbers), exc)
            return []
        if moved:
            log.info("event=cases-moved-cold count=%d file=%s", len(moved),
                     self.store.state_dir / COLD_FILE)
        return moved

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



def _group_label(items: list[tuple[Case, Decision]]) -> str:
    """The step names of a grouped reminder, in the order of its invoices' numbers."""
    return " ".join(f"{d.step_index}:{d.step_name}" for _, d in items)


def group_steps(numbers: str, step_index: int, label: str) -> list[tuple[str, int, str]]:
    """(number, step index, step name) for each invoice a send intent covered."""
    parts = numbers.split()
    labels = label.split()
    if len(labels) == len(parts) and all(":" in x for x in labels):
        return [(n, int(x.split(":", 1)[0]), x.split(":", 1)[1])
                for n, x in zip(parts, labels, strict=True)]
    return [(n, step_index, label) for n in parts]

