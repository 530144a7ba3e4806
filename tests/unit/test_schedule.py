"""The chase calendar: business days, the send window, the gap, the order of steps.

Dates are chosen on the French calendar of 2026-2027: Christmas 2026 is a Friday, Easter
Monday 2027 is 29 March, and summer time ends on Sunday 25 October 2026.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relance.core.schedule import BusinessCalendar, due_decisions, plan_each, plan_next
from relance.model import Case, CaseState, Channel, StepRecord
from relance.rules.model import Offset, Rules

PARIS = ZoneInfo("Europe/Paris")
PLUS_ONE = timezone(timedelta(hours=1))

# What rules/calendar.yaml holds by default.
DEFAULT_RULES = Rules.model_validate(
    {
        "steps": [
            {"name": "courtesy", "offset": "-5d", "template": "courtesy", "tone": "friendly"},
            {"name": "reminder-1", "offset": "+5d", "template": "reminder-1", "tone": "friendly"},
            {"name": "reminder-2", "offset": "+18d", "template": "reminder-2", "tone": "neutral"},
            {"name": "reminder-3", "offset": "+30d", "template": "reminder-3", "tone": "firm"},
            {
                "name": "formal-notice",
                "offset": "+40d",
                "channel": "letter",
                "template": "formal-notice",
                "tone": "formal",
            },
        ],
        "send_window": {
            "days": ["mon", "tue", "wed", "thu", "fri"],
            "start": "08:30",
            "end": "10:00",
        },
        "holidays": {"country": "FR"},
        "min_gap": "7d",
        "clients": [
            {"match": ["@regulier.fr"], "tone": "warm"},
            {"match": ["ap@prelevement.fr"], "never_chase": True},
        ],
    }
)
CAL = BusinessCalendar.from_rules(DEFAULT_RULES, PARIS)


def paris(y: int, m: int, d: int, hh: int = 9, mm: int = 0) -> datetime:
    return datetime(y, m, d, hh, mm, tzinfo=PARIS)


def utc(y: int, m: int, d: int, hh: int = 8, mm: int = 0) -> datetime:
    return datetime(y, m, d, hh, mm, tzinfo=UTC)


def make_case(**overrides: object) -> Case:
    fields: dict[str, object] = {
        "number": "F-2026-042",
        "client_addrs": ("compta@client.fr",),
        "subject": "Facture F-2026-042",
        "root_message_id": "<f-2026-042@atelier.fr>",
        "amount": Decimal("1200.00"),
        "due_date": date(2026, 12, 15),  # a Tuesday
    }
    fields.update(overrides)
    return Case(**fields)  # type: ignore[arg-type]


def done(*steps: tuple[int, datetime]) -> tuple[StepRecord, ...]:
    """Step records as the daemon would have written them after sending."""
    names = [s.name for s in DEFAULT_RULES.steps]
    return tuple(
        StepRecord(
            index=i, name=names[i - 1], at=at, message_id=f"<r{i}@atelier.fr>", outcome="sent"
        )
        for i, at in steps
    )


# --- BusinessCalendar -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("day", "expected", "why"),
    [
        (date(2026, 12, 24), True, "Christmas Eve is a working Thursday"),
        (date(2026, 12, 25), False, "Christmas, a Friday"),
        (date(2026, 12, 26), False, "Saturday"),
        (date(2026, 12, 27), False, "Sunday"),
        (date(2026, 12, 28), True, "Monday after Christmas"),
        (date(2027, 1, 1), False, "New Year's Day, a Friday"),
        (date(2027, 3, 29), False, "Easter Monday 2027"),
        (date(2027, 3, 26), True, "Good Friday is not a holiday outside Alsace-Moselle"),
        (date(2027, 3, 30), True, "Tuesday after Easter"),
        (date(2026, 7, 14), False, "Bastille Day, a Tuesday"),
        (date(2027, 7, 14), False, "Bastille Day, a Wednesday"),
        (date(2026, 5, 1), False, "Labour Day"),
        (date(2026, 5, 14), False, "Ascension 2026"),
        (date(2026, 11, 11), False, "Armistice"),
        (date(2026, 11, 12), True, "an ordinary Thursday"),
    ],
)
def test_is_business_day(day: date, expected: bool, why: str) -> None:
    assert CAL.is_business_day(day) is expected, why


def test_alsace_moselle_has_good_friday_and_saint_stephen() -> None:
    rules = DEFAULT_RULES.model_copy(
        update={"holidays": DEFAULT_RULES.holidays.model_copy(update={"subdivision": "57"})}
    )
    cal = BusinessCalendar.from_rules(rules, PARIS)
    assert not cal.is_business_day(date(2027, 3, 26))
    assert not cal.is_business_day(date(2026, 12, 25))


def test_window_days_decide_business_days() -> None:
    rules = DEFAULT_RULES.model_copy(
        update={
            "send_window": DEFAULT_RULES.send_window.model_copy(
                update={"days": ("tue", "wed", "thu")}
            )
        }
    )
    cal = BusinessCalendar.from_rules(rules, PARIS)
    assert not cal.is_business_day(date(2026, 11, 16))  # a Monday
    assert cal.is_business_day(date(2026, 11, 17))
    assert cal.next_window_start(date(2026, 11, 20)) == paris(2026, 11, 24, 8, 30)


def test_unknown_holiday_country_is_a_clear_error() -> None:
    rules = DEFAULT_RULES.model_copy(
        update={"holidays": DEFAULT_RULES.holidays.model_copy(update={"country": "XX"})}
    )
    with pytest.raises(ValueError, match="holidays"):
        BusinessCalendar.from_rules(rules, PARIS)


def test_window_without_any_day_raises_instead_of_looping() -> None:
    cal = BusinessCalendar(tz=PARIS, weekdays=frozenset(), start=time(8, 30), end=time(10))
    with pytest.raises(ValueError, match="no business day"):
        cal.next_window_start(date(2026, 11, 16))


@pytest.mark.parametrize(
    ("start", "offset", "expected"),
    [
        (date(2026, 12, 15), "+5d", date(2026, 12, 20)),
        (date(2026, 12, 15), "-5d", date(2026, 12, 10)),
        (date(2026, 12, 15), "+2w", date(2026, 12, 29)),
        (date(2026, 12, 15), "+0d", date(2026, 12, 15)),
        (date(2026, 11, 20), "+3bd", date(2026, 11, 25)),  # Fri -> Wed over a weekend
        (date(2026, 12, 24), "+1bd", date(2026, 12, 28)),  # over Christmas and a weekend
        (date(2026, 12, 31), "+1bd", date(2027, 1, 4)),  # over New Year's Day
        (date(2027, 3, 30), "-1bd", date(2027, 3, 26)),  # back over Easter Monday
        (date(2026, 12, 26), "+0bd", date(2026, 12, 26)),  # zero stays put
        (date(2026, 7, 13), "+1 business day", date(2026, 7, 15)),  # over 14 July
    ],
)
def test_add_counts_calendar_or_business_days(start: date, offset: str, expected: date) -> None:
    assert CAL.add(start, Offset.parse(offset)) == expected


@pytest.mark.parametrize(
    ("day", "expected", "utc_offset_hours"),
    [
        (date(2026, 11, 17), paris(2026, 11, 17, 8, 30), 1),  # a Tuesday
        (date(2026, 11, 21), paris(2026, 11, 23, 8, 30), 1),  # Saturday -> Monday
        (date(2026, 12, 25), paris(2026, 12, 28, 8, 30), 1),  # Christmas Friday -> Monday
        (date(2027, 1, 1), paris(2027, 1, 4, 8, 30), 1),  # New Year's Day -> Monday
        (date(2027, 3, 29), paris(2027, 3, 30, 8, 30), 2),  # Easter Monday, summer time
        (date(2026, 10, 23), paris(2026, 10, 23, 8, 30), 2),  # Friday before DST ends
        (date(2026, 10, 25), paris(2026, 10, 26, 8, 30), 1),  # DST Sunday -> Monday, winter
        (date(2027, 3, 28), paris(2027, 3, 30, 8, 30), 2),  # DST starts on Easter Sunday
    ],
)
def test_next_window_start_is_wall_clock_on_a_business_day(
    day: date, expected: datetime, utc_offset_hours: int
) -> None:
    at = CAL.next_window_start(day)
    assert at == expected
    assert at.tzinfo == PARIS
    assert at.time() == time(8, 30)
    assert at.utcoffset() == timedelta(hours=utc_offset_hours)


def test_window_start_moves_by_one_hour_in_utc_across_october_dst() -> None:
    before = CAL.next_window_start(date(2026, 10, 23))
    after = CAL.next_window_start(date(2026, 10, 26))
    assert before == utc(2026, 10, 23, 6, 30)
    assert after == utc(2026, 10, 26, 7, 30)


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        (paris(2026, 11, 17, 8, 30), True),  # start is inclusive
        (paris(2026, 11, 17, 9, 59), True),
        (paris(2026, 11, 17, 10, 0), False),  # end is exclusive
        (paris(2026, 11, 17, 8, 29), False),
        (paris(2026, 11, 17, 14, 0), False),  # the afternoon cron run
        (paris(2026, 11, 21, 9, 0), False),  # Saturday
        (paris(2026, 12, 25, 9, 0), False),  # Christmas
        (utc(2026, 11, 17, 8, 0), True),  # 09:00 in Paris (winter)
        (utc(2026, 11, 17, 9, 0), False),  # 10:00 in Paris
        (datetime(2026, 11, 17, 9, 0, tzinfo=PLUS_ONE), True),
        (utc(2026, 7, 15, 7, 0), True),  # 09:00 in Paris (summer)
        (utc(2026, 7, 15, 8, 0), False),  # 10:00 in Paris (summer)
        (utc(2026, 7, 14, 7, 0), False),  # 14 July
        (utc(2026, 10, 23, 6, 45), True),  # 08:45 CEST, Friday before DST ends
        (utc(2026, 10, 26, 6, 45), False),  # 07:45 CET, Monday after
        (utc(2026, 10, 26, 7, 45), True),  # 08:45 CET
        (utc(2026, 11, 16, 23, 30), False),  # 00:30 Tuesday in Paris
    ],
)
def test_in_window(at: datetime, expected: bool) -> None:
    assert CAL.in_window(at) is expected


def test_naive_instants_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        CAL.in_window(datetime(2026, 11, 17, 9, 0))
    with pytest.raises(ValueError, match="timezone-aware"):
        plan_next(make_case(), DEFAULT_RULES, CAL, datetime(2026, 11, 17, 9, 0))


# --- plan_next: which cases are chased ----------------------------------------------------

NOW = paris(2026, 12, 1, 9, 0)  # two weeks before the default due date


@pytest.mark.parametrize(
    ("state", "paused_until", "planned"),
    [
        (CaseState.CHASING, None, True),
        (CaseState.PAUSED, None, False),  # paused until resumed by hand
        (CaseState.PAUSED, paris(2026, 12, 2, 9, 0), False),  # pause not over yet
        (CaseState.PAUSED, paris(2026, 11, 30, 9, 0), True),  # pause over
        (CaseState.PAUSED, NOW, True),  # pause ends right now
        (CaseState.PAID, None, False),
        (CaseState.STOPPED, None, False),
        (CaseState.NEEDS_FACTS, None, False),
        (CaseState.BAD_ADDRESS, None, False),
        (CaseState.FORMAL_NOTICE, None, False),
        (CaseState.DONE, None, False),
    ],
)
def test_only_chasing_or_expired_pauses_are_planned(
    state: CaseState, paused_until: datetime | None, planned: bool
) -> None:
    case = make_case(state=state, paused_until=paused_until)
    assert (plan_next(case, DEFAULT_RULES, CAL, NOW) is not None) is planned


@pytest.mark.parametrize(
    "overrides",
    [
        {"due_date": None},
        {"amount": None},
        {"client_addrs": ("ap@prelevement.fr",)},  # never-chase: pays by direct debit
        {"client_addrs": ("autre@client.fr", "ap@prelevement.fr")},
    ],
)
def test_cases_never_chased(overrides: dict[str, object]) -> None:
    assert plan_next(make_case(**overrides), DEFAULT_RULES, CAL, NOW) is None


# --- plan_next: which step and when --------------------------------------------------------

# Due Tuesday 15 Dec 2026: courtesy Thu 10 Dec; reminder-1 +5 = Sun 20 -> Mon 21;
# reminder-2 +18 = Sat 2 Jan -> Mon 4 Jan; reminder-3 +30 = Thu 14 Jan;
# formal notice +40 = Sun 24 Jan -> Mon 25 Jan.
R1_AT = paris(2026, 12, 21, 8, 30)
R2_AT = paris(2027, 1, 4, 8, 30)
R3_AT = paris(2027, 1, 14, 8, 30)
FN_AT = paris(2027, 1, 25, 8, 30)


@pytest.mark.parametrize(
    ("steps", "now", "index", "name", "at"),
    [
        ((), paris(2026, 12, 1), 1, "courtesy", paris(2026, 12, 10, 8, 30)),
        ((), paris(2026, 12, 15, 11), 1, "courtesy", paris(2026, 12, 10, 8, 30)),  # due today
        ((), paris(2026, 12, 16), 2, "reminder-1", R1_AT),  # due passed: courtesy skipped
        ((), utc(2026, 12, 15, 23, 30), 2, "reminder-1", R1_AT),  # 00:30 on the 16th in Paris
        ((), paris(2027, 1, 19), 2, "reminder-1", R1_AT),  # found 35 days late
        (done((1, paris(2026, 12, 10, 8, 31))), paris(2026, 12, 11), 2, "reminder-1", R1_AT),
        (done((2, paris(2026, 12, 21, 8, 31))), paris(2026, 12, 22), 3, "reminder-2", R2_AT),
        (done((3, paris(2027, 1, 4, 8, 31))), paris(2027, 1, 5), 4, "reminder-3", R3_AT),
        (done((4, paris(2027, 1, 14, 8, 31))), paris(2027, 1, 15), 5, "formal-notice", FN_AT),
    ],
)
def test_next_step_in_calendar_order(
    steps: tuple[StepRecord, ...], now: datetime, index: int, name: str, at: datetime
) -> None:
    planned = plan_next(make_case(steps=steps), DEFAULT_RULES, CAL, now)
    assert planned is not None
    assert (planned.step_index, planned.step_name, planned.at) == (index, name, at)


def test_formal_notice_is_a_letter() -> None:
    case = make_case(steps=done((4, paris(2027, 1, 14, 8, 31))))
    planned = plan_next(case, DEFAULT_RULES, CAL, paris(2027, 1, 15))
    assert planned is not None
    assert planned.channel is Channel.LETTER


def test_nothing_after_the_last_step() -> None:
    case = make_case(steps=done((5, FN_AT)))
    assert plan_next(case, DEFAULT_RULES, CAL, paris(2027, 3, 1)) is None


def test_never_goes_back_to_an_earlier_step() -> None:
    # Reminder-3 went out; even seen "before" the due date (say the due date was
    # corrected later), the courtesy notice never comes back.
    case = make_case(steps=done((4, paris(2026, 11, 2, 9))), due_date=date(2026, 12, 15))
    planned = plan_next(case, DEFAULT_RULES, CAL, paris(2026, 11, 3))
    assert planned is not None
    assert planned.step_index == 5


def test_gap_holds_even_for_a_step_long_overdue() -> None:
    # Found 35 days late, reminder-1 goes out at once; reminder-2, also overdue by then,
    # waits the 7-day gap after it.
    sent_at = paris(2027, 1, 19, 8, 35)  # a Tuesday
    case = make_case(steps=done((2, sent_at)))
    planned = plan_next(case, DEFAULT_RULES, CAL, paris(2027, 1, 19, 9, 0))
    assert planned is not None
    assert (planned.step_name, planned.at) == ("reminder-2", paris(2027, 1, 26, 8, 30))


@pytest.mark.parametrize(
    ("contact", "expected"),
    [
        (None, R1_AT),
        (paris(2026, 12, 9, 16, 0), R1_AT),  # 16 Dec + 7 would be before 21 Dec
        (paris(2026, 12, 17, 16, 0), paris(2026, 12, 24, 8, 30)),  # hand-written on the 17th
        (paris(2026, 12, 18, 16, 0), paris(2026, 12, 28, 8, 30)),  # +7 is Christmas
        (utc(2026, 12, 17, 23, 30), paris(2026, 12, 28, 8, 30)),  # the 18th in Paris
        (datetime(2026, 12, 17, 23, 30, tzinfo=PLUS_ONE), paris(2026, 12, 24, 8, 30)),
    ],
)
def test_next_step_waits_the_gap_after_a_hand_written_mail(
    contact: datetime | None, expected: datetime
) -> None:
    case = make_case(last_contact_at=contact)
    planned = plan_next(case, DEFAULT_RULES, CAL, paris(2026, 12, 19))
    assert planned is not None
    assert planned.step_name == "reminder-1"
    assert planned.at == expected


def test_gap_counts_from_the_latest_of_step_and_contact() -> None:
    case = make_case(
        steps=done((2, paris(2026, 12, 21, 8, 31))),
        last_contact_at=paris(2026, 12, 30, 11, 0),  # the owner wrote after reminder-1
    )
    planned = plan_next(case, DEFAULT_RULES, CAL, paris(2026, 12, 31))
    assert planned is not None
    assert planned.at == paris(2027, 1, 6, 8, 30)


def test_courtesy_pushed_past_the_due_date_is_skipped() -> None:
    # The owner wrote 3 days before the due date: a "due in 5 days" notice could only
    # leave after the due date, so the next step is reminder-1.
    case = make_case(last_contact_at=paris(2026, 12, 12, 10, 0))
    planned = plan_next(case, DEFAULT_RULES, CAL, paris(2026, 12, 14))
    assert planned is not None
    assert (planned.step_name, planned.at) == ("reminder-1", R1_AT)


def test_courtesy_on_a_holiday_rolls_forward() -> None:
    # Due Wednesday 30 Dec 2026: courtesy -5d is Christmas Friday -> Monday 28 Dec.
    case = make_case(due_date=date(2026, 12, 30))
    planned = plan_next(case, DEFAULT_RULES, CAL, paris(2026, 12, 1))
    assert planned is not None
    assert (planned.step_name, planned.at) == ("courtesy", paris(2026, 12, 28, 8, 30))


@pytest.mark.parametrize(
    ("due", "expected"),
    [
        (date(2026, 12, 20), paris(2026, 12, 28, 8, 30)),  # +5 is Christmas Friday
        (date(2026, 12, 27), paris(2027, 1, 4, 8, 30)),  # +5 is New Year's Day
        (date(2027, 3, 24), paris(2027, 3, 30, 8, 30)),  # +5 is Easter Monday
        (date(2026, 7, 9), paris(2026, 7, 15, 8, 30)),  # +5 is 14 July
        (date(2026, 10, 18), utc(2026, 10, 23, 6, 30)),  # +5 is a Friday in summer time
        (date(2026, 10, 20), utc(2026, 10, 26, 7, 30)),  # +5 is the DST Sunday
    ],
)
def test_reminder_lands_on_the_next_business_day(due: date, expected: datetime) -> None:
    case = make_case(due_date=due)
    now = datetime.combine(due + timedelta(days=1), time(12), PARIS)  # courtesy is past
    planned = plan_next(case, DEFAULT_RULES, CAL, now)
    assert planned is not None
    assert (planned.step_name, planned.at) == ("reminder-1", expected)


def test_expired_pause_delays_to_its_end() -> None:
    case = make_case(state=CaseState.PAUSED, paused_until=paris(2026, 12, 29, 0, 0))
    planned = plan_next(case, DEFAULT_RULES, CAL, paris(2026, 12, 29, 9, 0))
    assert planned is not None
    assert (planned.step_name, planned.at) == ("reminder-1", paris(2026, 12, 29, 8, 30))


def test_pause_end_on_a_weekend_resumes_on_the_next_business_day() -> None:
    case = make_case(state=CaseState.PAUSED, paused_until=paris(2027, 1, 2, 0, 0))
    planned = plan_next(case, DEFAULT_RULES, CAL, paris(2027, 1, 2, 12, 0))
    assert planned is not None
    assert (planned.step_name, planned.at) == ("reminder-1", paris(2027, 1, 4, 8, 30))


def test_steps_in_business_days() -> None:
    rules = DEFAULT_RULES.model_copy(
        update={
            "steps": (
                DEFAULT_RULES.steps[1].model_copy(update={"offset": Offset.parse("+3bd")}),
                DEFAULT_RULES.steps[2].model_copy(update={"offset": Offset.parse("+10bd")}),
            )
        }
    )
    cal = BusinessCalendar.from_rules(rules, PARIS)
    # Due Wed 23 Dec 2026: +3bd skips Christmas and the weekend -> Tue 29 Dec.
    case = make_case(due_date=date(2026, 12, 23))
    planned = plan_next(case, rules, cal, paris(2026, 12, 24))
    assert planned is not None
    assert (planned.step_index, planned.at) == (1, paris(2026, 12, 29, 8, 30))
    # +10bd: 24, 28, 29, 30, 31 Dec, 4, 5, 6, 7, 8 Jan (1 Jan is a holiday).
    case = make_case(due_date=date(2026, 12, 23), steps=done((1, paris(2026, 12, 29, 8, 31))))
    planned = plan_next(case, rules, cal, paris(2026, 12, 30))
    assert planned is not None
    assert (planned.step_index, planned.at) == (2, paris(2027, 1, 8, 8, 30))


def test_min_gap_in_business_days() -> None:
    rules = DEFAULT_RULES.model_copy(update={"min_gap": Offset.parse("+5bd")})
    cal = BusinessCalendar.from_rules(rules, PARIS)
    # Written Thu 17 Dec: 5 business days are 18, 21, 22, 23, 24 Dec.
    case = make_case(last_contact_at=paris(2026, 12, 17, 16, 0))
    planned = plan_next(case, rules, cal, paris(2026, 12, 19))
    assert planned is not None
    assert planned.at == paris(2026, 12, 24, 8, 30)


def test_now_in_utc_or_plus_one_plans_the_same() -> None:
    case = make_case()
    in_utc = plan_next(case, DEFAULT_RULES, CAL, utc(2026, 12, 16, 8, 0))
    in_plus_one = plan_next(case, DEFAULT_RULES, CAL, datetime(2026, 12, 16, 9, 0, tzinfo=PLUS_ONE))
    assert in_utc == in_plus_one
    assert in_utc is not None
    assert in_utc.step_name == "reminder-1"


# --- due_decisions -------------------------------------------------------------------------


def test_afternoon_run_sends_nothing_next_morning_does() -> None:
    case = make_case()
    assert due_decisions([case], DEFAULT_RULES, CAL, paris(2026, 12, 21, 14, 0)) == []
    assert due_decisions([case], DEFAULT_RULES, CAL, paris(2026, 12, 21, 8, 0)) == []
    (decision,) = due_decisions([case], DEFAULT_RULES, CAL, paris(2026, 12, 22, 8, 45))
    assert decision.step_name == "reminder-1"
    assert decision.planned_at == R1_AT


def test_decision_carries_the_step() -> None:
    (decision,) = due_decisions([make_case()], DEFAULT_RULES, CAL, paris(2026, 12, 21, 9, 0))
    assert decision.number == "F-2026-042"
    assert decision.step_index == 2
    assert decision.step_name == "reminder-1"
    assert decision.channel is Channel.EMAIL
    assert decision.template == "reminder-1"
    assert decision.tone == "friendly"
    assert decision.planned_at == R1_AT


def test_client_profile_tone_wins_over_the_step_tone() -> None:
    case = make_case(client_addrs=("compta@regulier.fr",))
    (decision,) = due_decisions([case], DEFAULT_RULES, CAL, paris(2026, 12, 21, 9, 0))
    assert decision.tone == "warm"


def test_not_due_before_the_planned_instant() -> None:
    # In the window on Friday 18 Dec, but reminder-1 is planned for Monday 21.
    assert due_decisions([make_case()], DEFAULT_RULES, CAL, paris(2026, 12, 18, 9, 0)) == []


def test_invoice_found_35_days_late_gets_only_the_first_reminder() -> None:
    now = paris(2027, 1, 19, 8, 35)
    (decision,) = due_decisions([make_case()], DEFAULT_RULES, CAL, now)
    assert decision.step_name == "reminder-1"
    # Once sent, nothing else is due until the gap has passed.
    sent = make_case(steps=done((2, now)))
    assert due_decisions([sent], DEFAULT_RULES, CAL, paris(2027, 1, 25, 9, 0)) == []
    (decision,) = due_decisions([sent], DEFAULT_RULES, CAL, paris(2027, 1, 26, 9, 0))
    assert decision.step_name == "reminder-2"


def test_due_decisions_on_mixed_cases() -> None:
    now = paris(2027, 1, 14, 9, 0)  # Thursday: reminder-3 day for the default due date
    cases = [
        make_case(number="A-chasing-r3", steps=done((3, paris(2027, 1, 4, 8, 31)))),
        make_case(number="B-paid", state=CaseState.PAID),
        make_case(number="C-paused", state=CaseState.PAUSED),
        make_case(
            number="D-pause-over", state=CaseState.PAUSED, paused_until=paris(2027, 1, 10, 0, 0)
        ),
        make_case(number="E-no-amount", amount=None),
        make_case(number="F-direct-debit", client_addrs=("ap@prelevement.fr",)),
        make_case(number="G-wrote-yesterday", last_contact_at=paris(2027, 1, 13, 17, 0)),
        make_case(number="H-finished", steps=done((5, paris(2027, 1, 11, 8, 31)))),
        make_case(number="I-not-yet-due", due_date=date(2027, 2, 1)),
        make_case(number="J-courtesy", due_date=date(2027, 1, 19)),
    ]
    decisions = due_decisions(cases, DEFAULT_RULES, CAL, now)
    assert [(d.number, d.step_name) for d in decisions] == [
        ("A-chasing-r3", "reminder-3"),
        ("D-pause-over", "reminder-1"),
        ("J-courtesy", "courtesy"),
    ]
    assert [d.tone for d in decisions] == ["firm", "friendly", "friendly"]


def test_due_decisions_same_in_utc_and_local() -> None:
    cases = [make_case()]
    local = due_decisions(cases, DEFAULT_RULES, CAL, paris(2026, 12, 21, 9, 0))
    in_utc = due_decisions(cases, DEFAULT_RULES, CAL, utc(2026, 12, 21, 8, 0))
    assert local == in_utc
    assert len(local) == 1


def test_no_decision_on_a_holiday_morning() -> None:
    case = make_case(due_date=date(2026, 12, 20))  # reminder-1 would be Christmas
    assert due_decisions([case], DEFAULT_RULES, CAL, paris(2026, 12, 25, 9, 0)) == []
    (decision,) = due_decisions([case], DEFAULT_RULES, CAL, paris(2026, 12, 28, 9, 0))
    assert decision.step_name == "reminder-1"


def test_window_start_in_the_spring_forward_gap_is_a_real_instant() -> None:
    # 02:30 does not exist in Paris on 28 March 2027; the clock jumps from 02:00 to 03:00.
    cal = BusinessCalendar(
        tz=PARIS, weekdays=frozenset(range(7)), start=time(2, 30), end=time(4, 0)
    )
    at = cal.next_window_start(date(2027, 3, 28))
    assert at == utc(2027, 3, 28, 1, 30)
    assert at.astimezone(UTC).astimezone(PARIS) == at
    assert cal.in_window(at)


# --- planning many cases at once: the caches change no answer --------------------------


def test_a_calendar_answers_the_same_from_its_caches() -> None:
    # A shared calendar memoises business-day sums and window starts; each answer, asked
    # twice, equals a brand-new calendar's, over Christmas, Easter and both clock changes.
    shared = BusinessCalendar.from_rules(DEFAULT_RULES, PARIS)
    offsets = [Offset.parse(text) for text in ("+0bd", "+3bd", "-2bd", "+10bd", "+5d", "-5d")]
    day = date(2026, 3, 20)
    while day < date(2027, 4, 10):
        for offset in offsets:
            fresh = BusinessCalendar.from_rules(DEFAULT_RULES, PARIS)
            assert shared.add(day, offset) == shared.add(day, offset) == fresh.add(day, offset)
        fresh = BusinessCalendar.from_rules(DEFAULT_RULES, PARIS)
        start = shared.next_window_start(day)
        assert start == shared.next_window_start(day) == fresh.next_window_start(day)
        assert start.utcoffset() == fresh.next_window_start(day).utcoffset()
        day += timedelta(days=3)


def test_plan_each_is_plan_next_of_each_case() -> None:
    now = paris(2026, 12, 21, 9, 0)
    cases = [
        make_case(number="chasing"),
        make_case(number="no-due-date", due_date=None),
        make_case(number="never", client_addrs=("ap@prelevement.fr",)),
        make_case(number="paused-over", state=CaseState.PAUSED,
                  paused_until=paris(2026, 12, 20, 12, 0)),
        make_case(number="paused-on", state=CaseState.PAUSED,
                  paused_until=paris(2027, 1, 4, 12, 0)),
        make_case(number="reminded", steps=done((2, paris(2026, 12, 21, 8, 31))),
                  last_contact_at=datetime(2026, 12, 30, 23, 30, tzinfo=UTC)),
        make_case(number="through", steps=done((5, paris(2027, 1, 25, 8, 30)))),
        make_case(number="plan", instalments=((date(2026, 12, 1), Decimal("600.00")),
                                              (date(2027, 1, 1), Decimal("600.00")))),
        make_case(number="paid", state=CaseState.PAID),
    ]
    expected = [(c, p) for c in cases if (p := plan_next(c, DEFAULT_RULES, CAL, now))]
    assert plan_each(cases, DEFAULT_RULES, CAL, now) == expected
    assert [c.number for c, _ in expected] == ["chasing", "paused-over", "reminded", "plan"]


def test_the_gap_counts_from_the_latest_instant_whatever_its_offset() -> None:
    # 23:30 UTC on the 17th is later than 23:45 at +01:00 on the same day (22:45 UTC), and
    # is already the 18th in Paris: the gap counts from the 18th (+7 is Christmas).
    case = make_case(
        steps=(StepRecord(1, "courtesy", datetime(2026, 12, 17, 23, 45, tzinfo=PLUS_ONE),
                          "<r1@atelier.fr>", "sent"),),
        last_contact_at=utc(2026, 12, 17, 23, 30),
    )
    planned = plan_next(case, DEFAULT_RULES, CAL, paris(2026, 12, 19))
    assert planned is not None
    assert planned.at == paris(2026, 12, 28, 8, 30)


@pytest.mark.parametrize("steps_aware", [True, False])
def test_a_naive_contact_is_refused_beside_aware_steps_or_alone(steps_aware: bool) -> None:
    at = paris(2026, 12, 10, 9, 0) if steps_aware else datetime(2026, 12, 10, 9, 0)
    case = make_case(steps=(StepRecord(1, "courtesy", at, "<r1@atelier.fr>", "sent"),),
                     last_contact_at=datetime(2026, 12, 12, 9, 0))
    with pytest.raises(ValueError, match="contact must be timezone-aware"):
        plan_next(case, DEFAULT_RULES, CAL, paris(2026, 12, 19))


# --- a later contact never brings a step forward ---------------------------------------


@st.composite
def _rules(draw: st.DrawFn) -> Rules:
    """Step calendars as the loader accepts them: steps of one kind (calendar or business
    days) in calendar order, the two kinds mixed in any order."""
    days = st.one_of(st.sampled_from([-10, -5, -1, 0, 1, 5, 18, 30]), st.integers(-10, 60))
    offsets = draw(st.lists(st.tuples(days, st.booleans()), min_size=1, max_size=5))
    for i in range(1, len(offsets)):
        if offsets[i][1] == offsets[i - 1][1] and offsets[i][0] < offsets[i - 1][0]:
            offsets[i] = offsets[i - 1]
    steps = [{"name": f"s{i}", "offset": f"{d:+d} business days" if business else f"{d:+d}d",
              "template": "reminder-1", "tone": "friendly"}
             for i, (d, business) in enumerate(offsets)]
    return Rules.model_validate({
        "steps": steps, "min_gap": f"{draw(st.integers(0, 10))}d",
        "instalment_reminder": f"{draw(st.integers(0, 10))}d",
        "send_window": {"days": ["mon", "tue", "wed", "thu", "fri"],
                        "start": "08:30", "end": "10:00"},
        "holidays": {"country": "FR"},
    })


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rules=_rules(), due=st.dates(date(2026, 10, 1), date(2027, 3, 1)),
       at=st.integers(-15, 90), contact=st.integers(-20, 40), later=st.integers(0, 40 * 24),
       done_steps=st.integers(0, 2), pause_end=st.one_of(st.none(), st.integers(-10, 60)),
       instalments=st.booleans())
def test_a_later_contact_never_brings_a_step_forward(
    rules: Rules, due: date, at: int, contact: int, later: int, done_steps: int,
    pause_end: int | None, instalments: bool,
) -> None:
    """`act` plans each case with its last contact raised to its client's latest mail
    (`with_client_contacts`); the daemon's plan, which lets `act` skip a pass where no
    step is due (`Daemon.nothing_due`), is made without that. This holds only because a
    later contact can delay a step or drop it, never bring one forward. Instants are
    drawn around the due date (days from it), where the steps and the gap meet."""
    cal = BusinessCalendar.from_rules(rules, PARIS)
    around = datetime.combine(due, time(11), tzinfo=PARIS)
    contacted = around + timedelta(days=contact)
    overrides: dict[str, object] = {
        "due_date": due,
        "last_contact_at": contacted,
        "steps": tuple(StepRecord(i, f"s{i - 1}", contacted - timedelta(days=1),
                                  f"<r{i}@atelier.fr>", "sent")
                       for i in range(1, min(done_steps, len(rules.steps)) + 1)),
    }
    if pause_end is not None:
        overrides |= {"state": CaseState.PAUSED,
                      "paused_until": around + timedelta(days=pause_end, hours=1)}
    if instalments:
        overrides["instalments"] = ((due, Decimal("600.00")),
                                    (due + timedelta(days=30), Decimal("600.00")))
    case = make_case(**overrides)
    now = around + timedelta(days=at, hours=-2)
    planned = plan_next(case, rules, cal, now)
    delayed = plan_next(case.with_last_contact(contacted + timedelta(hours=later)),
                        rules, cal, now)
    if planned is None:
        assert delayed is None
    elif delayed is not None:
        assert delayed.at >= planned.at
