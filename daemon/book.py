"""What one pass works with besides the state: the notices it owes the owner, and the
small pure changes it makes to a case (a thread id, a step taken)."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from relance.core.listen import money_text
from relance.model import (
    Attachment,
    Case,
    CaseState,
    StepRecord,
)

log = logging.getLogger("relance")


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

