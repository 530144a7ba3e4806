"""Which case a message belongs to: by its thread headers, else by invoice number.

Pure: the caller passes the open cases. Threading headers are trusted first because a
client's mail program keeps them; the invoice number in the subject or body is the
fallback, accepted only from an address or domain the case already knows.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta

from relance.model import Case, Mail


def thread_index(cases: Iterable[Case]) -> dict[str, tuple[str, ...]]:
    """Message-ID → case numbers, for every message known in every case's thread, our
    reminders included (one reminder may list several invoices of a client, so one id may
    lead to several)."""
    index: dict[str, tuple[str, ...]] = {}
    for case in cases:
        steps = (step.message_id for step in case.steps)
        for message_id in dict.fromkeys((case.root_message_id, *case.thread_ids, *steps)):
            if not message_id:
                continue
            known = index.get(message_id, ())
            if case.number not in known:
                index[message_id] = (*known, case.number)
    return index


# Addresses there belong to people, not firms: a shared domain says nothing.
_PUBLIC_DOMAINS = frozenset({
    "gmail.com", "googlemail.com", "yahoo.com", "yahoo.fr", "hotmail.com", "hotmail.fr",
    "outlook.com", "outlook.fr", "live.com", "live.fr", "msn.com", "icloud.com", "me.com",
    "orange.fr", "wanadoo.fr", "free.fr", "sfr.fr", "neuf.fr", "laposte.net", "bbox.fr",
    "gmx.fr", "gmx.com", "gmx.de", "proton.me", "protonmail.com", "aol.com", "numericable.fr",
})


def same_client(address: str, client_addrs: Iterable[str]) -> bool:
    """The sender is one of the client's addresses, or writes from the client firm's own
    domain (never a public mail provider's)."""
    domain = address.rpartition("@")[2]
    for known in client_addrs:
        if known == address:
            return True
        if domain not in _PUBLIC_DOMAINS and known.rpartition("@")[2] == domain:
            return True
    return False


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower()


def known_numbers_in(text: str, known_numbers: Iterable[str]) -> list[str]:
    """Which of the given invoice numbers a text names, whole (not inside a longer token).

    A plain search, not a pattern per number: a first read asks this for thousands of
    different numbers, and compiling each one thrashed `re`'s cache.
    """
    folded = text.casefold()
    return [number for number in known_numbers
            if number and _names_whole(folded, number.casefold())]


def _names_whole(text: str, token: str) -> bool:
    """Whether `token` stands in `text` with no word character or dash glued to it."""
    start = text.find(token)
    while start >= 0:
        end = start + len(token)
        before = text[start - 1] if start else " "
        after = text[end] if end < len(text) else " "
        if not (before.isalnum() or before in "_-") and not (after.isalnum() or after in "_-"):
            return True
        start = text.find(token, start + 1)
    return False


# A client's clock, or the invoice's own date, may be a day off the mail's Date header.
ANSWER_SLACK = timedelta(days=1)


def answerable(cases: Iterable[Case], mail: Mail) -> list[Case]:
    """The cases a message could be an answer to: those whose invoice was issued no later
    than the message was written. A client's mail of two years ago is about no invoice
    sent this spring, and reading it as an answer would pause one. Without a date, all."""
    written = mail.date
    if written is None:
        return list(cases)
    day = (written + ANSWER_SLACK).date()
    return [case for case in cases if case.issue_date is None or case.issue_date <= day]


def cases_for(
    mail: Mail, cases: Iterable[Case], index: dict[str, tuple[str, ...]]
) -> list[str]:
    """Numbers of the cases a message is about; empty when it is about none."""
    for message_id in (mail.in_reply_to, *reversed(mail.references)):
        if message_id and message_id in index:
            return list(index[message_id])
    known = [case for case in cases if same_client(mail.from_addr, case.client_addrs)]
    return known_numbers_in(f"{mail.subject}\n{mail.text}", [c.number for c in known])
