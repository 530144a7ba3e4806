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


def _names_number(number: str, text: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(number)}(?![\w-])", text, re.IGNORECASE) is not None


def cases_for(
    mail: Mail, cases: Iterable[Case], index: dict[str, tuple[str, ...]]
) -> list[str]:
    """Numbers of the cases a message is about; empty when it is about none."""
    for message_id in (mail.in_reply_to, *reversed(mail.references)):
        if message_id and message_id in index:
            return list(index[message_id])
    known = [case for case in cases if same_client(mail.from_addr, case.client_addrs)]
    named = [c.number for c in known if _names_number(c.number, f"{mail.subject}\n{mail.text}")]
    return named
