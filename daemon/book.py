"""What one pass works with: the cases of a batch kept in memory, and the notices it owes
the owner."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from relance.core.listen import money_text
from relance.core.thread import same_client
from relance.model import (
    OPEN_STATES,
    Attachment,
    Case,
    CaseState,
    StepRecord,
)
from relance.store.state import Transaction

log = logging.getLogger("relance")


class Book:
    """A transaction seen the way the reading of a batch of messages needs it: cases by
    number, the thread index, each client's open cases. All three come from the store's
    indexes and its memo of decoded cases, kept up to date by every `put_case`, so a
    batch costs what it changes, not a decode of the whole state."""

    def __init__(self, tx: Transaction) -> None:
        self.tx = tx
        self.index: Mapping[str, tuple[str, ...]] = _LiveThreadIndex(tx)

    def cases(self) -> dict[str, Case]:
        return self.tx.cases()

    def get_case(self, number: str) -> Case | None:
        return self.tx.get_case(number)

    def put_case(self, case: Case) -> None:
        self.tx.put_case(case)

    def open_cases_of(self, address: str) -> list[Case]:
        """The open cases of the client writing from `address` (see `same_client`)."""
        found = (self.tx.get_case(n) for n in self.tx.case_numbers_for_address(address))
        return [c for c in found if c is not None
                and c.state in OPEN_STATES and same_client(address, c.client_addrs)]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tx, name)


class _LiveThreadIndex(Mapping[str, tuple[str, ...]]):
    """Message-ID → case numbers of a transaction, always as of now: the transaction
    copies its index on first write, so a reference taken earlier must not be kept."""

    def __init__(self, tx: Transaction) -> None:
        self._tx = tx

    def __getitem__(self, message_id: str) -> tuple[str, ...]:
        return self._tx.thread_index()[message_id]

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._tx.thread_index()

    def __iter__(self) -> Iterator[str]:
        return iter(self._tx.thread_index())

    def __len__(self) -> int:
        return len(self._tx.thread_index())


@dataclass
class Notice:
    """A message for the owner, sent after the state is committed."""

    kind: str
    template: str
    case: Case | None
    extra: dict[str, Any] = field(default_factory=dict)
    attachments: tuple[Attachment, ...] = ()
    in_reply_to: str | None = None  # the owner's own mail, for a confirmation


def describe_case(case: Case) -> str:
    balance = case.balance
    text = case.state.value
    if balance is not None and case.state is not CaseState.PAID:
        text += f", {money_text(balance, case.currency)} still owed"
    if case.paused_until is not None:
        text += f", until {case.paused_until:%Y-%m-%d}"
    return text


def with_thread_id(case: Case, message_id: str) -> Case:
    if not message_id or message_id in case.thread_ids:
        return case
    return dataclasses.replace(case, thread_ids=(*case.thread_ids, message_id))


def record_step(
    case: Case, index: int, name: str, at: datetime, message_id: str, outcome: str
) -> Case:
    record = StepRecord(index=index, name=name, at=at, message_id=message_id, outcome=outcome)
    state, reason = case.state, case.reason
    if state is CaseState.PAUSED and case.paused_until is not None:
        state, reason = CaseState.CHASING, ""  # a timed pause that ran out
    return dataclasses.replace(
        case, steps=(*case.steps, record), state=state, reason=reason,
        paused_until=None if state is CaseState.CHASING else case.paused_until,
        thread_ids=(*case.thread_ids, message_id) if message_id not in case.thread_ids
        else case.thread_ids,
    )

