"""`relance rebuild`, the pure part: what the journal says happened to each invoice, and
how that is laid over the cases a re-read of the mailbox found.

Why both sources: the mailbox shows the facts again (the invoice in Sent, its thread, its
client, its amount), but not what was decided about it: which reminders left (a copy in
Sent proves one, a lost copy proves nothing), what the owner typed in a shell, a pause that
was since resumed. The journal holds every decision (it is written before the state
commits) but not a whole case. So the re-read gives each case its facts, and the journal,
folded here, gives back its steps and its decisions, replayed in the order they were made.

The guarantee above all: a step the journal says went out (sent, or unknown: the server
may have it) is a step of the case again, so it is never sent twice; and an owner's
decision is never forgotten. When a decision cannot be replayed, the state it ended in (the
journal records it) is kept and the problem is reported; errors lean towards not sending.

Events folded (each has a test in tests/unit/test_rebuild.py):
- `invoice-found`: when the case opened, and the state it opened in (an old invoice the
  re-read would now call "too old to chase" was being chased);
- `reminder-sent`, `reminder-unknown`, `reminder-drafted`, `reminder-found-in-sent`,
  `send-resolved` (sent/unknown), `handed-over`: steps taken;
  `draft-sent-by-owner`: a drafted step became a sent one;
  `reminder-failed` with a permanent (5xx) reply: the case was paused for the owner;
- `owner-paid|pause|resume|stop|facts|sent-lrar|plan`: typed in a shell (the entry holds
  the resulting state, payment and pause end), mailed (the entry holds the command line,
  replayed as written) or dropped in a folder (the verb);
- `payment-matched` (the amount), `client-replied` and `auto-reply` (a pause),
  `bounce`, `invoice-replaced`, `invoice-resent`, `credit-note-applied`: the state they
  left the case in.
Everything else (notices, would-send, skipped messages, earlier `state-rebuilt`) changes
no case and is passed over.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from relance.book import record_step
from relance.core.commands import CommandRefused
from relance.core.compose import step_of_message_id
from relance.model import Case, CaseState, StepRecord

STEP_EVENTS = {
    "reminder-sent": "sent",
    "reminder-unknown": "unknown",
    "reminder-drafted": "drafted",
    "reminder-found-in-sent": "sent",
    "handed-over": "handed-over",
}
OWNER_VERBS = ("paid", "pause", "resume", "stop", "facts", "sent-lrar", "plan")
STATE_EVENTS = frozenset({
    "payment-matched", "client-replied", "auto-reply", "bounce", "invoice-replaced",
    "invoice-resent", "credit-note-applied",
})
"""Events that change a case's state, whose mail the re-read may see again (news)."""
SEND_OUTCOMES = frozenset({"sent", "unknown"})
"""Outcomes that mean the client may have the mail: such a step is never sent again."""

CommandApplier = Callable[[Case, str, str, datetime], Case]
"""(case, verb, command line as mailed or "" for a folder drop, at) → the case after the
owner's command, as the daemon applies it; raises CommandRefused."""


@dataclass(frozen=True)
class Fact:
    """One journalled thing that changed a case, in the order it happened."""

    at: datetime
    event: str
    line: int  # in the journal, for problems the owner can look up
    step: StepRecord | None = None  # for a step taken
    verb: str = ""  # owner-VERB
    via: str = ""  # shell | folder | the trust of a mailed command
    command_line: str = ""
    state: CaseState | None = None  # the state the entry says the case ended in
    paid: Decimal | None = None  # shell paid: the total paid after it
    amount: Decimal | None = None  # payment-matched: this payment; shell facts: the amount
    due: date | None = None
    paused_until: datetime | None = None
    has_paused_until: bool = False  # shell entries always say (None: until resumed)
    sent_on: date | None = None
    reason: str = ""


@dataclass(frozen=True)
class History:
    """Everything the journal knows of one invoice."""

    number: str
    opened_at: datetime | None = None
    opened_state: CaseState | None = None
    facts: tuple[Fact, ...] = ()

    @property
    def steps(self) -> tuple[Fact, ...]:
        return tuple(f for f in self.facts if f.step is not None)

    @property
    def decisions(self) -> tuple[Fact, ...]:
        return tuple(f for f in self.facts if f.step is None)


@dataclass(frozen=True)
class Folded:
    histories: dict[str, History]
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Restored:
    """One case rebuilt, and what it took."""

    case: Case
    steps_restored: int
    decisions_applied: int
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class SendToRecord:
    """A send record the rebuilt state owes: a reminder that left (or may have)."""

    message_id: str
    numbers: str  # space-separated, as a send intent names a grouped reminder
    step_index: int
    label: str
    status: str  # sent | unknown
    at: datetime


