"""Rule features a firm edits by hand, each as the core applies it (no I/O)."""

from __future__ import annotations

import dataclasses
from datetime import date, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from relance.core.classify import stated_return
from relance.core.extract import due_date_for
from relance.core.schedule import (
    BusinessCalendar,
    client_key,
    due_decisions,
    plan_next,
    with_client_contacts,
)
from relance.model import Case, CaseState, InvoiceFacts, StepRecord
from relance.rules.model import ClientProfile, Offset, Rules, Step

TZ = ZoneInfo("Europe/Paris")
STEPS = (
    Step(name="courtesy", offset="-5d", template="courtesy", tone="friendly"),
    Step(name="reminder-1", offset="+5d", template="reminder-1", tone="friendly"),
    Step(name="reminder-2", offset="+18d", template="reminder-2"),
    Step(name="reminder-3", offset="+30d", template="reminder-3", tone="firm"),
    Step(name="formal-notice", offset="+40d", channel="letter", template="formal-notice",
         tone="formal"),
)


def at(day: date, hour: int = 9, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=TZ)


def case(number: str, due: date, client: str = "ap@client.fr", **kw: object) -> Case:
    return Case(number=number, client_addrs=(client,), subject=f"Facture {number}",
                root_message_id=f"<{number}@firm.fr>", amount=Decimal("100"), due_date=due,
                **kw)  # type: ignore[arg-type]


def rules(**kw: object) -> Rules:
    return Rules(steps=STEPS, **kw)  # type: ignore[arg-type]


def calendar(r: Rules) -> BusinessCalendar:
    return BusinessCalendar.from_rules(r, TZ)


@pytest.mark.parametrize(
    ("text", "offset"),
    [
        ("+5d", Offset(days=5)),
        ("-5d", Offset(days=-5)),
        ("+2w", Offset(days=14)),
        ("2 semaines", Offset(days=14)),
        ("+3 business days", Offset(days=3, business=True)),
        ("+3 jours ouvrés", Offset(days=3, business=True)),
        ("30 jours", Offset(days=30)),
        ("45 jours fin de mois", Offset(days=45, end_of_month=True)),
        ("30d eom", Offset(days=30, end_of_month=True)),
        ("60d end of month", Offset(days=60, end_of_month=True)),
    ],
)
def test_offsets_read_as_a_firm_writes_them(text: str, offset: Offset) -> None:
    assert Offset.parse(text) == offset


def test_end_of_month_terms_give_the_last_day_of_the_month() -> None:
    facts = InvoiceFacts(number="F-1", amount=Decimal("1"), issue_date=date(2026, 10, 10))
    terms = Offset.parse("45 jours fin de mois")
    assert due_date_for(facts, terms.days, terms.end_of_month) == date(2026, 11, 30)


def test_client_gap_holds_across_invoices_of_one_client() -> None:
    r = rules()
    a = case("A", date(2026, 11, 2), steps=(StepRecord(2, "reminder-1", at(date(2026, 11, 9)),
                                                        "<a2@firm.fr>", "sent"),))
    b = case("B", date(2026, 11, 5))  # reminder-1 would be due Tue 10 Nov
    effective = with_client_contacts([a, b])
    assert effective[1].last_contact_at == at(date(2026, 11, 9))
    assert due_decisions(effective, r, calendar(r), at(date(2026, 11, 10))) == []
    planned = plan_next(effective[1], r, calendar(r), at(date(2026, 11, 10)))
    assert planned is not None and planned.at.date() == date(2026, 11, 16)


def test_other_clients_do_not_share_a_gap() -> None:
    a = case("A", date(2026, 11, 2), steps=(StepRecord(2, "reminder-1", at(date(2026, 11, 9)),
                                                        "<a2@firm.fr>", "sent"),))
    b = case("B", date(2026, 11, 5), client="ap@other.fr")
    assert with_client_contacts([a, b])[1].last_contact_at is None


def test_a_closed_invoice_counts_as_a_contact_but_is_passed_as_it_is() -> None:
    r = rules()
    paid = dataclasses.replace(
        case("A", date(2026, 10, 2), steps=(StepRecord(2, "reminder-1", at(date(2026, 11, 9)),
                                                        "<a2@firm.fr>", "sent"),)),
        state=CaseState.PAID)
    b = case("B", date(2026, 11, 5))  # reminder-1 would be due Tue 10 Nov
    effective = with_client_contacts([paid, b])
    assert effective[0] is paid  # closed: not copied
    assert effective[1].last_contact_at == at(date(2026, 11, 9))  # its mail still counts
    assert due_decisions(effective, r, calendar(r), at(date(2026, 11, 10))) == []


