"""The shape of the rule files, as validated values the core decides with.

The loader (`relance.rules.load`) reads `rules/*.yaml` into these models and turns every
validation error into `FILE:LINE:COL: message`. The core only ever sees valid `Rules`.
"""

from __future__ import annotations

import re
from datetime import time
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from relance.model import Channel

_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WEEKDAY_NAMES = {
    d: n
    for d, n in zip(
        _WEEKDAYS,
        ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"),
        strict=True,
    )
}
_OFFSET = re.compile(
    r"^\s*(?P<sign>[+-])?\s*(?P<n>\d+)\s*"
    r"(?P<unit>bd|business days?|jours? ouvrés?|d|days?|w|weeks?|semaines?|jours?|j)\s*$",
    re.IGNORECASE,
)


_END_OF_MONTH = re.compile(r"\s*(end of month|eom|fin de mois|fdm)\s*$", re.IGNORECASE)


class Offset(BaseModel):
    """A distance from the due date: calendar days, or business days."""

    model_config = ConfigDict(frozen=True)

    days: int
    business: bool = False
    end_of_month: bool = False  # payment terms "45 jours fin de mois"

    @classmethod
    def parse(cls, text: str) -> Offset:
        """Read `+5d`, `-5d`, `+2w`, `+3bd`, `+3 business days`, and for payment terms
        `45d end of month` / `45 jours fin de mois`; raise ValueError else."""
        eom = _END_OF_MONTH.search(str(text))
        if eom:
            plain = cls.parse(str(text)[: eom.start()])
            return cls(days=plain.days, business=plain.business, end_of_month=True)
        m = _OFFSET.match(str(text))
        if not m:
            raise ValueError(
                f'offset "{text}" needs a unit: +5d, -5d, +2w, +3 business days'
            )
        n = int(m["n"]) * (-1 if m["sign"] == "-" else 1)
        unit = m["unit"].lower()
        if unit.startswith(("w", "s")):
            return cls(days=7 * n)
        business = unit.startswith(("bd", "business")) or "ouvr" in unit
        return cls(days=n, business=business)


def _offset(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool):
        shown = f"{value:+d}"
        raise ValueError(f'offset {shown} needs a unit: {shown}d, {shown} business days')
    if isinstance(value, str):
        return Offset.parse(value)
    return value


class Step(BaseModel):
    """One step of the chase calendar."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    offset: Offset
    channel: Channel = Channel.EMAIL
    template: str
    tone: str = "neutral"  # friendly | neutral | firm | formal
    attach_previous: bool = False  # attach the earlier reminders (the 3rd reminder does)

    _check_offset = field_validator("offset", mode="before")(_offset)


class DayWindow(BaseModel):
    """One weekday's own hours in the send window."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    start: time
    end: time

    @model_validator(mode="after")
    def _ordered(self) -> DayWindow:
        if self.end <= self.start:
            raise ValueError(f"window end {self.end} must come after start {self.start}")
        return self


class SendWindow(BaseModel):
    """When reminders may leave, in the firm's time zone."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    days: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri")
    start: time = time(8, 30)
    end: time = time(10, 0)
    # A weekday with other hours: `per_day: {fri: {start: "08:30", end: "09:15"}}`.
    per_day: dict[str, DayWindow] = Field(default_factory=dict)

    @field_validator("days")
    @classmethod
    def _known_days(cls, days: tuple[str, ...]) -> tuple[str, ...]:
        out = []
        for day in days:
            key = day.strip().lower()
            if key[:3] not in _WEEKDAYS or not _WEEKDAY_NAMES[key[:3]].startswith(key):
                raise ValueError(
                    f'unknown day "{day}"; expected one of {", ".join(_WEEKDAYS)}'
                )
            out.append(key[:3])
        return tuple(out)

    @model_validator(mode="after")
    def _ordered(self) -> SendWindow:
        if self.end <= self.start:
            raise ValueError(f"window end {self.end} must come after start {self.start}")
        return self

    @property
    def weekdays(self) -> frozenset[int]:
        """Days as `date.weekday()` numbers (Monday is 0)."""
        return frozenset(_WEEKDAYS.index(d) for d in self.days)

    @field_validator("per_day")
    @classmethod
    def _known_per_day(cls, per_day: dict[str, DayWindow]) -> dict[str, DayWindow]:
        out = {}
        for day, window in per_day.items():
            key = day.strip().lower()[:3]
            if key not in _WEEKDAYS:
                raise ValueError(
                    f'unknown day "{day}"; expected one of {", ".join(_WEEKDAYS)}'
                )
            out[key] = window
        return out

    def hours(self, weekday: int) -> tuple[time, time]:
        """(start, end) on a weekday (Monday is 0): its own hours, else the common ones."""
        own = self.per_day.get(_WEEKDAYS[weekday])
        return (own.start, own.end) if own is not None else (self.start, self.end)


class Holidays(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    country: str = "FR"
    subdivision: str | None = None


class ClientProfile(BaseModel):
    """What the firm knows of one client, matched by address or by domain."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    match: tuple[str, ...]  # "ap@client.fr" or "@client.fr" / "client.fr"
    name: str | None = None
    tone: str | None = None  # "warm" for a regular client, "formal" for a new one
    language: str | None = None
    terms: Offset | None = None
    extra_contacts: tuple[str, ...] = ()  # copied from `extra_contacts_from` on
    extra_contacts_from: int = 4  # 1-based step number: reminder-3 by default
    never_chase: bool = False
    steps: tuple[Step, ...] | None = None  # a calendar of its own, replacing the default

    _check_terms = field_validator("terms", mode="before")(_offset)

    def matches(self, address: str) -> bool:
        address = address.lower()
        domain = address.rpartition("@")[2]
        for m in self.match:
            m = m.lower().strip()
            if m == address or m.lstrip("@") == domain:
                return True
        return False