# -- folding the journal -------------------------------------------------------------


def fold_journal(
    entries: Iterable[Mapping[str, Any]], step_names: Mapping[int, str] | None = None,
    journal_name: str = "journal.jsonl",
) -> Folded:
    """Per invoice number, the steps and decisions the journal holds, in order.

    `entries` are `Journal.entries()` (torn lines already skipped there); an entry whose
    fields cannot be read is skipped and named in `problems` as `FILE:LINE: reason`.
    Entries read back in file order, so a number in `line` is counted here.
    """
    names = step_names or {}
    facts: dict[str, list[Fact]] = {}
    opened: dict[str, tuple[datetime, CaseState | None]] = {}
    problems: list[str] = []
    for line, entry in enumerate(entries, start=1):
        lineno = int(entry.get("_line", line))
        number = entry.get("case")
        event = str(entry.get("event", ""))
        if not isinstance(number, str) or not number:
            continue
        try:
            at = _instant(entry.get("at"))
            if at is None:
                raise ValueError("no time")
            if event == "invoice-found":
                opened.setdefault(number, (at, _state(entry.get("state"))))
                continue
            fact = _fact(entry, event, at, lineno, names)
        except (ValueError, TypeError, InvalidOperation) as exc:
            problems.append(f"{journal_name}:{lineno}: {event} of {number}: {exc}; skipped")
            continue
        if fact is not None:
            facts.setdefault(number, []).append(fact)
    histories = {
        number: History(number, opened.get(number, (None, None))[0],
                        opened.get(number, (None, None))[1], tuple(facts.get(number, ())))
        for number in dict.fromkeys([*opened, *facts])
    }
    return Folded(histories, problems)


def _fact(
    entry: Mapping[str, Any], event: str, at: datetime, line: int, names: Mapping[int, str]
) -> Fact | None:
    if event in STEP_EVENTS:
        message_id = str(entry.get("message_id") or "")
        index = entry.get("step")
        index = int(index) if index is not None else step_of_message_id(message_id)
        if index is None:
            raise ValueError("no step index")
        name = str(entry.get("step_name") or names.get(index) or f"step {index}")
        return Fact(at, event, line, step=StepRecord(index, name, at, message_id,
                                                      STEP_EVENTS[event]))
    if event == "send-resolved":
        status = str(entry.get("status") or "")
        message_id = str(entry.get("message_id") or "")
        index = step_of_message_id(message_id)
        if status not in SEND_OUTCOMES:
            return None
        if index is None:
            raise ValueError(f"cannot tell the step of {message_id!r}")
        return Fact(at, event, line, step=StepRecord(
            index, names.get(index, f"step {index}"), at, message_id, status))
    if event == "draft-sent-by-owner":
        return Fact(at, event, line, command_line=str(entry.get("message_id") or ""))
    if event == "reminder-failed":
        reply = str(entry.get("smtp_reply") or "")
        if not reply.startswith("5"):
            return None  # a transient failure changed nothing; the daemon tries again
        return Fact(at, event, line, state=CaseState.PAUSED, has_paused_until=True,
                    reason=f"the mail server refused the reminder: {reply}")
    if event.startswith("owner-") and event[len("owner-"):] in OWNER_VERBS:
        via = str(entry.get("via") or "")
        return Fact(
            at, event, line, verb=event[len("owner-"):], via=via,
            command_line=str(entry.get("line") or ""), state=_state(entry.get("state")),
            paid=_decimal(entry.get("paid")), amount=_decimal(entry.get("amount")),
            due=_date(entry.get("due")), paused_until=_instant(entry.get("paused_until")),
            has_paused_until=via == "shell", sent_on=_date(entry.get("sent_on")),
        )
    if event in STATE_EVENTS:
        return Fact(
            at, event, line, state=_state(entry.get("state")),
            amount=_decimal(entry.get("amount")) if event == "payment-matched" else None,
            paused_until=_instant(entry.get("waits_until")),
            reason=str(entry.get("by") or ""),
        )
    return None


