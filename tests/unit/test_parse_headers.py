"""Header blocks as the sync reads them: 8-bit text, encoded words, folding, hostile input.

`parse_headers` runs for every message of the mailbox, so it has its own reader instead
of the stdlib's; these cases pin what it must read like (the stdlib where that is right)
and what it must never do (turn an encoded name into an address, let CR/LF through).
"""

from __future__ import annotations

import email.utils
from email.header import decode_header, make_header

import pytest

from relance.mailbox.parse import _getaddresses, parse_headers, parse_message


def head(*lines: str, encoding: str = "utf-8") -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode(encoding)


# -- 8-bit headers (RFC 6532 UTF-8, and the latin-1 / cp1252 of older mailers) ----------


def test_a_raw_utf8_subject_and_names_read_as_utf8() -> None:
    mail = parse_headers(head(
        "From: Société Générale <compta@sg.example>",
        "To: Atelier Dupont <compta@atelier.example>, Zoë Müller <zoe@client.example>",
        "Subject: Facture n° F-1 – mai",
    ))
    assert mail.subject == "Facture n° F-1 – mai"
    assert (mail.from_name, mail.from_addr) == ("Société Générale", "compta@sg.example")
    assert mail.to_addrs == ("compta@atelier.example", "zoe@client.example")
    assert mail.names["zoe@client.example"] == "Zoë Müller"


def test_a_latin1_subject_reads_as_latin1() -> None:
    mail = parse_headers(head("Subject: Relevé de compte", "From: René <r@x.example>",
                              encoding="latin-1"))
    assert mail.subject == "Relevé de compte"
    assert mail.from_name == "René"


def test_cp1252_bytes_read_as_cp1252() -> None:
    """0x80 is the euro sign and 0x96 the en dash in cp1252 (control codes in latin-1)."""
    mail = parse_headers(b"Subject: Facture 1200 \x80 \x96 mai\r\n\r\n")
    assert mail.subject == "Facture 1200 € – mai"


def test_each_header_falls_back_on_its_own() -> None:
    """One mailer wrote the subject in UTF-8, a relay added a latin-1 name."""
    raw = ("Subject: Facture n° F-1\r\n".encode() +
           "To: Hélène <h@client.example>\r\n\r\n".encode("latin-1"))
    mail = parse_headers(raw)
    assert mail.subject == "Facture n° F-1"
    assert mail.names == {"h@client.example": "Hélène"}


def test_bytes_undefined_in_cp1252_still_give_text() -> None:
    mail = parse_headers(b"Subject: a\x81b\xe9\r\n\r\n")
    assert mail.subject == "a\x81bé"


def test_a_full_message_gets_the_same_8bit_headers() -> None:
    raw = head(
        "From: Société Générale <compta@sg.example>",
        "To: Zoë <zoe@client.example>",
        "Subject: Facture n° F-1 – mai",
        "Message-ID: <m1@sg.example>",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
    ) + "Ci-joint la facture n° F-1.\r\n".encode()
    mail = parse_message(raw)
    assert mail.subject == "Facture n° F-1 – mai"
    assert mail.from_name == "Société Générale"
    assert mail.names == {"zoe@client.example": "Zoë"}
    assert "n° F-1" in mail.text


# -- RFC 2047 encoded words --------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("=?utf-8?q?Facture_n=C2=B0_F-1?=", "Facture n° F-1"),
        ("=?UTF-8?B?RmFjdHVyZSBuwrAgRi0x?=", "Facture n° F-1"),
        ("Re: =?utf-8?q?Facture_n=C2=B0?= F-1", "Re: Facture n° F-1"),
        ("Re:=?utf-8?q?Facture?=F-1", "Re: Facture F-1"),
        # blanks (even a fold) between two encoded words are not text (RFC 2047 6.2)
        ("=?utf-8?q?Soci=C3=A9t=C3=A9?= =?utf-8?q?_G=C3=A9n=C3=A9rale?=", "Société Générale"),
        ("=?utf-8?q?Soci=C3=A9t=C3=A9?=\r\n =?utf-8?q?_G=C3=A9n=C3=A9rale?=", "Société Générale"),
        # a character split across two words of one charset
        ("=?utf-8?q?Soci=C3?= =?utf-8?q?=A9t=C3=A9?=", "Société"),
        # two charsets side by side
        ("=?iso-8859-1?q?caf=E9?= =?utf-8?q?_cr=C3=A8me?=", "café crème"),
        ("(=?utf-8?q?note?=) x", "(note) x"),
        ("=?us-ascii?q?plain?= text", "plain text"),
        ("no words here =? nor ?= there", "no words here =? nor ?= there"),
    ],
)
def test_encoded_words_decode_as_the_stdlib_does(value: str, expected: str) -> None:
    mail = parse_headers(head(f"Subject: {value}"))
    assert mail.subject == expected
    assert mail.subject == " ".join(str(make_header(decode_header(value))).split())


def test_8bit_text_mixed_with_encoded_words() -> None:
    """The stdlib gives up on the whole value here (its plain parts must be ASCII)."""
    mail = parse_headers(head("Subject: Facture n° =?utf-8?q?F-1_=E2=80=93?= mai"))
    assert mail.subject == "Facture n° F-1 – mai"


def test_a_broken_word_stays_as_written_and_the_others_decode() -> None:
    mail = parse_headers(head("Subject: =?utf-8?b?UmU6I?= =?utf-8?q?n=C2=B0?= F-1"))
    assert mail.subject.startswith("=?utf-8?b?UmU6I?=")
    assert mail.subject.endswith("n° F-1")


