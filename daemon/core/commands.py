"""The owner's commands as pure state changes: `paid`, `pause`, `resume`, `stop`.

The same functions serve the shell (`relance paid F-1`) and, later, commands by email,
so both always mean the same thing. Each returns the new case, or raises CommandRefused
with a sentence the owner can act on.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from zoneinfo import ZoneInfo

from relance.model import Case, CaseState

_CLOSED = (CaseState.PAID, CaseState.STOPPED, CaseState.FORMAL_NOTICE, CaseState.DONE)


class CommandRefused(Exception):
    """The command cannot apply to this case; the message says why."""


def parse_amount(text: str) -> Decimal:
    """`1234.56`, `1 234,56`, `1234,56 €`: the owner types amounts as they like."""
    cleaned = re.sub(r"[\s\u00a0\u202f€]|EUR", "", text.strip(), flags=re.IGNORECASE)
    if "," in cleaned and "." in cleaned:
        # Both: the last one is the decimal mark ("1.234,56" or "1,234.56").
        thousands = "." if cleaned.rfind(",") > cleaned.rfind(".") else ","
        cleaned = cleaned.replace(thousands, "")
    cleaned = cleaned.replace(",", ".")
    try:
        amount = Decimal(cleaned)
    except InvalidOperation:
        raise CommandRefused(f'"{text}" is not an amount; expected e.g. 1234.56') from None
    if amount <= 0:
        raise CommandRefused(f"the amount must be positive, not {text}")
    return amount


def parse_duration(text: str) -> timedelta:
    """`14d`, `2w`, `14 days`: how long a pause lasts."""
    m = re.fullmatch(r"\s*(\d+)\s*(d|days?|j|jours?|w|weeks?|semaines?)\s*", text, re.IGNORECASE)
    if not m:
        raise CommandRefused(f'"{text}" is not a duration; expected e.g. 14d or 2w')
    n = int(m[1])
    return timedelta(weeks=n) if m[2].lower()[0] in "ws" else timedelta(days=n)


def paid(case: Case, now: datetime, amount: Decimal | None = None) -> Case:
    """Record a payment: in full (no amount), or partial, the balance still chased."""
    if case.state in (CaseState.PAID, CaseState.STOPPED):
        raise CommandRefused(f"{case.number} is already {case.state.value}")
    if amount is None or case.amount is None:
        return dataclasses.replace(
            case, state=CaseState.PAID, paid=case.amount or case.paid,
            reason=f"paid (owner, {now:%Y-%m-%d})",
        )
    total_paid = case.paid + amount
    if total_paid >= case.amount:
        return dataclasses.replace(
            case, state=CaseState.PAID, paid=total_paid, reason=f"paid (owner, {now:%Y-%m-%d})"
        )
    return dataclasses.replace(
        case, paid=total_paid, reason=f"partly paid: {total_paid} of {case.amount}"
    )


def pause(case: Case, now: datetime, until: datetime | None, why: str) -> Case:
    """Stop chasing until a date (then it resumes by itself), or until `resume`."""
    if case.state in _CLOSED:
        raise CommandRefused(f"{case.number} is {case.state.value}: nothing to pause")
    if until is not None and until <= now:
        raise CommandRefused(f"the pause must end after now ({now:%Y-%m-%d})")
    return dataclasses.replace(case, state=CaseState.PAUSED, paused_until=until, reason=why)


def resume(case: Case) -> Case:
    if case.state not in (CaseState.PAUSED, CaseState.BAD_ADDRESS):
        raise CommandRefused(f"{case.number} is {case.state.value}, not paused")
    return dataclasses.replace(case, state=CaseState.CHASING, paused_until=None, reason="")


def stop(case: Case, now: datetime) -> Case:
    if case.state in (CaseState.PAID, CaseState.STOPPED):
        raise CommandRefused(f"{case.number} is already {case.state.value}")
    return dataclasses.replace(
        case, state=CaseState.STOPPED, reason=f"stopped (owner, {now:%Y-%m-%d})"
    )


def pause_end(now: datetime, tz: ZoneInfo, until: date | None, duration: str | None) -> datetime:
    """When a pause given as `--until DATE` or `--for 14d` ends: the start of that day."""
    if until is not None:
        return datetime.combine(until, time(0, 0), tzinfo=tz)
    if duration is not None:
        return now + parse_duration(duration)
    raise CommandRefused("say how long: --until DATE or --for 14d")
