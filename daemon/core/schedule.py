"""When each calendar step of a case is due: business days, the send window, the gap.

Pure: no I/O and no clock. `now` is always a parameter, so the daemon, `--now`, the demo
and the tests all decide the same way. The only outside knowledge is the table of public
holidays from the `holidays` package, computed in memory and cached per year.

The chase calendar (PRODUCT.md, "Chase on a calendar"): each step lands on a business day
(an allowed weekday that is not a public holiday), inside the send window, never within the
minimum gap of the firm's last mail to the client, in the order the rules list the steps.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from relance.model import OPEN_STATES, Case, CaseState, Decision, PlannedStep
from relance.rules.model import ClientProfile, Offset, Rules, Step

# A year holds at least one business day unless the window allows no weekday at all; the
# bound turns that misconfiguration into an error instead of an endless loop.
_MAX_SEARCH_DAYS = 366 * 2


@dataclass(frozen=True)
class BusinessCalendar:
    """Business days and the send window of one firm, built once per set of rules.

    Frozen so it can be shared; its caches are the only things that grow, and they only
    memoise what it would compute again: the holidays of a year, and the business-day
    sums and window starts that planning asks for once per open case (10k cases share a
    few hundred days; planning them was half of a restart's work).
    """

    tz: ZoneInfo
    weekdays: frozenset[int]  # date.weekday() numbers, Monday is 0
    start: time  # send window start, wall-clock time in tz
    end: time  # send window end (exclusive), wall-clock time in tz
    country: str = "FR"
    subdivision: str | None = None
    # Weekdays with hours of their own: weekday → (start, end).
    per_day: tuple[tuple[int, time, time], ...] = ()
    _holidays: dict[int, frozenset[date]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _sums: dict[tuple[date, int], date] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )
    _starts: dict[date, datetime] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    @classmethod
    def from_rules(cls, rules: Rules, tz: ZoneInfo) -> BusinessCalendar:
        """Build the calendar the rules describe; an unknown country or region is a
        ValueError here, once, rather than a crash at the first holiday lookup."""
        import holidays  # lazy (~6 MB): only a calendar needs it, not every import

        country, subdiv = rules.holidays.country, rules.holidays.subdivision
        try:
            holidays.country_holidays(country, subdiv=subdiv)
        except NotImplementedError as exc:
            raise ValueError(f"holidays: {exc}") from exc
        return cls(
            tz=tz,
            weekdays=rules.send_window.weekdays,
            start=rules.send_window.start,
            end=rules.send_window.end,
            country=country,
            subdivision=subdiv,
            per_day=tuple(
                (day, *rules.send_window.hours(day)) for day in range(7)
                if rules.send_window.hours(day) != (rules.send_window.start,
                                                    rules.send_window.end)
            ),
        )

    def hours(self, d: date) -> tuple[time, time]:
        """The send window's (start, end) on that day."""
        for weekday, start, end in self.per_day:
            if weekday == d.weekday():
                return start, end
        return self.start, self.end

    def public_holidays(self, year: int) -> frozenset[date]:
        """The public holidays of one year, computed once."""
        days = self._holidays.get(year)
        if days is None:
            import holidays  # lazy: see from_rules

            table = holidays.country_holidays(self.country, subdiv=self.subdivision, years=year)
            days = frozenset(table.keys())
            self._holidays[year] = days
        return days

    def is_business_day(self, d: date) -> bool:
        """An allowed weekday of the send window that is not a public holiday."""
        return d.weekday() in self.weekdays and d not in self.public_holidays(d.year)

    def add(self, d: date, offset: Offset) -> date:
        """`d` moved by `offset`: calendar days, or business days when `offset.business`.

        Counting business days skips weekends and holidays on the way; `+0bd` is `d`
        itself (rolling onto a business day is next_window_start's job).
        """
        if not offset.business:
            return d + timedelta(days=offset.days)
        key = (d, offset.days)
        found = self._sums.get(key)
        if found is not None:
            return found
        step = timedelta(days=1 if offset.days >= 0 else -1)
        left = abs(offset.days)
        while left:
            d += step
            if self.is_business_day(d):
                left -= 1
        self._sums[key] = d
        return d

    def first_business_day(self, d: date) -> date:
        """`d` if it is a business day, else the next one."""
        for _ in range(_MAX_SEARCH_DAYS):
            if self.is_business_day(d):
                return d
            d += timedelta(days=1)
        raise ValueError(f"no business day within {_MAX_SEARCH_DAYS} days of {d}")

    def next_window_start(self, d: date) -> datetime:
        """When the send window opens on the first business day on or after `d`, in tz.

        The wall-clock start holds across DST changes (08:30 is 08:30 in summer and in
        winter); a start that falls in a spring-forward gap is moved to a real instant.
        """
        found = self._starts.get(d)
        if found is None:
            day = self.first_business_day(d)
            at = datetime.combine(day, self.hours(day)[0], tzinfo=self.tz)
            found = self._starts[d] = at.astimezone(UTC).astimezone(self.tz)
        return found

    def in_window(self, at: datetime) -> bool:
        """Whether `at` (aware, any tz) falls inside the send window of a business day
        in the firm's tz; start inclusive, end exclusive."""
        local = _aware(at, "at").astimezone(self.tz)
        if not self.is_business_day(local.date()):
            return False
        start, end = self.hours(local.date())
        return start <= local.time() < end


def plan_next(
    case: Case, rules: Rules, cal: BusinessCalendar, now: datetime
) -> PlannedStep | None:
    """The next calendar step of `case` and the instant it becomes due, or None.

    None when the case is not being chased at `now` (only CHASING, or PAUSED with a
    `paused_until` that has passed), lacks a due date or an amount (never chased blank),
    belongs to a never-chase client, or has run through every step.
    Steps go strictly forward from `case.last_step`; a pre-due step (negative offset) is
    skipped once it can no longer go out before the due date. The day is the due date
    plus the step's offset, pushed to at least `min_gap` after the firm's last mail or
    step and to the end of a pause; the instant is that day's window start (the first
    business day on or after it).
    """
    now = _aware(now, "now")
    found = _next_step(case, rules, cal, now, now.astimezone(cal.tz).date())
    if found is None:
        return None
    index, step, at = found
    return PlannedStep(step_index=index, step_name=step.name, channel=step.channel, at=at)


def plan_each(
    cases: Iterable[Case], rules: Rules, cal: BusinessCalendar, now: datetime
) -> list[tuple[Case, PlannedStep]]:
    """Each case that has a next step, with it (`plan_next` of each, in order): what the
    idle timer and the status line read, for every open case at each pass."""
    now = _aware(now, "now")
    today = now.astimezone(cal.tz).date()
    planned = []
    for case in cases:
        found = _next_step(case, rules, cal, now, today)
        if found is not None:
            index, step, at = found
            planned.append((case, PlannedStep(step_index=index, step_name=step.name,
                                              channel=step.channel, at=at)))
    return planned


def plan_span(
    cases: Iterable[Case], cal: BusinessCalendar, now: datetime
) -> tuple[datetime, datetime]:
    """[start, end): the instants around `now` at which `plan_each` of these same cases
    gives the same plans, so a plan made at `now` may be reused anywhere in it.

    A plan reads the clock in two places only: the local date (a courtesy step is
    skipped once its due date is past), and whether a pause's end has come. So the span
    is `now`'s local day, cut at the pause ends on either side of `now`.
    """
    now = _aware(now, "now")
    local = now.astimezone(cal.tz)
    start = datetime.combine(local.date(), time(0), tzinfo=cal.tz)
    end = datetime.combine(local.date() + timedelta(days=1), time(0), tzinfo=cal.tz)
    for case in cases:
        if case.state == CaseState.PAUSED and case.paused_until is not None:
            until = _aware(case.paused_until, "paused_until")
            if until <= now:
                start = max(start, until)
            else:
                end = min(end, until)
    return start, end


def due_decisions(
    cases: Iterable[Case], rules: Rules, cal: BusinessCalendar, now: datetime
) -> list[Decision]:
    """The steps to carry out at `now`, one at most per case, in the order of `cases`.

    A step is due when its planned instant has come and `now` is inside the send window:
    a run at 14:00 sends nothing, the next morning's window does. Only the next step of a
    case is ever due, so an invoice found long overdue gets its first reminder, and the
    following one waits the minimum gap after it. The tone is the client profile's when
    it sets one, else the step's.
    """
    if not cal.in_window(now):
        return []
    today = now.astimezone(cal.tz).date()
    decisions: list[Decision] = []
    for case in cases:
        found = _next_step(case, rules, cal, now, today)
        if found is None:
            continue
        index, step, at = found
        if at > now:
            continue
        profile = rules.profile_for(case.client_addrs)
        decisions.append(
            Decision(
                number=case.number,
                step_index=index,
                step_name=step.name,
                channel=step.channel,
                template=step.template,
                tone=_tone(step, profile),
                planned_at=at,
            )
        )
    return decisions


# Outcomes of a step that mean the client (probably) received a mail.
_MAILED = frozenset({"sent", "unknown"})


def client_key(case: Case) -> str:
    """Which client a case belongs to, for the per-client gap and for grouping."""
    return min(case.client_addrs, default=case.number).lower()


def contact_window(rules: Rules) -> timedelta:
    """How far back a mail to a client can still hold its next reminder (`min_gap`, in
    business days, bounded generously in calendar days: weekends, a fortnight of
    holidays)."""
    return timedelta(days=2 * rules.min_gap.days + 14)


def with_client_contacts(cases: Iterable[Case]) -> list[Case]:
    """The cases, each open one with `last_contact_at` raised to the firm's latest mail to
    the same client about any invoice, closed ones included: the minimum gap protects a
    client, not an invoice, so a client with three open invoices never gets three
    reminders in one week. A closed case is passed as it is: nothing is scheduled for it,
    and copying each of years of them cost a restart more than its whole budget."""
    cases = list(cases)
    latest: dict[str, datetime] = {}
    for case in cases:
        contacts = [s.at for s in case.steps if s.outcome in _MAILED]
        if case.last_contact_at is not None:
            contacts.append(case.last_contact_at)
        if contacts:
            key = client_key(case)
            newest = max(contacts)
            if key not in latest or newest > latest[key]:
                latest[key] = newest
    out = []
    for case in cases:
        if case.state in OPEN_STATES:
            newest = latest.get(client_key(case))
            if newest is not None and (case.last_contact_at is None
                                       or newest > case.last_contact_at):
                case = case.with_last_contact(newest)
        out.append(case)
    return out


def _next_step(
    case: Case, rules: Rules, cal: BusinessCalendar, now: datetime, today: date
) -> tuple[int, Step, datetime] | None:
    """(1-based index, step, planned instant) of the next step, shared by plan_next and
    due_decisions so that what `status` shows is exactly what gets sent. `now` is aware
    (checked by the caller, once for all the cases) and `today` is its date in cal.tz."""
    if not _chased_at(case, now):
        return None
    if case.due_date is None or case.amount is None:
        return None
    profile = rules.profile_for(case.client_addrs)
    if profile is not None and profile.never_chase:
        return None

    not_before = _not_before(case, rules, cal)
    if case.instalments:
        return _next_instalment(case, rules, cal, not_before)
    steps = rules.steps_for(case.client_addrs)
    for index in range(case.last_step + 1, len(steps) + 1):
        step = steps[index - 1]
        day = cal.add(case.due_date, step.offset)
        if not_before is not None:
            day = max(day, not_before)
        at = cal.next_window_start(day)
        if step.offset.days < 0 and (today > case.due_date or at.date() > case.due_date):
            # A courtesy notice ("due in 5 days") makes no sense once the due date is
            # past, nor if the gap or holidays would push it past the due date.
            continue
        return index, step, at
    return None


INSTALMENT_STEP_BASE = 1000  # step k of a plan is recorded as index 1000 + k


def current_instalment(case: Case) -> tuple[int, date, Decimal] | None:
    """(k, date, amount owed by then) of the first instalment not yet covered by what was
    paid or credited, k counting from 1; None when the plan is paid."""
    covered = case.paid + case.credited
    cumulative = Decimal(0)
    for k, (day, amount) in enumerate(case.instalments, start=1):
        cumulative += amount
        if cumulative > covered:
            return k, day, cumulative - covered
    return None


def step_for(rules: Rules, case: Case, index: int) -> Step:
    """The step recorded under `index` for this case: a calendar step, or an instalment's
    reminder (index INSTALMENT_STEP_BASE + k)."""
    if index > INSTALMENT_STEP_BASE:
        return Step(name=f"instalment-{index - INSTALMENT_STEP_BASE}",
                    offset=rules.instalment_reminder, template="instalment", tone="friendly")
    return rules.steps_for(case.client_addrs)[index - 1]


def _next_instalment(
    case: Case, rules: Rules, cal: BusinessCalendar, not_before: date | None
) -> tuple[int, Step, datetime] | None:
    """One reminder per instalment not paid on time; nothing more until it is paid."""
    current = current_instalment(case)
    if current is None:
        return None
    k, day, _owed = current
    index = INSTALMENT_STEP_BASE + k
    if case.last_step >= index:
        return None  # reminded once already: the owner is told by the digest
    step = step_for(rules, case, index)
    earliest = cal.add(day, rules.instalment_reminder)
    if not_before is not None:
        earliest = max(earliest, not_before)
    return index, step, cal.next_window_start(earliest)


def _chased_at(case: Case, now: datetime) -> bool:
    """CHASING cases, and PAUSED ones whose pause has an end that has come."""
    if case.state == CaseState.CHASING:
        return True
    return (
        case.state == CaseState.PAUSED
        and case.paused_until is not None
        and _aware(case.paused_until, "paused_until") <= now
    )


def _not_before(case: Case, rules: Rules, cal: BusinessCalendar) -> date | None:
    """The first day any next step may land on: min_gap after the firm's last mail to
    the client (hand-written or a step) and not before the end of a pause."""
    bounds: list[date] = []
    contacts = [s.at for s in case.steps]
    if case.last_contact_at is not None:
        contacts.append(case.last_contact_at)
    if contacts:
        last = _latest(contacts, "contact").astimezone(cal.tz)
        bounds.append(cal.add(last.date(), rules.min_gap))
    if case.state == CaseState.PAUSED and case.paused_until is not None:
        bounds.append(_aware(case.paused_until, "paused_until").astimezone(cal.tz).date())
    return max(bounds, default=None)


def _tone(step: Step, profile: ClientProfile | None) -> str:
    """A client's tone (warmer for a regular, formal for a new one) wins over the step's,
    except on a formal step: a formal notice stays formal whoever the client is."""
    if profile is not None and profile.tone and step.tone != "formal":
        return profile.tone
    return step.tone


def _latest(instants: list[datetime], what: str) -> datetime:
    """The latest of aware instants, compared as instants (their offsets may differ), and
    checked once rather than each converted: that was half of planning a case."""
    try:
        latest = max(instants)
    except TypeError:  # a naive instant beside aware ones: refuse it by name
        for at in instants:
            _aware(at, what)
        raise
    return _aware(latest, what)


def _aware(at: datetime, what: str) -> datetime:
    """Refuse naive datetimes: their meaning would depend on the machine's time zone."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got {at.isoformat()}")
    return at
