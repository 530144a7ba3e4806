"""The sync's header FETCH, read by relance's own parser, against a real Dovecot: the
same headers and sizes as imapclient's general parser gives for the same command, on
mail that strains it (8-bit headers, none of the fields, folded lines, big headers), and
with another client changing flags between the SEARCH and the FETCH."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from relance.config import ServerConfig
from relance.mailbox.imap import HEADER_ITEM, Mailbox
from tests.mailservers import Dovecot, MailUser, MakeUser

pytestmark = pytest.mark.dovecot

MESSAGES = [
    b"From: Client <client@example.test>\r\nTo: compta@atelier.test\r\n"
    b"Subject: Facture F-1\r\nMessage-ID: <a@example.test>\r\n\r\nBonjour\r\n",
    # 8-bit UTF-8 and cp1252 in headers
    "From: Société Générale <sg@example.test>\r\nSubject: Réglé ✓\r\n\r\nok\r\n".encode(),
    b"From: Caf\xe9 <cafe@example.test>\r\nSubject: Re\xe7u\r\n\r\nok\r\n",
    # none of the fields relance reads
    b"X-Other: 1\r\nX-More: 2\r\n\r\nbody\r\n",
    # folded references and a long header block
    b"From: a@example.test\r\nReferences: <r1@example.test>\r\n <r2@example.test>\r\n\t<r3@x>\r\n"
    + b"".join(b"Authentication-Results: mx.example.test; dkim=pass header.d=x%d\r\n" % n
               for n in range(200))
    + b"Subject: many results\r\n\r\nbody\r\n",
    # a literal closing brace and parentheses inside values
    b"From: \"Brace } (x)\" <b@example.test>\r\nSubject: (UID 99) RFC822.SIZE 1 {5}\r\n\r\nb\r\n",
]


def imapclient_reading(response: dict[int, dict[bytes, Any]]) -> dict[int, tuple[bytes, int]]:
    """The same answer as imapclient's general parser reads it: the reference."""
    found: dict[int, tuple[bytes, int]] = {}
    for uid, data in response.items():
        header = next((v for k, v in data.items() if k.startswith(b"BODY[HEADER")), b"")
        found[uid] = (header or b"", int(data.get(b"RFC822.SIZE", 0)))
    return found


@pytest.fixture
def user(dovecot: Dovecot, make_user: MakeUser) -> MailUser:
    user = make_user("firm")
    with dovecot.imap_client(user) as imap:
        for raw in MESSAGES:
            imap.append("INBOX", raw)
    return user


@pytest.fixture
def mailbox(dovecot: Dovecot, user: MailUser) -> Iterator[Mailbox]:
    server = ServerConfig(host=dovecot.host, port=dovecot.imap_port, security="none",
                          username=user.address, password=user.password, timeout=10)
    with Mailbox(server) as mailbox:
        yield mailbox


def test_own_parser_reads_what_imapclient_reads(mailbox: Mailbox) -> None:
    mailbox.select("INBOX", readonly=True)
    uids = mailbox.uids_after(0)
    assert len(uids) == len(MESSAGES)
    ours = mailbox.imap.fetch_header_fields(uids)
    theirs = imapclient_reading(mailbox.imap.fetch(uids, [HEADER_ITEM, b"RFC822.SIZE"]))
    assert ours == theirs
    assert all(size > 0 for _header, size in ours.values())
    assert ours[uids[0]][0].startswith(b"From: Client <client@example.test>")
    assert ours[uids[3]][0].strip() == b""  # none of the fields: an empty block
    assert [f.uid for f in mailbox.fetch_headers(uids)] == uids


def test_flag_changes_by_another_client_are_not_read_as_messages(
    dovecot: Dovecot, user: MailUser, mailbox: Mailbox,
) -> None:
    mailbox.select("INBOX", readonly=True)
    uids = mailbox.uids_after(0)
    with dovecot.imap_client(user) as other:
        other.select_folder("INBOX")
        other.add_flags(uids, [b"\\Seen"])  # unsolicited FETCH (FLAGS) for our session
    found = mailbox.imap.fetch_header_fields(uids[:2])
    assert sorted(found) == uids[:2]
    assert [f.uid for f in mailbox.fetch_headers(uids)] == uids
