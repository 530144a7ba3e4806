"""Invoices coming in: a new invoice opens a case; the same one again, a credit note or a
correction changes one. Part of the Daemon (a mixin over its state and journal)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from datetime import datetime, timedelta
from decimal import Decimal

from relance.book import Notice, describe_case, with_thread_id
from relance.core.commands import CommandRefused
from relance.core.extract import due_date_for, extract_invoices_with_notes
from relance.core.facts import apply_facts
from relance.core.listen import money_text
from relance.model import (
    OPEN_STATES,
    Case,
    CaseState,
    InvoiceFacts,
    Mail,
)
from relance.store.state import Transaction

log = logging.getLogger("relance")


class Intake:
    """The invoice side of `Daemon`."""

    def _invoice_mail(
        self, tx: Transaction, mail: Mail, now: datetime, notices: list[Notice]
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

    def _history_before(self, now: datetime) -> datetime:
        """Invoices sent before this are history when first seen (`adopt_max_age`):
        recorded, not chased; `sync.history_invoice` spares them a body read."""
        return now - timedelta(days=self.rt.rules.adopt_max_age.days)

    def _adopt_history(
        self, tx: Transaction, facts: InvoiceFacts, head: Mail, now: datetime
    ) -> None:
        """An old invoice, known from its headers alone (`sync.history_invoice`): a case
        closed as history, so its thread, its number and its client are known; never chased."""
        existing = tx.get_case(facts.number)
        if existing is not None:
            tx.put_case(with_thread_id(existing, head.message_id))  # a no-op if known
            return
        case = self._open_case(facts, head, now)
        tx.put_case(case)
        self.event(now, "invoice-found", case.number, client=",".join(case.client_addrs),
                   client_name=case.client_name or None, state=case.state.value,
                   source=facts.source, reason=case.reason)

    def _credit_note(
        self, tx: Transaction, facts: InvoiceFacts, mail: Mail, now: datetime,
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
            with_thread_id(target, mail.message_id),
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
            f"{money_text(credited, target.currency)} en moins, {describe_case(updated)}")}))

    def _replaced(
        self, tx: Transaction, number: str, by: str, now: datetime, notices: list[Notice]
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
        self, tx: Transaction, case: Case, facts: InvoiceFacts, mail: Mail, now: datetime,
        notices: list[Notice],
    ) -> None:
        """The same number again: one case, thread kept; new facts only where safe."""
        updated = with_thread_id(case, mail.message_id)
        rules = self.rt.rules
        profile = rules.profile_for(case.client_addrs)
        terms = profile.terms if profile and profile.terms else rules.default_terms
        due = due_date_for(facts, terms.days, terms.end_of_month)
        # Only a fact known both times can differ: history adopted from its headers
        # (`_adopt_history`) knows no amount, and a copy of it sent again is no news.
        differs = (facts.amount is not None and case.amount is not None
                   and facts.amount != case.amount) or (
            due is not None and case.due_date is not None and due != case.due_date)
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
        clients = firm.outsiders(mail.recipients)
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
        if (mail.date or now) < self._history_before(now):
            # History: not chased, so its facts are not asked for either.
            return dataclasses.replace(
                case, state=CaseState.DONE,
                reason=f"older than {rules.adopt_max_age.days} days when first seen; not chased",
            )
        if facts.amount is None or due is None:
            return dataclasses.replace(case, state=CaseState.NEEDS_FACTS,
                                       reason="missing: " + ", ".join(_missing(case)))
        return case



def _missing(case: Case) -> list[str]:
    missing = []
    if case.amount is None:
        missing.append("amount")
    if case.due_date is None:
        missing.append("due_date")
    return missing

