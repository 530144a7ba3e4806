"""The shared vocabulary's two fast constructors, against the dataclass way they stand for."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from relance.model import Case, CaseState, StepRecord

AT = datetime(2026, 11, 9, 8, 30, tzinfo=UTC)


def full_case() -> Case:
    return Case(
        number="F-1", client_addrs=("ap@client.fr",), subject="Facture F-1",
        root_message_id="<f1@firm.fr>", root_references=("<r@firm.fr>",), client_name="Client",
        amount=Decimal("1250.00"), paid=Decimal("100"), credited=Decimal("50"),
        credit_notes=("A-1",), currency="EUR", issue_date=date(2026, 10, 1),
        due_date=date(2026, 10, 31), state=CaseState.PAUSED, thread_ids=("<f1@firm.fr>",),
        steps=(StepRecord(2, "reminder-1", AT, "<s2@firm.fr>", "sent"),), last_contact_at=AT,
        paused_until=AT, reason="client replied", invoice_folder="Sent", invoice_uid=7,
        language="en", opened_at=AT, instalments=((date(2026, 12, 1), Decimal("600")),),
    )


def test_from_fields_is_the_dataclass_constructor() -> None:
    whole = full_case()
    fields = {f.name: getattr(whole, f.name) for f in dataclasses.fields(Case)}
    assert Case.from_fields(dict(fields)) == whole
    minimal = {"number": "F-2", "client_addrs": ("a@b.fr",), "subject": "s",
               "root_message_id": "<m@b.fr>"}
    built = Case.from_fields(dict(minimal))
    assert built == Case(**minimal)
    assert hash(built) == hash(Case(**minimal))
    assert built.paid == Decimal("0") and built.state is CaseState.CHASING and built.steps == ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.number = "F-3"  # type: ignore[misc]


def test_from_fields_refuses_unknown_and_missing_fields() -> None:
    with pytest.raises(TypeError, match="unknown \\['colour'\\]"):
        Case.from_fields({"number": "F-2", "client_addrs": (), "subject": "s",
                          "root_message_id": "<m@b.fr>", "colour": "red"})
    with pytest.raises(TypeError, match="missing \\['subject'\\]"):
        Case.from_fields({"number": "F-2", "client_addrs": (), "root_message_id": "<m@b.fr>"})


def test_with_last_contact_is_replace_of_that_one_field() -> None:
    case = dataclasses.replace(full_case(), last_contact_at=None)
    later = datetime(2026, 11, 12, 8, 30, tzinfo=UTC)
    moved = case.with_last_contact(later)
    assert moved == dataclasses.replace(case, last_contact_at=later)
    assert hash(moved) == hash(dataclasses.replace(case, last_contact_at=later))
    assert case.last_contact_at is None  # the original is untouched
    with pytest.raises(dataclasses.FrozenInstanceError):
        moved.last_contact_at = None  # type: ignore[misc]