def test_two_invoices_of_one_client_fall_due_together() -> None:
    r = rules()
    a, b = case("A", date(2026, 11, 5)), case("B", date(2026, 11, 5))
    decided = due_decisions(with_client_contacts([a, b]), r, calendar(r), at(date(2026, 11, 10)))
    assert [d.number for d in decided] == ["A", "B"]
    assert client_key(a) == client_key(b)  # the daemon sends them as one mail


def test_client_calendar_replaces_the_firm_calendar() -> None:
    own = (Step(name="call", offset="+2d", channel="task", template="notice-task"),)
    r = rules(clients=(ClientProfile(match=("@vip.fr",), steps=own),))
    vip = case("V", date(2026, 11, 2), client="boss@vip.fr")
    planned = plan_next(vip, r, calendar(r), at(date(2026, 11, 2)))
    assert planned is not None and planned.step_name == "call"
    assert r.steps_for(("someone@else.fr",)) == STEPS


def test_client_tone_wins_except_on_a_formal_step() -> None:
    r = rules(clients=(ClientProfile(match=("client.fr",), tone="warm"),))
    first = due_decisions([case("A", date(2026, 11, 5))], r, calendar(r), at(date(2026, 11, 10)))
    assert first[0].tone == "warm"
    late = case("A", date(2026, 11, 5), steps=tuple(
        StepRecord(i, STEPS[i - 1].name, at(date(2026, 11, 1)), f"<a{i}@f>", "sent")
        for i in range(1, 5)))
    letter = due_decisions([late], r, calendar(r), at(date(2026, 12, 15)))
    assert letter[0].step_name == "formal-notice" and letter[0].tone == "formal"


@pytest.mark.parametrize(
    ("value", "pause"),
    [("pause", None), ("pause 14d", Offset(days=14)), ("Pause  2w", Offset(days=14))],
)
def test_after_reply_rule(value: str, pause: Offset | None) -> None:
    assert rules(after_reply=value).reply_pause == pause


@pytest.mark.parametrize("value", ["stop", "pause soon", "pause 14"])
def test_after_reply_rule_refuses_what_it_cannot_do(value: str) -> None:
    with pytest.raises(ValueError, match="pause"):
        rules(after_reply=value)


def test_timed_pause_after_reply_resumes_by_itself() -> None:
    r = rules()
    paused = case("A", date(2026, 11, 5), state=CaseState.PAUSED,
                  paused_until=at(date(2026, 11, 20), 0))
    assert due_decisions([paused], r, calendar(r), at(date(2026, 11, 19))) == []
    assert [d.number for d in due_decisions([paused], r, calendar(r), at(date(2026, 11, 20)))] \
        == ["A"]


@pytest.mark.parametrize(
    ("text", "back"),
    [
        ("Je suis absente jusqu'au 4 janvier inclus.", date(2027, 1, 4)),
        ("Absent du bureau jusqu’au 14/12/2026.", date(2026, 12, 14)),
        ("De retour le lundi 14 décembre.", date(2026, 12, 14)),
        ("I am out of the office until January 4th.", date(2027, 1, 4)),
        ("Back on Monday, 11 January 2027", date(2027, 1, 11)),
        ("I will be back in the office on 2026-12-21.", date(2026, 12, 21)),
        ("Merci pour votre message.", None),
        ("jusqu'au 31/02", None),
    ],
)
def test_out_of_office_return_date(text: str, back: date | None) -> None:
    assert stated_return(text, date(2026, 12, 8)) == back


def test_a_weekday_can_have_hours_of_its_own() -> None:
    r = rules(send_window={"start": "08:30", "end": "10:00",
                           "per_day": {"fri": {"start": "11:00", "end": "11:30"}}})
    cal = calendar(r)
    thursday, friday = date(2026, 11, 12), date(2026, 11, 13)
    assert cal.in_window(at(thursday, 9)) and not cal.in_window(at(friday, 9))
    assert cal.in_window(at(friday, 11, 10)) and not cal.in_window(at(friday, 11, 30))
    assert cal.next_window_start(friday) == at(friday, 11)
    assert cal.next_window_start(thursday) == at(thursday, 8, 30)


def test_per_day_hours_name_real_days() -> None:
    with pytest.raises(ValueError, match='unknown day "fry"'):
        rules(send_window={"per_day": {"fry": {"start": "08:30", "end": "09:00"}}})
