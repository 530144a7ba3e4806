"""The shared vocabulary of relance: plain frozen values that the core decides over.

Adapters turn the outside (IMAP, SMTP, disk) into these values and back; the core never
sees a socket or a file. Money is `Decimal`; instants are timezone-aware `datetime`s.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from functools import cached_property
from typing import Any


class CaseState(StrEnum):
    """Where a case stands; only CHASING cases get reminders."""

    CHASING = "chasing"
    PAUSED = "paused"  # the client answered, or the owner said so
    PAID = "paid"
    STOPPED = "stopped"  # the owner said stop, or never-chase
    NEEDS_FACTS = "needs_facts"  # amount or due date unknown: never chased blank
    BAD_ADDRESS = "bad_address"  # every client address bounced
    FORMAL_NOTICE = "formal_notice"  # handed to the owner as a letter
    DONE = "done"  # the calendar ran out without a letter step


OPEN_STATES = frozenset(
    {CaseState.CHASING, CaseState.PAUSED, CaseState.NEEDS_FACTS, CaseState.BAD_ADDRESS}
)


class Channel(StrEnum):
    """How a calendar step reaches its reader."""

    EMAIL = "email"  # a reminder to the client, threaded on the invoice
    LETTER = "letter"  # a printable letter handed to the owner (formal notice)
    TASK = "task"  # a to-do mailed to the owner ("call the client")


class Mode(StrEnum):
    """What the daemon does with a reminder it decided to send."""

    SEND = "send"
    DRAFT = "draft"
    DRY_RUN = "dry-run"


@dataclass(frozen=True)
class Attachment:
    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True)
class Mail:
    """One message as the core sees it: decoded headers, a text body, attachments.

    Addresses are bare and lower-cased; `headers` holds the other headers the core asks
    about, keyed by lower-cased name (auto-submitted, x-relance-step, content-type...).
    """

    message_id: str
    subject: str
    from_addr: str
    from_name: str = ""
    to_addrs: tuple[str, ...] = ()
    cc_addrs: tuple[str, ...] = ()
    date: datetime | None = None
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    headers: dict[str, str] = field(default_factory=dict)
    text: str = ""
    attachments: tuple[Attachment, ...] = ()
    folder: str = ""
    uid: int = 0
    names: dict[str, str] = field(default_factory=dict)  # address → display name, To/Cc

    @property
    def recipients(self) -> tuple[str, ...]:
        return self.to_addrs + self.cc_addrs


@dataclass(frozen=True)
class InvoiceFacts:
    """What extraction learned about one invoice (or credit note) in a mail.

    A fact that could not be found is None and named in `missing`; the caller keeps such
    an invoice as NEEDS_FACTS instead of chasing it with a blank.
    """

    number: str
    kind: str = "invoice"  # "invoice" | "credit_note"
    amount: Decimal | None = None  # total due, taxes included
    currency: str = "EUR"  # ISO 4217
    issue_date: date | None = None
    due_date: date | None = None
    terms_days: int | None = None  # "à 30 jours"
    terms_end_of_month: bool = False  # "30 jours fin de mois"
    client_name: str | None = None
    source: str = "mail"  # "factur-x" | "pdf" | "mail": the most trusted that gave facts
    missing: tuple[str, ...] = ()
    disagreements: tuple[str, ...] = ()  # "amount: pdf 1200.00 != mail 1100.00"
    refers_to: tuple[str, ...] = ()  # invoices a credit note credits / a correction replaces
    notes: tuple[str, ...] = ()  # for the owner: "facture.pdf: encrypted PDF, cannot read it"


@dataclass(frozen=True)
class StepRecord:
    """A calendar step the daemon carried out (or tried to) for a case."""

    index: int  # 1-based position in the calendar
    name: str
    at: datetime
    message_id: str
    outcome: str  # "sent" | "drafted" | "dry-run" | "handed-over" | "unknown"


@dataclass(frozen=True)
class Case:
    """One invoice being chased, and everything the daemon knows of its thread."""

    number: str
    client_addrs: tuple[str, ...]
    subject: str  # the thread's subject, as the invoice mail had it
    root_message_id: str  # the invoice mail: reminders reply to it
    root_references: tuple[str, ...] = ()
    client_name: str = ""
    amount: Decimal | None = None
    paid: Decimal = Decimal("0")
    credited: Decimal = Decimal("0")  # credit notes (avoirs) applied to this invoice
    credit_notes: tuple[str, ...] = ()  # their numbers: a re-sent one is never applied twice
    currency: str = "EUR"
    issue_date: date | None = None
    due_date: date | None = None
    state: CaseState = CaseState.CHASING
    thread_ids: tuple[str, ...] = ()  # every Message-ID known in the thread
    steps: tuple[StepRecord, ...] = ()
    last_contact_at: datetime | None = None  # last mail from the firm to the client
    paused_until: datetime | None = None  # None while paused means until resumed
    reason: str = ""  # why paused / flagged / stopped, for status and the owner
    invoice_folder: str = ""
    invoice_uid: int = 0
    language: str = "fr"
    opened_at: datetime | None = None
    # An instalment plan the owner agreed ("plan 3x monthly"): (date, amount) each; the
    # calendar then gives way to one reminder per instalment not paid on time.
    instalments: tuple[tuple[date, Decimal], ...] = ()

    @property
    def balance(self) -> Decimal | None:
        return None if self.amount is None else self.amount - self.paid - self.credited

    @property
    def last_step(self) -> int:
        return max((s.index for s in self.steps), default=0)

    @classmethod
    def from_fields(cls, fields: dict[str, Any]) -> Case:
        """`Case(**fields)` without the frozen `__init__`, which sets each of 24 fields
        through `object.__setattr__`: half of decoding a stored case, and a restart
        decodes every open one. For a decoder whose keys are field names already
        converted; the fields it lacks take their defaults, an unknown one is refused.
        A stored case names every field: that one comparison is the whole check (the
        two set differences of the general one were a third of a decode)."""
        case = object.__new__(cls)
        if fields.keys() != _CASE_FIELDS:
            unknown = fields.keys() - _CASE_FIELDS
            missing = _CASE_REQUIRED - fields.keys()
            if unknown or missing:
                raise TypeError(
                    f"Case fields: unknown {sorted(unknown)}, missing {sorted(missing)}")
            case.__dict__.update(_CASE_DEFAULTS)
        case.__dict__.update(fields)
        return case

    def with_last_contact(self, at: datetime | None) -> Case:
        """`dataclasses.replace(self, last_contact_at=at)` at a seventh of its cost: the
        same fields, one changed, without running `__init__` again (a Case checks nothing
        there and caches nothing). The per-client gap raises it on every open case of a
        pass in the send window, where replace() of 10k cases took 150 ms."""
        copy = object.__new__(Case)
        fields = copy.__dict__
        fields.update(self.__dict__)
        fields["last_contact_at"] = at
        return copy


def _field_defaults(cls: type) -> tuple[dict[str, Any], frozenset[str]]:
    """A dataclass's default for each field that has one, and the names of those that
    have none (a default factory is called once: the defaults here are immutable)."""
    defaults: dict[str, Any] = {}
    required = set()
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            defaults[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            defaults[f.name] = f.default_factory()
        else:
            required.add(f.name)
    return defaults, frozenset(required)


_CASE_DEFAULTS, _CASE_REQUIRED = _field_defaults(Case)
_CASE_FIELDS = frozenset(_CASE_DEFAULTS) | _CASE_REQUIRED


@dataclass(frozen=True)
class Decision:
    """A calendar step that is due now for a case: a value, so it can be logged,
    shown in dry-run, and replayed."""

    number: str
    step_index: int
    step_name: str
    channel: Channel
    template: str
    tone: str
    planned_at: datetime


@dataclass(frozen=True)
class PlannedStep:
    """The next step of a case and when it will be due (for status and show)."""

    step_index: int
    step_name: str
    channel: Channel
    at: datetime


@dataclass(frozen=True)
class Firm:
    """Who the reminders come from, as the config says (the `[firm]` section)."""

    name: str
    sender: str  # "Atelier Dupont - Comptabilité <compta@example.fr>"
    addresses: tuple[str, ...]  # mail from these is the firm's
    owners: tuple[str, ...] = ()
    iban: str = ""
    payment_link: str = ""  # may hold "{number}"

    @cached_property
    def inside(self) -> frozenset[str]:
        """The firm's own addresses and its owners': any other recipient is a client."""
        return frozenset(self.addresses) | frozenset(self.owners)

    def outsiders(self, addresses: Iterable[str]) -> tuple[str, ...]:
        """Those of `addresses` that are not the firm's: the clients a mail went to."""
        return tuple(a for a in addresses if a not in self.inside)

    @property
    def domain(self) -> str:
        """The domain of the sender address, for Message-IDs the daemon makes."""
        addr = self.sender.rsplit("<", 1)[-1].rstrip(">").strip()
        return addr.rpartition("@")[2] or "relance.invalid"
