"""The owner's `facts` command: what extraction missed, filled in by hand."""

from __future__ import annotations

import dataclasses
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from relance.core.commands import CommandRefused
from relance.core.facts import apply_facts, missing_facts
from relance.model import Case, CaseState

NOW = datetime(2026, 11, 25, 9, 0, tzinfo=timezone(timedelta(hours=1)))
DUE = date(2026, 12, 15)


def case(**fields: object) -> Case:
    base = Case(
        number="F-2026-0042",
        client_addrs=("client@example.com",),
        subject="Facture F-2026-0042",
        root_message_id="<m1@example.fr>",
        issue_date=date(2026, 11, 15),
        state=CaseState.NEEDS_FACTS,
        reason="missing: amount, due date",
    )
    return dataclasses.replace(base, **fields)  # type: ignore[arg-type]


def test_amount_and_due_date_make_a_case_that_needed_facts_chased() -> None:
    updated = apply_facts(case(), NOW, Decimal("1200.00"), DUE)
    assert (updated.amount, updated.due_date) == (Decimal("1200.00"), DUE)
    assert updated.state is CaseState.CHASING
    assert updated.reason == ""


def test_amount_alone_fills_the_amount_and_still_needs_the_due_date() -> None:
    updated = apply_facts(case(), NOW, Decimal("1200.00"), None)
    assert updated.amount == Decimal("1200.00")
    assert updated.state is CaseState.NEEDS_FACTS
    assert updated.reason == "missing: due date"


def test_due_date_alone_completes_a_case_that_had_its_amount() -> None:
    updated = apply_facts(case(amount=Decimal("99.90"), reason="missing: due date"), NOW,
                          None, DUE)
    assert updated.state is CaseState.CHASING
    assert (updated.amount, updated.due_date) == (Decimal("99.90"), DUE)


def test_what_is_not_given_is_kept() -> None:
    start = case(amount=Decimal("50"), due_date=None)
    assert apply_facts(start, NOW, None, DUE).amount == Decimal("50")
    start = case(amount=None, due_date=DUE)
    assert apply_facts(start, NOW, Decimal("10"), None).due_date == DUE


def test_owner_corrects_a_chasing_case_and_the_change_is_noted() -> None:
    chasing = case(state=CaseState.CHASING, amount=Decimal("1100.00"), due_date=DUE, reason="")
    updated = apply_facts(chasing, NOW, Decimal("1200.00"), date(2026, 12, 31))
    assert updated.state is CaseState.CHASING
    assert (updated.amount, updated.due_date) == (Decimal("1200.00"), date(2026, 12, 31))
    assert "amount 1200.00 (was 1100.00)" in updated.reason
    assert "due 2026-12-31 (was 2026-12-15)" in updated.reason


def test_a_paused_case_stays_paused_and_keeps_why() -> None:
    paused = case(state=CaseState.PAUSED, amount=Decimal("10"), due_date=DUE,
                  reason="client replied 2026-12-20: on paie demain")
    updated = apply_facts(paused, NOW, Decimal("12"), None)
    assert updated.state is CaseState.PAUSED
    assert updated.reason.startswith("client replied 2026-12-20: on paie demain; owner set")


def test_the_same_values_change_nothing() -> None:
    chasing = case(state=CaseState.CHASING, amount=Decimal("10"), due_date=DUE, reason="")
    assert apply_facts(chasing, NOW, Decimal("10"), DUE) == chasing


@pytest.mark.parametrize(
    "state", [CaseState.PAID, CaseState.STOPPED, CaseState.FORMAL_NOTICE, CaseState.DONE]
)
def test_closed_case_is_refused(state: CaseState) -> None:
    with pytest.raises(CommandRefused, match=state.value):
        apply_facts(case(state=state), NOW, Decimal("1"), DUE)


@pytest.mark.parametrize(
    ("amount", "due", "start", "message"),
    [
        (None, None, {}, "say what to set"),
        (Decimal("0"), None, {}, "positive"),
        (Decimal("-5"), None, {}, "positive"),
        (Decimal("40"), None, {"paid": Decimal("40")}, "already paid"),
        (None, date(2026, 11, 1), {}, "before the invoice date"),
    ],
)
def test_values_that_cannot_be_right_are_refused(
    amount: Decimal | None, due: date | None, start: dict[str, object], message: str
) -> None:
    with pytest.raises(CommandRefused, match=message):
        apply_facts(case(**start), NOW, amount, due)


def test_due_date_without_a_known_issue_date_is_accepted() -> None:
    updated = apply_facts(case(issue_date=None, amount=Decimal("5")), NOW, None, DUE)
    assert updated.state is CaseState.CHASING


@pytest.mark.parametrize(
    ("amount", "due", "expected"),
    [(None, None, ["amount", "due date"]), (Decimal("1"), None, ["due date"]),
     (None, DUE, ["amount"]), (Decimal("1"), DUE, [])],
)
def test_missing_facts(amount: Decimal | None, due: date | None, expected: list[str]) -> None:
    assert missing_facts(case(amount=amount, due_date=due)) == expected
