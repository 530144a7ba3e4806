"""Which case a message belongs to: by its thread headers, else by invoice number.

Pure: the caller passes the open cases. Threading headers are trusted first because a
client's mail program keeps them; the invoice number in the subject or body is the
fallback, accepted only from an address or domain the case already knows.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from relance.model import Case, Mail


def thread_index(cases: Iterable[Case]) -> dict[str, tuple[str, ...]]:
    """Message-ID → case numbers, for every message known in every case's thread (one
    reminder may list several invoices of a client, so one id may lead to several)."""
    index: dict[str, tuple[str, ...]] = {}
    for case in cases:
        for message_id in (case.root_message_id, *case.thread_ids):
            known = index.get(message_id, ())
            if case.number not in known:
                index[message_id] = (*known, case.number)
    return index


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower()


def _names_number(number: str, text: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(number)}(?![\w-])", text, re.IGNORECASE) is not None


def cases_for(
    mail: Mail, cases: Iterable[Case], index: dict[str, tuple[str, ...]]
) -> list[str]:
    """Numbers of the cases a message is about; empty when it is about none."""
    for message_id in (mail.in_reply_to, *reversed(mail.references)):
        if message_id and message_id in index:
            return list(index[message_id])
    sender_domain = _domain(mail.from_addr)
    known = [
        case
        for case in cases
        if mail.from_addr in case.client_addrs
        or sender_domain in {_domain(a) for a in case.client_addrs}
    ]
    named = [c.number for c in known if _names_number(c.number, f"{mail.subject}\n{mail.text}")]
    return named