class LatePayment(BaseModel):
    """French late-payment law (art. L441-10 and D441-5 Code de commerce), computed.

    Penalties run from the day after the due date at the ECB's main refinancing rate in
    force (set on 1 January and 1 July) plus `margin` points, prorata temporis; the fixed
    recovery indemnity applies to business clients only.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    ecb_rate: Decimal = Field(default=Decimal("2.15"), ge=0, le=50)
    margin: Decimal = Field(default=Decimal("10"), ge=0, le=50)
    indemnity: Decimal = Field(default=Decimal("40"), ge=0)
    business_clients: bool = True
    show_from_step: int = Field(default=4, ge=1)  # amounts stated from this step on

    @property
    def rate(self) -> Decimal:
        return self.ecb_rate + self.margin


class DigestRule(BaseModel):
    """When the weekly digest reaches the owner."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    day: Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"] = "mon"
    hour: int = Field(default=8, ge=0, le=23)


_AFTER_REPLY = re.compile(r"^\s*pause(?:\s+(?P<offset>.+?))?\s*$", re.IGNORECASE)


def _after_reply(value: object) -> object:
    """`pause` (until the owner resumes) or `pause 14d` (resumes by itself)."""
    m = _AFTER_REPLY.match(str(value))
    if not m:
        raise ValueError(f'"{value}" is not a reply rule; expected "pause" or "pause 14d"')
    if m["offset"]:
        Offset.parse(m["offset"])
    return " ".join(str(value).split()).lower()


class Rules(BaseModel):
    """Everything the rule files say, merged from `rules/*.yaml`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    steps: tuple[Step, ...] = Field(min_length=1)
    send_window: SendWindow = SendWindow()
    holidays: Holidays = Holidays()
    min_gap: Offset = Offset(days=7)
    default_terms: Offset = Offset(days=30)
    language: str = "fr"
    tone: str = "neutral"
    clients: tuple[ClientProfile, ...] = ()
    # An invoice older than this when relance first sees it is recorded, not chased:
    # a first start on a mailbox holding years of mail must not wake up old invoices.
    adopt_max_age: Offset = Offset(days=120)
    # What a client's reply does: "pause" until the owner resumes, or "pause 14d".
    after_reply: str = "pause"
    # An out-of-office: "continue" (it is no answer), or "wait" for the date it states.
    after_auto_reply: Literal["wait", "continue"] = "continue"
    late_payment: LatePayment = LatePayment()
    digest: DigestRule | None = DigestRule()  # null: no weekly digest
    # With an instalment plan: one reminder this long after an instalment not paid.
    instalment_reminder: Offset = Offset(days=3)

    _check_after_reply = field_validator("after_reply", mode="before")(_after_reply)
    _check_instalment = field_validator("instalment_reminder", mode="before")(_offset)

    _check_offsets = field_validator("min_gap", "default_terms", "adopt_max_age", mode="before")(
        _offset
    )

    @property
    def reply_pause(self) -> Offset | None:
        """How long a reply pauses a case; None means until the owner resumes it."""
        m = _AFTER_REPLY.match(self.after_reply)
        return Offset.parse(m["offset"]) if m and m["offset"] else None

    def steps_for(self, addresses: tuple[str, ...]) -> tuple[Step, ...]:
        """The calendar that applies to a client: its own, else the firm's."""
        profile = self.profile_for(addresses)
        if profile is not None and profile.steps:
            return profile.steps
        return self.steps

    def profile_for(self, addresses: tuple[str, ...]) -> ClientProfile | None:
        """The first profile that matches any of the client's addresses."""
        for profile in self.clients:
            if any(profile.matches(a) for a in addresses):
                return profile
        return None
