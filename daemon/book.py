"""What one pass works with: the cases of a batch kept in memory, and the notices it owes
the owner."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from relance.core.listen import money_text
from relance.core.thread import same_client, thread_index
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
    """A transaction with the cases, the thread index and each client's open cases kept in
    memory, so that reading a batch of messages costs one decode of the state, not one per
    message. Every change goes through `put_case`, which keeps the three in step."""

    def __init__(self, tx: Transaction) -> None:
        self.tx = tx
        self._cases = tx.cases()
        self.index = thread_index(self._cases.values())
        self._by_address: dict[str, list[str]] | None = None

    def cases(self) -> dict[str, Case]:
        return self._cases

    def get_case(self, number: str) -> Case | None:
        return self._cases.get(number)

    def put_case(self, case: Case) -> None:
        self.tx.put_case(case)
        old = self._cases.get(case.number)
        self._cases[case.number] = case
        for message_id in (case.root_message_id, *case.thread_ids):
            known = self.index.get(message_id, ())
            if case.number not in known:
                self.index[message_id] = (*known, case.number)
        if old is None or old.client_addrs != case.client_addrs:
            self._by_address = None

    def open_cases_of(self, address: str) -> list[Case]:
        """The open cases of the client writing from `address` (see `same_client`)."""
        if self._by_address is None:
            by_address: dict[str, list[str]] = {}
            for case in self._cases.values():
                for known in case.client_addrs:
                    by_address.setdefault(known, []).append(case.number)
                    by_address.setdefault("@" + known.rpartition("@")[2], []).append(case.number)
            self._by_address = by_address
        numbers = dict.fromkeys(
            self._by_address.get(address, [])
            + self._by_address.get("@" + address.rpartition("@")[2], [])
        )
        found = (self._cases[n] for n in numbers)
        return [c for c in found
                if c.state in OPEN_STATES and same_client(address, c.client_addrs)]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tx, name)


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