def _instant(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    parsed = datetime.fromisoformat(str(value))
    if parsed.tzinfo is None:
        raise ValueError(f"{value!r} has no UTC offset")
    return parsed


def _date(value: Any) -> date | None:
    return None if value in (None, "") else date.fromisoformat(str(value)[:10])


def _decimal(value: Any) -> Decimal | None:
    return None if value in (None, "") else Decimal(str(value))


def _state(value: Any) -> CaseState | None:
    return None if value in (None, "") else CaseState(str(value))


def news_entries(
    journal: Iterable[Mapping[str, Any]], reread: Iterable[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """What the re-read of the mailbox saw that the journal never did: mail that came
    while the state was broken (a client's answer, a payment). It is kept, after
    everything the journal holds; what the journal already has is not applied twice."""
    known = {_news_key(e) for e in journal}
    return [dict(e) for e in reread
            if (e.get("event") in STATE_EVENTS or _is_mailed_command(e))
            and _news_key(e) not in known]


def _is_mailed_command(entry: Mapping[str, Any]) -> bool:
    event = str(entry.get("event", ""))
    return event.startswith("owner-") and bool(entry.get("line"))


def _news_key(entry: Mapping[str, Any]) -> tuple[Any, ...]:
    event = entry.get("event")
    if event == "payment-matched":
        return (event, entry.get("case"), str(entry.get("amount")), entry.get("payer"))
    if _is_mailed_command(entry):
        return (event, entry.get("case"), entry.get("line"))
    if event in ("client-replied", "auto-reply"):
        # One answer may touch several invoices, and the re-read, which starts with
        # every case open, more than the daemon did: it is news only if unknown.
        return (event, entry.get("message_id"))
    if event == "bounce":
        return (event, entry.get("case"), tuple(entry.get("failed") or ()))
    return (event, entry.get("case"), entry.get("message_id") or entry.get("by"))


def number_lines(
    entries: Iterable[Mapping[str, Any]], skipped_lines: Iterable[int]
) -> list[dict[str, Any]]:
    """Each entry with its line in the file (`_line`), given the lines the read skipped
    (torn or unreadable), so a problem names the line the owner can open."""
    skipped = sorted(skipped_lines)
    numbered, line, position = [], 0, 0
    for entry in entries:
        line += 1
        while position < len(skipped) and skipped[position] <= line:
            if skipped[position] == line:
                line += 1
            position += 1
        numbered.append({**entry, "_line": line})
    return numbered


# -- laying the history over a re-read case ------------------------------------------


def restore_case(
    seen: Case, history: History, apply_command: CommandApplier,
    reply_until: datetime | None = None,
) -> Restored:
    """The case the re-read found, with the journal's steps and decisions replayed.

    What the mailbox cannot show is reset first (state, payments, pause, steps, plan)
    and rebuilt from the journal alone, so nothing the re-read did is counted twice.
    `reply_until` is the end of the pause the client's last answer started, as the
    re-read computed it (the journal does not record it); without it such a pause lasts
    until the owner resumes, which never sends too early.
    """
    case = dataclasses.replace(
        seen, state=history.opened_state or _opened_state(seen), paid=Decimal("0"),
        paused_until=None, reason="" if history.opened_state else seen.reason, steps=(),
        instalments=(), opened_at=history.opened_at or seen.opened_at,
    )
    if case.state is CaseState.CHASING and seen.state is CaseState.CHASING:
        case = dataclasses.replace(case, reason=seen.reason)
    problems: list[str] = []
    steps = decisions = 0
    last_reply = max((i for i, f in enumerate(history.facts) if f.event == "client-replied"),
                     default=-1)
    for position, fact in enumerate(history.facts):
        if fact.step is not None:
            if any(s.index == fact.step.index for s in case.steps):
                continue  # the same step journalled twice (sent, then resolved)
            case = record_step(case, fact.step.index, fact.step.name, fact.step.at,
                               fact.step.message_id, fact.step.outcome)
            if fact.step.outcome == "sent":
                case = _contact(case, fact.step.at)
            steps += 1
            continue
        until = reply_until if position == last_reply else None
        try:
            case, note = _decide(case, fact, apply_command, until)
        except CommandRefused as exc:
            note = f"journal line {fact.line}: {fact.event} of {case.number}: {exc}"
            if fact.state is not None:
                case = _with_state(case, fact.state, fact)
        if note:
            problems.append(note)
        decisions += fact.event != "draft-sent-by-owner"
    return Restored(case, steps, decisions, tuple(problems))


def _opened_state(seen: Case) -> CaseState:
    """The state a case opens in, when the journal lost its `invoice-found` line: what the
    invoice itself decides (never chased, missing facts, too old), else chasing."""
    if seen.state in (CaseState.STOPPED, CaseState.DONE, CaseState.NEEDS_FACTS):
        return seen.state
    return CaseState.CHASING


def _decide(
    case: Case, fact: Fact, apply_command: CommandApplier, reply_until: datetime | None
) -> tuple[Case, str]:
    """One decision replayed; a note when it could only be approximated."""
    if fact.event == "draft-sent-by-owner":
        message_id = fact.command_line
        steps = tuple(dataclasses.replace(s, outcome="sent", at=fact.at)
                      if s.outcome == "drafted" and s.message_id == message_id else s
                      for s in case.steps)
        return _contact(dataclasses.replace(case, steps=steps), fact.at), ""
    if fact.verb:
        if fact.via == "shell":
            return _shell_command(case, fact), ""
        updated = apply_command(case, fact.verb, fact.command_line, fact.at)
        return (updated if fact.state is None else _with_state(updated, fact.state, fact)), ""
    if fact.event == "payment-matched" and fact.amount is not None:
        from relance.core import commands as owner

        updated = owner.paid(case, fact.at, fact.amount)
        return (updated if fact.state is None else _with_state(updated, fact.state, fact)), ""
    if fact.event == "client-replied":
        if fact.state is not CaseState.PAUSED:
            return case, ""
        return dataclasses.replace(
            case, state=CaseState.PAUSED, paused_until=reply_until,
            reason=f"client replied {fact.at:%Y-%m-%d}"), ""
    if fact.event == "auto-reply":
        if case.state is not CaseState.CHASING or fact.paused_until is None:
            return case, ""
        return dataclasses.replace(
            case, state=CaseState.PAUSED, paused_until=fact.paused_until,
            reason=f"out of office until {fact.paused_until:%Y-%m-%d}"), ""
    if fact.event == "invoice-replaced":
        return dataclasses.replace(case, state=CaseState.STOPPED, paused_until=None,
                                   reason=f"replaced by invoice {fact.reason}"), ""
    if fact.state is not None:
        return _with_state(case, fact.state, fact), ""
    return case, ""


def _shell_command(case: Case, fact: Fact) -> Case:
    """A command typed in a shell: its entry holds what it left, so that is restored
    as it was (no rule of today can read the owner's words differently)."""
    changes: dict[str, Any] = {"reason": f"{fact.verb} (owner, {fact.at:%Y-%m-%d})"}
    if fact.state is not None:
        changes["state"] = fact.state
    if fact.paid is not None:
        changes["paid"] = fact.paid
    if fact.has_paused_until:
        changes["paused_until"] = fact.paused_until
    if fact.verb == "facts":
        if fact.amount is not None:
            changes["amount"] = fact.amount
        if fact.due is not None:
            changes["due_date"] = fact.due
    if fact.verb == "sent-lrar" and fact.sent_on is not None:
        changes["reason"] = f"formal notice sent by registered post {fact.sent_on:%Y-%m-%d}"
    if fact.verb == "pause" and fact.paused_until is None:
        changes["reason"] = f"paused by the owner {fact.at:%Y-%m-%d}"
    return dataclasses.replace(case, **changes)


def _with_state(case: Case, state: CaseState, fact: Fact) -> Case:
    """The state the journal says a decision left the case in."""
    if case.state is state and not fact.reason:
        return case
    paused_until = case.paused_until if state is CaseState.PAUSED else None
    if fact.has_paused_until:
        paused_until = fact.paused_until
    reason = fact.reason or (case.reason if state is case.state
                             else f"{fact.event} {fact.at:%Y-%m-%d}")
    return dataclasses.replace(case, state=state, paused_until=paused_until, reason=reason)


def _contact(case: Case, at: datetime) -> Case:
    last = case.last_contact_at
    return case if last is not None and last >= at else dataclasses.replace(
        case, last_contact_at=at)


# -- what the rebuilt state records besides cases ------------------------------------


def sends_to_record(cases: Iterable[Case]) -> list[SendToRecord]:
    """One send record per reminder that left or may have (grouped reminders share one
    Message-ID): with it, the daemon's at-most-once check refuses that Message-ID again
    even if a case's steps were somehow short of it."""
    by_id: dict[str, list[tuple[Case, StepRecord]]] = {}
    for case in cases:
        for step in case.steps:
            if step.outcome in SEND_OUTCOMES and step_of_message_id(step.message_id):
                by_id.setdefault(step.message_id, []).append((case, step))
    records = []
    for message_id, items in by_id.items():
        items.sort(key=lambda item: item[0].number)
        status = "sent" if any(s.outcome == "sent" for _, s in items) else "unknown"
        label = (items[0][1].name if len(items) == 1
                 else " ".join(f"{s.index}:{s.name}" for _, s in items))
        records.append(SendToRecord(message_id, " ".join(c.number for c, _ in items),
                                    items[0][1].index, label, status,
                                    min(s.at for _, s in items)))
    return records


def not_placed(histories: Mapping[str, History], seen: Sequence[str]) -> list[str]:
    """Invoices the journal knows and the mailbox no longer shows: reported, never made
    up (a case needs its invoice mail to be chased in its thread)."""
    found = set(seen)
    return sorted(n for n in histories if n not in found)


__all__ = [
    "Fact", "Folded", "History", "Restored", "SendToRecord", "fold_journal", "news_entries",
    "not_placed", "number_lines", "restore_case", "sends_to_record", "step_of_message_id",
]