def test_an_unknown_charset_is_read_like_8bit_text() -> None:
    mail = parse_headers(head("Subject: =?x-unknown?q?Relev=C3=A9?=",
                              "X-Relance-Invoice: =?utf-8*fr?q?F-=C3=A91?="))
    assert mail.subject == "Relevé"
    assert mail.headers["x-relance-invoice"] == "F-é1"


def test_encoded_cr_lf_never_reach_a_value() -> None:
    mail = parse_headers(head(
        "Subject: =?utf-8?q?Facture=0D=0ABcc=3A_evil=40evil=2Etest?=",
        "X-Relance-Invoice: =?utf-8?q?F-1=0D=0AX-Injected=3A_1?=",
        "From: =?utf-8?q?Compta=0D=0A?= <c@firm.example>",
    ))
    for value in (mail.subject, mail.headers["x-relance-invoice"], mail.from_name):
        assert "\r" not in value and "\n" not in value
    assert mail.subject == "Facture Bcc: evil@evil.test"


# -- folding and the shape of the block ------------------------------------------------


def test_folded_headers_unfold() -> None:
    mail = parse_headers(head(
        "Subject: Facture n° F-1",
        "\tdu 3 mai",
        "To: Un <un@client.example>,",
        "  Deux <deux@client.example>",
        "References: <a@x.example>",
        " <b@x.example>\t<c@x.example>",
    ))
    assert mail.subject == "Facture n° F-1 du 3 mai"
    assert mail.to_addrs == ("un@client.example", "deux@client.example")
    assert mail.references == ("<a@x.example>", "<b@x.example>", "<c@x.example>")


@pytest.mark.parametrize("newline", ["\r\n", "\n", "\r"])
def test_any_line_end_splits_fields(newline: str) -> None:
    raw = newline.join(["Subject: un", " deux", "FROM: A <a@x.example>", "", "Body: no"])
    mail = parse_headers(raw.encode())
    assert (mail.subject, mail.from_addr) == ("un deux", "a@x.example")
    assert "body" not in mail.headers


def test_the_block_ends_at_the_first_line_that_is_no_field() -> None:
    mail = parse_headers(b"From x@y Mon Jan  1 00:00:00 2024\r\nSubject: kept\r\n"
                         b"this is body text\r\nPrecedence: bulk\r\n\r\n")
    assert mail.subject == "kept"
    assert "precedence" not in mail.headers


def test_every_occurrence_of_a_kept_field_is_one_line() -> None:
    mail = parse_headers(head("Authentication-Results: mx1; dkim=pass",
                              "Authentication-Results: mx2;",
                              " spf=pass"))
    assert mail.headers["authentication-results"] == "mx1; dkim=pass\nmx2; spf=pass"


# -- addresses -------------------------------------------------------------------------


def test_an_address_hidden_in_an_encoded_display_name_is_never_an_address() -> None:
    mail = parse_headers(head(
        "From: =?utf-8?q?Compta_=3Ccompta=40firm=2Etest=3E?= <attacker@evil.test>",
        "To: =?utf-8?q?Evil=0D=0ABcc=3A_evil=40evil=2Etest=0D=0A?= <client@client.test>",
        "Cc: \"boss@firm.test\" <other@client.test>",
    ))
    assert mail.from_addr == "attacker@evil.test"
    assert mail.from_name == "Compta <compta@firm.test>"
    assert mail.to_addrs == ("client@client.test",)
    assert mail.cc_addrs == ("other@client.test",)
    assert "evil@evil.test" not in mail.names and "compta@firm.test" not in mail.names


def test_an_address_hidden_in_an_8bit_display_name_is_never_an_address() -> None:
    mail = parse_headers(head('From: "Société <compta@firm.test>" <attacker@evil.test>'))
    assert (mail.from_addr, mail.from_name) == ("attacker@evil.test",
                                                "Société <compta@firm.test>")


def test_a_header_encoded_whole_is_read_decoded() -> None:
    """Some mailers encode "Name <addr>" as one word: no address as sent, so decoded."""
    mail = parse_headers(head(
        "From: =?utf-8?q?Atelier_Dupont_-_Comptabilit=C3=A9_=3Ccompta=40atelier=2Eexample?=",
        " =?utf-8?q?=3E?=",
    ))
    assert (mail.from_name, mail.from_addr) == ("Atelier Dupont - Comptabilité",
                                                "compta@atelier.example")


def test_nested_comments_fall_back_to_bare_addresses() -> None:
    mail = parse_headers(head("To: " + "(" * 3000 + "a@client.example" + ")" * 3000))
    assert mail.to_addrs == ("a@client.example",)


@pytest.mark.parametrize(
    "value",
    [
        "a@b.example",
        "  a.b+c@d-e.example  ",
        "Client 001 SARL <contact@client001.example>",
        "Jean   Dupont\t<j@x.example>",
        '"Dupont, Jean" <j@x.example>',
        '""<j@x.example>',
        "<j@x.example>",
        "O'Brien & Co <ob@x.example>",
        "=?utf-8?q?Soci=C3=A9t=C3=A9?= G <s@x.example>",
        "Société <s@x.example>",
        "J. Doe <j@x.example>",
        "a@b.example (a comment)",
        '"quoted \\" name" <q@x.example>',
        "Un <un@x.example>, Deux <deux@x.example>",
        "undisclosed-recipients:;",
        "not an address",
    ],
)
def test_the_fast_address_reader_agrees_with_the_stdlib(value: str) -> None:
    unfolded = " ".join(value.split())
    assert _getaddresses([unfolded]) == email.utils.getaddresses([unfolded])
