"""Hypothesis against the parser, the classifier and the extractor: whatever bytes arrive,
they raise nothing but ParseFailure, and they answer in bounded time.

No mail server: these are the pure functions the sync calls on every message it reads
(`parse_headers`), on candidates (`parse_message`), and on what those return (`classify`,
`extract_invoices`). Inputs are random bytes, messages assembled from hostile parts
(encoded words, 8-bit bytes, CR/LF in odd places, broken MIME, wrong charsets, nested
multiparts), and Mail values with random text and random "PDF" attachments.
"""

from __future__ import annotations

import base64
import time
from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from relance.core.classify import Kind, classify
from relance.core.extract import extract_invoices
from relance.mailbox.parse import ParseFailure, parse_headers, parse_message
from relance.model import Attachment, Firm, Mail
from tests.faults.conftest import FULL
from tests.integration.helpers import invoice_pdf

EXAMPLES = 1500 if FULL else 150
FUZZ = settings(max_examples=EXAMPLES, deadline=timedelta(seconds=2),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FIRM = Firm(name="Atelier", sender="Atelier <compta@firm.test>",
            addresses=("compta@firm.test",), owners=("owner@firm.test",))
PDF = invoice_pdf("F-2026-0042", "1 234,56", date(2026, 4, 7), date(2026, 5, 7))

HEADER_NAMES = ["From", "To", "Cc", "Subject", "Date", "Message-ID", "In-Reply-To",
                "References", "Content-Type", "Content-Transfer-Encoding",
                "Content-Disposition", "Auto-Submitted", "X-Autoreply", "Precedence",
                "Return-Path", "X-Failed-Recipients", "Authentication-Results",
                "X-Relance-Invoice", "X-Relance-Step", "X-Relance-Notice", "MIME-Version"]
CHARSETS = ["utf-8", "iso-8859-1", "us-ascii", "utf-7", "utf-16", "x-unknown", "", "cp1252",
            "iso-2022-jp", "utf-8'fr'"]
ENCODINGS = ["7bit", "8bit", "base64", "quoted-printable", "binary", "x-uuencode", "bogus"]

pieces = st.sampled_from([
    "Facture", "n°", "F-2026-0042", "FAC/2026/12", "1 234,56 €", "EUR", "échéance",
    "30/05/2026", "2026-05-30", "Re:", "TR:", "Fwd:", "Réponse automatique", "Out of Office",
    "Undelivered Mail", "mailer-daemon@x.test", "<a@b>", "<", ">", "\"", "\\", ",", ";",
    ":", "@", "=?utf-8?q?", "?=", "=?utf-8?b?", "=?x-bogus?q?a?=", "=?utf-8?q?=0D=0A?=",
    "=?iso-8859-1?q?=E9?=", "\r\n", "\n", "\r", "\r\n ", "\t", "\x00", "\x1b", "\ufeff",
    "compta@firm.test", "owner@firm.test", "client@client.test", "Bcc: evil@evil.test",
    "multipart/mixed; boundary=", "multipart/report; report-type=delivery-status",
    "text/plain; charset=", "auto-replied", "auto_reply", "no",
])
text = st.lists(st.one_of(pieces, st.text(max_size=20)), max_size=25).map(" ".join)
raw_text = st.one_of(text.map(lambda t: t.encode("utf-8", "surrogatepass")),
                     st.binary(max_size=200))


@st.composite
def header_block(draw: st.DrawFn) -> bytes:
    lines = []
    for _ in range(draw(st.integers(0, 12))):
        name = draw(st.one_of(st.sampled_from(HEADER_NAMES), st.text(min_size=1,
                                                                     max_size=12)))
        value = draw(raw_text)
        sep = draw(st.sampled_from([b": ", b":", b" : ", b":\r\n "]))
        lines.append(name.encode("utf-8", "surrogatepass") + sep + value)
    eol = draw(st.sampled_from([b"\r\n", b"\n", b"\r"]))
    return eol.join(lines) + eol + eol


@st.composite
def mime_part(draw: st.DrawFn, depth: int = 0) -> bytes:
    kind = draw(st.sampled_from(["text", "pdf", "multipart", "junk"] if depth < 6
                                else ["text", "pdf", "junk"]))
    charset = draw(st.sampled_from(CHARSETS))
    cte = draw(st.sampled_from(ENCODINGS))
    if kind == "multipart":
        boundary = draw(st.sampled_from(["b", "==x==", "", "a b", "--", "b" * 80]))
        parts = draw(st.lists(mime_part(depth + 1), max_size=3))
        body = b"".join(b"--" + boundary.encode() + b"\r\n" + p + b"\r\n" for p in parts)
        if draw(st.booleans()):
            body += b"--" + boundary.encode() + b"--\r\n"
        return (f'Content-Type: multipart/{draw(st.sampled_from(["mixed", "alternative"]))}; '
                f'boundary="{boundary}"\r\n\r\n').encode() + body
    if kind == "pdf":
        data = PDF if draw(st.booleans()) else bytes(draw(st.binary(max_size=300)))
        if draw(st.booleans()):
            at = draw(st.integers(0, len(data)))
            data = data[:at] + draw(st.binary(max_size=50)) + data[at + 1:]
        name = draw(st.sampled_from(["F-2026-0042.pdf", "../../x.pdf", "", "a\r\nb.pdf",
                                     "=?utf-8?q?facture=2Epdf?="]))
        payload = base64.encodebytes(data) if cte == "base64" else data
        return (f'Content-Type: application/pdf; name="{name}"\r\n'
                f"Content-Transfer-Encoding: {cte}\r\n\r\n").encode() + payload
    if kind == "junk":
        return draw(st.binary(max_size=300))
    return (f"Content-Type: text/{draw(st.sampled_from(['plain', 'html']))}; "
            f"charset={charset}\r\nContent-Transfer-Encoding: {cte}\r\n\r\n").encode() \
        + draw(raw_text)


messages = st.one_of(
    st.binary(max_size=2000),
    st.builds(lambda h, b: h + b, header_block(), st.binary(max_size=500)),
    st.builds(lambda h, p: h.rstrip(b"\r\n") + b"\r\nMIME-Version: 1.0\r\n" + p,
              header_block(), mime_part()),
)


def bounded(seconds: float):
    started = time.perf_counter()

    def check(what: str) -> None:
        took = time.perf_counter() - started
        assert took < seconds, f"{what} took {took:.2f} s"

    return check


@FUZZ
@given(messages)
def test_parse_headers_never_raises_and_is_quick(raw: bytes) -> None:
    done = bounded(1.0)
    try:
        mail = parse_headers(raw, "INBOX", 1)
    except ParseFailure:
        return
    done("parse_headers")
    assert isinstance(mail, Mail)
    assert "\r" not in mail.subject and "\n" not in mail.subject
    assert all("\n" not in a and "\r" not in a for a in mail.recipients)


@FUZZ
@given(messages)
def test_parse_message_raises_only_parse_failure_and_is_quick(raw: bytes) -> None:
    done = bounded(2.0)
    try:
        mail = parse_message(raw, "INBOX", 1)
    except ParseFailure:
        return
    done("parse_message")
    assert isinstance(mail, Mail)
    assert all(isinstance(a.data, bytes) for a in mail.attachments)


@FUZZ
@given(messages)
def test_classify_and_extract_never_raise_on_whatever_parse_gives(raw: bytes) -> None:
    try:
        mail = parse_message(raw, "Sent", 1)
    except ParseFailure:
        return
    done = bounded(2.0)
    assert classify(mail, FIRM) in set(Kind)
    facts = extract_invoices(mail)
    done("classify + extract_invoices")
    assert all(f.number and "\n" not in f.number for f in facts)


attachments = st.lists(st.builds(
    Attachment,
    filename=st.sampled_from(["F-1.pdf", "facture.PDF", "x.xml", "factur-x.xml", "a.txt", ""]),
    content_type=st.sampled_from(["application/pdf", "application/xml", "text/xml",
                                  "application/octet-stream"]),
    data=st.one_of(st.binary(max_size=500), st.just(PDF),
                   st.builds(lambda cut: PDF[:cut], st.integers(0, len(PDF))),
                   st.just(b"<?xml version='1.0'?><rsm:CrossIndustryInvoice/>"),
                   st.just(b"<!DOCTYPE x [<!ENTITY a 'aaaa'><!ENTITY b '&a;&a;&a;&a;'>]>"
                           b"<x>&b;&b;&b;</x>")),
), max_size=3)

mails = st.builds(
    Mail,
    message_id=st.one_of(st.just(""), text),
    subject=text,
    from_addr=st.sampled_from(["compta@firm.test", "client@client.test", "", "a",
                               "mailer-daemon@x.test", "owner@firm.test"]),
    from_name=text,
    to_addrs=st.lists(st.sampled_from(["client@client.test", "compta@firm.test", "x@y"]),
                      max_size=3).map(tuple),
    date=st.one_of(st.none(), st.datetimes(min_value=datetime(1970, 1, 1),
                                           max_value=datetime(2100, 1, 1),
                                           timezones=st.just(UTC))),
    headers=st.dictionaries(st.sampled_from([h.lower() for h in HEADER_NAMES]), text,
                            max_size=6),
    text=st.one_of(text, st.text(max_size=3000)),
    attachments=attachments.map(tuple),
)


@FUZZ
@given(mails)
def test_classify_and_extract_never_raise_on_any_mail_value(mail: Mail) -> None:
    done = bounded(2.0)
    assert classify(mail, FIRM) in set(Kind)
    facts = extract_invoices(mail)
    done("classify + extract_invoices")
    for fact in facts:
        assert fact.amount is None or fact.amount.is_finite()


# -- the inputs known to hurt stdlib parsers, each with a time bound -------------------------

ADVERSARIAL = {
    "encoded-word flood": b"Subject: " + b"=?utf-8?q?a?= " * 20_000 + b"\r\n\r\nx",
    "unclosed encoded words": b"Subject: " + b"=?utf-8?q?" * 20_000 + b"\r\n\r\nx",
    "address list flood": b"To: " + b"a@b, " * 30_000 + b"\r\n\r\nx",
    "nested comments": b"From: " + b"(" * 20_000 + b"a@b" + b")" * 20_000 + b"\r\n\r\nx",
    "nested angle brackets": b"From: " + b"<" * 30_000 + b"a@b\r\n\r\nx",
    "quoted-string flood": b"From: " + b'"\\' * 30_000 + b"\r\n\r\nx",
    "references flood": b"References: " + b"<a@b> " * 30_000 + b"\r\n\r\nx",
    "one 1 MB header": b"Subject: " + b"x" * 1_000_000 + b"\r\n\r\nx",
    "100k header lines": b"X-A: b\r\n" * 100_000 + b"\r\nx",
    "folded 200 kB": b"Subject: x" + b"\r\n y" * 100_000 + b"\r\n\r\nx",
    "nested 3000 multiparts": b"Content-Type: multipart/mixed; boundary=a\r\n\r\n"
                              + b"--a\r\nContent-Type: multipart/mixed; boundary=a\r\n\r\n"
                              * 3000,
    "parameter flood": b"Content-Type: text/plain" + b"; a=b" * 30_000 + b"\r\n\r\nx",
    "rfc2231 continuation flood": b"Content-Type: application/pdf"
                                  + b"".join(b"; name*%d*=utf-8''x" % i
                                             for i in range(10_000)) + b"\r\n\r\nx",
}


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_adversarial_inputs_parse_classify_and_extract_in_bounded_time(name: str) -> None:
    raw = ADVERSARIAL[name]
    done = bounded(10.0)
    parse_headers(raw, "INBOX", 1)
    done("parse_headers")
    try:
        mail = parse_message(raw, "INBOX", 1)
    except ParseFailure:
        return
    done("parse_message")
    classify(mail, FIRM)
    extract_invoices(mail)
    done("parse, classify, extract")


@given(st.text(alphabet="=?qQbB_-utf8 \r\n", max_size=400))
@FUZZ
def test_encoded_word_soup_in_addresses_never_makes_a_header_line(soup: str) -> None:
    mail = parse_headers(f"From: {soup} <a@b.test>\r\nTo: {soup} <c@d.test>\r\n"
                         f"Subject: {soup}\r\n\r\n".encode())
    assume(mail.from_addr)
    for value in (mail.subject, mail.from_name, mail.from_addr, *mail.recipients,
                  *mail.names.values()):
        assert "\r" not in value and "\n" not in value
