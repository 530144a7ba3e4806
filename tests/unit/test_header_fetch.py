"""relance's reader of the sync's header FETCH answer, on the shapes imaplib hands it."""

from __future__ import annotations

from relance.mailbox.imap import parse_header_fetch

ITEM = b"BODY[HEADER.FIELDS (MESSAGE-ID FROM SUBJECT)]"


def test_literal_then_closing_text_in_either_order() -> None:
    data = [
        (b"1 (UID 7 RFC822.SIZE 120 " + ITEM + b" {9}", b"From: a\r\n"),
        b")",
        (b"2 (UID 8 " + ITEM + b" {9}", b"From: b\r\n"),
        b" RFC822.SIZE 340)",  # the server chose to send the size after the header
    ]
    assert parse_header_fetch(data) == {7: (b"From: a\r\n", 120), 8: (b"From: b\r\n", 340)}


def test_header_as_nil_or_empty_string_and_unsolicited_flags() -> None:
    data = [
        b"3 (UID 9 RFC822.SIZE 10 " + ITEM + b" NIL)",
        b'4 (UID 10 RFC822.SIZE 11 ' + ITEM + b' "")',
        b"5 (FLAGS (\\Seen))",  # another client's change: not an answer to our FETCH
        b"6 (UID 12 FLAGS (\\Seen))",
    ]
    assert parse_header_fetch(data) == {9: (b"", 10), 10: (b"", 11)}


def test_numbers_inside_the_header_literal_are_not_read() -> None:
    data = [(b"1 (UID 3 RFC822.SIZE 50 " + ITEM + b" {27}", b"Subject: (UID 99) {5}\r\n\r\n"),
            b")"]
    assert parse_header_fetch(data) == {3: (b"Subject: (UID 99) {5}\r\n\r\n", 50)}
