"""Raw RFC 5322 bytes into `Mail` values the core decides over.

Two depths, because a mailbox holds years of mail and most of it is noise: headers only
(stdlib, cheap, used for every message during sync), and the full message (mail-parser:
text body and attachments, used only for candidates). Never raises on bad input: a
message that cannot be parsed at all gives `ParseFailure` with a reason.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import email.errors
import email.parser
import email.policy
import email.utils
import re
from datetime import UTC, datetime
from email.header import decode_header, make_header
from html.parser import HTMLParser

import mailparser

from relance.model import Attachment, Mail

# Every header the daemon ever asks about; the IMAP sync fetches exactly these.
HEADER_FIELDS = (
    "MESSAGE-ID", "IN-REPLY-TO", "REFERENCES", "FROM", "TO", "CC", "SUBJECT", "DATE",
    "CONTENT-TYPE", "AUTO-SUBMITTED", "X-AUTOREPLY", "X-AUTORESPOND", "PRECEDENCE",
    "X-RELANCE-INVOICE", "X-RELANCE-STEP", "X-RELANCE-NOTICE", "RETURN-PATH",
    "X-FAILED-RECIPIENTS", "AUTHENTICATION-RESULTS",
)
_KEPT = frozenset(h.lower() for h in HEADER_FIELDS) - {
    "message-id", "in-reply-to", "references", "from", "to", "cc", "subject", "date"
}
MAX_HEADER_BYTES = 64 * 1024  # the stdlib header parser is quadratic on some inputs
_MSGID = re.compile(r"<[^<>\s]+>")


class ParseFailure(Exception):
    """A message that could not be read at all; the sync logs it and goes on."""


def _decode(value: object) -> str:
    """A header value as text: RFC 2047 words decoded, folding and CR/LF removed."""
    if value is None:
        return ""
    text = str(value)
    with contextlib.suppress(
        UnicodeError, LookupError, ValueError, binascii.Error, email.errors.HeaderParseError
    ):
        text = str(make_header(decode_header(text)))
    return " ".join(text.split())


_BARE_ADDRESS = re.compile(r"[\w.+'-]+@[\w-]+(?:\.[\w-]+)+")


def _pairs(values: list[str]) -> list[tuple[str, str]]:
    """(name, address) pairs; the stdlib parser recurses once per nested comment, so a
    hostile header falls back to bare addresses instead of a RecursionError."""
    # Addresses are read from the header as sent, and only then are the display names
    # decoded: an encoded name must never smuggle in an address ("=?utf-8?q?=3Cboss@firm=3E?=").
    unfolded = [" ".join(str(v).split()) for v in values]
    try:
        pairs = email.utils.getaddresses(unfolded)
    except RecursionError:
        return [("", a) for v in unfolded for a in _BARE_ADDRESS.findall(v)]
    if any("@" in address for _, address in pairs):
        return [(_decode(name), address) for name, address in pairs]
    # No address at all as sent: a mailer that encoded the whole header; read it decoded.
    try:
        return email.utils.getaddresses([_decode(v) for v in values])
    except RecursionError:
        return []


def _names(values: list[str]) -> dict[str, str]:
    pairs = _pairs(values)
    return {a.strip().lower(): n.strip() for n, a in pairs if "@" in a and n.strip()}


def _addresses(values: list[str]) -> tuple[str, ...]:
    pairs = _pairs(values)
    return tuple(dict.fromkeys(a.strip().lower() for _, a in pairs if "@" in a))


def _message_ids(value: str) -> tuple[str, ...]:
    return tuple(_MSGID.findall(value or ""))


def _date(value: str) -> datetime | None:
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def parse_headers(raw_headers: bytes, folder: str = "", uid: int = 0) -> Mail:
    """A `Mail` from a header block (no body); cheap enough for every message."""
    parser = email.parser.BytesHeaderParser(policy=email.policy.compat32)
    msg = parser.parsebytes(raw_headers[:MAX_HEADER_BYTES])
    from_pairs = _pairs([msg.get("From", "")])
    from_name, from_addr = from_pairs[0] if from_pairs else ("", "")
    in_reply_to = _message_ids(_decode(msg.get("In-Reply-To", "")))
    message_id = _message_ids(_decode(msg.get("Message-ID", "")))
    headers = {}
    for name in _KEPT:
        values = msg.get_all(name)
        if values:
            # One line per occurrence: Authentication-Results may come several times.
            headers[name] = "\n".join(_decode(v) for v in values)
    return Mail(
        message_id=message_id[0] if message_id else "",
        subject=_decode(msg.get("Subject", "")),
        from_addr=from_addr.strip().lower(),
        from_name=from_name.strip(),
        to_addrs=_addresses(msg.get_all("To", [])),
        cc_addrs=_addresses(msg.get_all("Cc", [])),
        date=_date(_decode(msg.get("Date", ""))),
        in_reply_to=in_reply_to[0] if in_reply_to else None,
        references=_message_ids(_decode(msg.get("References", ""))),
        headers=headers,
        folder=folder,
        uid=uid,
        names=_names(msg.get_all("To", []) + msg.get_all("Cc", [])),
    )


def header_block(raw: bytes) -> bytes:
    """The header part of a raw message (up to the first empty line)."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        end = raw.find(sep)
        if end >= 0:
            return raw[: end + len(sep)]
    return raw


def parse_message(raw: bytes, folder: str = "", uid: int = 0) -> Mail:
    """A full `Mail`: headers, plain text body (HTML flattened if that is all), attachments."""
    head = parse_headers(header_block(raw), folder, uid)
    try:
        parsed = mailparser.parse_from_bytes(raw)
    except Exception as exc:  # mail-parser raises many kinds on broken MIME
        raise ParseFailure(f"unreadable MIME: {type(exc).__name__}: {exc}") from exc
    text = "\n".join(parsed.text_plain)
    if not text.strip() and parsed.text_html:
        text = html_to_text("\n".join(parsed.text_html))
    attachments = []
    for part in parsed.attachments:
        payload = part.get("payload") or ""
        try:
            data = (
                base64.b64decode(payload)
                if part.get("binary")
                else str(payload).encode(part.get("charset") or "utf-8", "replace")
            )
        except (binascii.Error, LookupError, ValueError):
            continue
        attachments.append(
            Attachment(
                filename=str(part.get("filename") or "attachment"),
                content_type=str(part.get("mail_content_type") or "application/octet-stream"),
                data=data,
            )
        )
    return Mail(
        message_id=head.message_id,
        subject=head.subject,
        from_addr=head.from_addr,
        from_name=head.from_name,
        to_addrs=head.to_addrs,
        cc_addrs=head.cc_addrs,
        date=head.date,
        in_reply_to=head.in_reply_to,
        references=head.references,
        headers=head.headers,
        text=text,
        attachments=tuple(attachments),
        folder=folder,
        uid=uid,
        names=head.names,
    )


class _TextOnly(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        elif tag in ("br", "p", "div", "tr", "li"):
            self.parts.append("\n")
        elif tag in ("td", "th"):
            self.parts.append(" \t")  # cells of a row stay apart: "Montant \t1 250,00 €"

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._skip:
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    """Flatten an HTML-only body so the same text rules read it."""
    parser = _TextOnly()
    parser.feed(html)
    return re.sub(r"\n\s*\n+", "\n\n", "".join(parser.parts)).strip()
