"""The owner's `facts` command as a pure state change: fill in (or correct) what extraction
could not read, so that a case kept as "needs facts" can be chased.

`relance facts F-2026-0042 --amount 1200 --due 2026-12-15` and the same command by email
both end here. The owner's word beats any source: a value given replaces the one read.
"""

from __future__ import annotations

import dataclasses
from datetime import date, datetime
from decimal import Decimal

from relance.core.commands import CommandRefused
from relance.model import Case, CaseState

_CLOSED = (CaseState.PAID, CaseState.STOPPED, CaseState.FORMAL_NOTICE, CaseState.DONE)


def missing_facts(case: Case) -> list[str]:
    """What a case still lacks before it can be chased, in the owner's words."""
    missing = []
    if case.amount is None:
        missing.append("amount")
    if case.due_date is None:
        missing.append("due date")
    return missing


def apply_facts(case: Case, now: datetime, amount: Decimal | None, due: date | None) -> Case:
    """The case with the owner's amount and/or due date; a case that needed facts and now
    has both is chased. Refused for a closed case, for nothing to set, and for values that
    cannot be right (an amount not above what is already paid, a due date before issue)."""
    if case.state in _CLOSED:
        raise CommandRefused(f"{case.number} is {case.state.value}: its facts are final")
    if amount is None and due is None:
        raise CommandRefused("say what to set: --amount 1234.56 and/or --due YYYY-MM-DD")
    if amount is not None and amount <= 0:
        raise CommandRefused(f"the amount must be positive, not {amount}")
    if amount is not None and amount <= case.paid:
        raise CommandRefused(
            f"{case.number}: {case.paid} is already paid; an amount of {amount} would leave "
            f"nothing to chase (use `paid` instead)"
        )
    if due is not None and case.issue_date is not None and due < case.issue_date:
        raise CommandRefused(
            f"the due date {due:%Y-%m-%d} is before the invoice date {case.issue_date:%Y-%m-%d}"
        )
    changes = []
    if amount is not None and amount != case.amount:
        was = "" if case.amount is None else f" (was {case.amount})"
        changes.append(f"amount {amount}{was}")
    if due is not None and due != case.due_date:
        was = "" if case.due_date is None else f" (was {case.due_date:%Y-%m-%d})"
        changes.append(f"due {due:%Y-%m-%d}{was}")
    updated = dataclasses.replace(
        case,
        amount=case.amount if amount is None else amount,
        due_date=case.due_date if due is None else due,
    )
    still_missing = missing_facts(updated)
    if updated.state is CaseState.NEEDS_FACTS:
        if still_missing:
            return dataclasses.replace(updated, reason="missing: " + ", ".join(still_missing))
        return dataclasses.replace(updated, state=CaseState.CHASING, reason="")
    if changes:
        return dataclasses.replace(
            updated, reason=_with_note(case.reason, f"owner set {', '.join(changes)} "
                                                    f"on {now:%Y-%m-%d}")
        )
    return updated


def _with_note(reason: str, note: str) -> str:
    """Keep why a case is paused or flagged; the owner's change is added, not swapped in."""
    return f"{reason}; {note}" if reason else note
