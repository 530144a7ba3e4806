"""Raw RFC 5322 bytes into `Mail` values the core decides over.

Two depths, because a mailbox holds years of mail and most of it is noise: headers only
(stdlib, cheap, used for every message during sync), and the full message (mail-parser:
text body and attachments, used only for candidates). Never raises on bad input: a
message that cannot be parsed at all gives `ParseFailure` with a reason.
"""

from __future__ import annotations

import base64
import binascii
import email.errors
import email.parser
import email.policy
import email.utils
import re
from datetime import UTC, datetime
from html.parser import HTMLParser

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
MAX_HEADER_BYTES = 64 * 1024  # the stdlib parsers still used are quadratic on some inputs
_MSGID = re.compile(r"<[^<>\s]+>")


class ParseFailure(Exception):
    """A message that could not be read at all; the sync logs it and goes on."""


# -- reading the header block ----------------------------------------------------------
# This runs for every message of the mailbox (100k in the benchmark), so it reads only the
# fields above, and decodes RFC 2047 words only where a value has "=?". The splitting
# follows the stdlib's feedparser: lines end in CRLF, CR or LF; a line starting with
# blanks continues the previous field; the block ends at the first line that is not a
# field; "From " lines (mbox separators) are skipped.

_LINES = re.compile(rb"\r\n|\r|\n")
_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+")
_WANTED = {h.lower().encode(): h.lower() for h in HEADER_FIELDS}


def _text_of(value: bytes) -> str:
    """Header bytes as text. RFC 6532 allows raw UTF-8; older mailers send latin-1 or
    cp1252 unencoded, so a value that is not valid UTF-8 is read as cp1252 (latin-1 for
    the five bytes cp1252 leaves undefined), one field at a time."""
    if value.isascii():
        return value.decode("ascii")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        return value.decode("cp1252")
    except UnicodeDecodeError:
        return value.decode("latin-1")


def _fields(raw_headers: bytes) -> dict[str, list[str]]:
    """The wanted fields of a header block, lower-case name → values in order, as text."""
    found: dict[str, list[list[bytes]]] = {}
    current: list[bytes] | None = None  # the lines of the field being read, if wanted
    for line in _LINES.split(raw_headers):
        if not line:
            break  # the empty line before the body
        if line[0] in b" \t":
            if current is not None:
                current.append(line)
            continue
        colon = line.find(b":")
        if colon == 0 or line.startswith(b"From "):
            current = None  # an mbox "From " line, or no name: dropped, as the stdlib does
            continue
        name = _WANTED.get(line[:colon].lower()) if colon > 0 else None
        if name is not None:
            current = [line[colon + 1:].lstrip(b" \t")]
            found.setdefault(name, []).append(current)
        elif colon < 0 or not _FIELD_NAME.fullmatch(line, 0, colon):
            break  # not a field: the body starts without an empty line
        else:
            current = None  # a field we do not read
    return {
        name: [_text_of(b"\r\n".join(lines)) for lines in values]
        for name, values in found.items()
    }


# RFC 2047 encoded words, as the stdlib finds them (email.header.ecre).
_ENCODED_WORD = re.compile(r"=\?([^?]*?)\?([qQbB])\?(.*?)\?=")
_QP_ESCAPE = re.compile(rb"=([a-fA-F0-9]{2})")


def _decode(value: str) -> str:
    """A header value as text: RFC 2047 words decoded, folding and CR/LF removed."""
    if "=?" in value:
        value = _decode_words(value)
    return " ".join(value.split())


def _decode_words(value: str) -> str:
    """RFC 2047 decoding with the stdlib's rules (email.header.decode_header, then
    str(make_header(...))): blanks between two encoded words go, adjacent words of one
    charset are joined as bytes before decoding (a character may straddle two words), a
    space separates a decoded word from plain text. Unlike the stdlib, a broken word (bad
    base64, unknown charset) stays as written instead of the whole value, and the plain
    text may hold non-ASCII (8-bit headers mixed with encoded words)."""
    words: list[tuple[str | bytes, str | None]] = []  # (text, None) or (bytes, charset)
    for line in value.splitlines():
        parts = _ENCODED_WORD.split(line)
        for index in range(0, len(parts), 4):
            plain = parts[index].lstrip() if index == 0 else parts[index]
            if plain:
                words.append((plain, None))
            if index + 3 < len(parts):
                charset, encoding, encoded = parts[index + 1: index + 4]
                data = _word_bytes(encoding.lower(), encoded)
                if data is None:
                    words.append((f"=?{charset}?{encoding}?{encoded}?=", None))
                else:  # "utf-8*fr": RFC 2231 adds a language after the charset
                    words.append((data, charset.lower().split("*", 1)[0]))
    # Blanks between two encoded words are not part of the text (RFC 2047 section 6.2).
    kept = [
        word for n, word in enumerate(words)
        if not (
            0 < n < len(words) - 1 and word[1] is None and str(word[0]).isspace()
            and words[n - 1][1] is not None and words[n + 1][1] is not None
        )
    ]
    # Adjacent words of one charset are one byte string (a character may straddle them).
    joined: list[tuple[str | bytes, str | None]] = []
    for word, charset in kept:
        last, last_charset = joined[-1] if joined else (None, None)
        if isinstance(last, bytes) and isinstance(word, bytes) and last_charset == charset:
            joined[-1] = (last + word, charset)
        else:
            joined.append((word, charset))
    # Runs as str(make_header()) sees them: ASCII (plain text, us-ascii words) or decoded.
    runs: list[tuple[str, bool]] = []  # (text, decoded)
    for word, charset in joined:
        decoded = charset is not None and charset not in _ASCII_CHARSETS
        text = _charset_text(word, charset) if isinstance(word, bytes) else word
        if runs and runs[-1][1] == decoded:
            # Decoded words of two charsets touch; plain text from two lines, or plain
            # text next to a us-ascii word, gets a space.
            runs[-1] = (f"{runs[-1][0]}{'' if decoded else ' '}{text}", decoded)
        else:
            runs.append((text, decoded))
    out: list[str] = []
    for index, (text, decoded) in enumerate(runs):
        if index:
            # A space between decoded and plain text, unless the plain side has one.
            edge = runs[index - 1][0][-1:] if decoded else text[:1]
            if not _blank_edge(edge):
                out.append(" ")
        out.append(text)
    return "".join(out)


_ASCII_CHARSETS = frozenset({"us-ascii", "ascii"})


def _blank_edge(char: str) -> bool:
    return char.isspace() or char in ("(", ")", "\\")


def _word_bytes(encoding: str, encoded: str) -> bytes | None:
    """The bytes of one encoded word, or None when they cannot be read."""
    try:
        data = encoded.encode("ascii")
    except UnicodeEncodeError:
        return None
    if encoding == "q":
        return _QP_ESCAPE.sub(lambda m: bytes((int(m.group(1), 16),)), data.replace(b"_", b" "))
    data += b"==="[: (4 - len(data) % 4) % 4]  # Postel's law: add missing padding
    try:
        return binascii.a2b_base64(data)
    except binascii.Error:
        return None


def _charset_text(data: bytes, charset: str | None) -> str:
    try:
        return data.decode(charset or "ascii", "replace")
    except LookupError:  # an unknown or made-up charset name: read it like 8-bit text
        return _text_of(data)


_BARE_ADDRESS = re.compile(r"[\w.+'-]+@[\w-]+(?:\.[\w-]+)+")
# The common shapes, read without the stdlib's address parser (the costly part of a
# header): "local@domain" alone, or one display name then "<local@domain>". The name is
# either quoted (no quote or backslash inside) or words free of RFC 5322 specials (encoded
# words are such words); anything else takes the full parser. Same results as
# email.utils.getaddresses for these shapes.
_SIMPLE_ADDRESS = re.compile(
    r"""[ \t]*(?:
        (?P<bare>[A-Za-z0-9_+'-]+(?:\.[A-Za-z0-9_+'-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)
      | (?:"(?P<quoted>[^"\\\r\n]*)"|(?P<plain>[^()<>@,:;."\[\]\\\r\n]*?))[ \t]*
        <(?P<addr>[A-Za-z0-9_+'-]+(?:\.[A-Za-z0-9_+'-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>
    )[ \t]*""",
    re.VERBOSE,
)


def _getaddresses(unfolded: list[str]) -> list[tuple[str, str]]:
    """email.utils.getaddresses, with a fast path for a header holding one plain address."""
    if len(unfolded) == 1:
        match = _SIMPLE_ADDRESS.fullmatch(unfolded[0])
        if match is not None:
            if match["bare"] is not None:
                return [("", match["bare"])]
            if match["quoted"] is not None:
                return [(match["quoted"], match["addr"])]
            return [(" ".join(match["plain"].split()), match["addr"])]
    return email.utils.getaddresses(unfolded)


def _pairs(values: list[str]) -> list[tuple[str, str]]:
    """(name, address) pairs; the stdlib parser recurses once per nested comment, so a
    hostile header falls back to bare addresses instead of a RecursionError."""
    # Addresses are read from the header as sent, and only then are the display names
    # decoded: an encoded name must never smuggle in an address ("=?utf-8?q?=3Cboss@firm=3E?=").
    if not values:
        return []
    unfolded = [" ".join(v.split()) for v in values]
    try:
        pairs = _getaddresses(unfolded)
    except RecursionError:
        return [("", a) for v in unfolded for a in _BARE_ADDRESS.findall(v)]
    if any("@" in address for _, address in pairs):
        return [(_decode(name), address) for name, address in pairs]
    # No address at all as sent: a mailer that encoded the whole header; read it decoded.
    try:
        return _getaddresses([_decode(v) for v in values])
    except RecursionError:
        return []


def _names(pairs: list[tuple[str, str]]) -> dict[str, str]:
    return {a.strip().lower(): n.strip() for n, a in pairs if "@" in a and n.strip()}


def _addresses(pairs: list[tuple[str, str]]) -> tuple[str, ...]:
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
    fields = _fields(raw_headers[:MAX_HEADER_BYTES])

    def first(name: str) -> str:
        values = fields.get(name)
        return _decode(values[0]) if values else ""

    from_pairs = _pairs(fields.get("from", [""])[:1])
    from_name, from_addr = from_pairs[0] if from_pairs else ("", "")
    to_values, cc_values = fields.get("to", []), fields.get("cc", [])
    to_pairs, cc_pairs = _pairs(to_values), _pairs(cc_values)
    # Names are read from To and Cc as one list (as ever): parsed once more only when
    # both are there, which few messages have.
    name_pairs = _pairs(to_values + cc_values) if to_values and cc_values else to_pairs or cc_pairs
    in_reply_to = _message_ids(first("in-reply-to"))
    message_id = _message_ids(first("message-id"))
    headers = {
        # One line per occurrence: Authentication-Results may come several times.
        name: "\n".join(_decode(v) for v in values)
        for name, values in fields.items()
        if name in _KEPT
    }
    return Mail(
        message_id=message_id[0] if message_id else "",
        subject=first("subject"),
        from_addr=from_addr.strip().lower(),
        from_name=from_name.strip(),
        to_addrs=_addresses(to_pairs),
        cc_addrs=_addresses(cc_pairs),
        date=_date(first("date")),
        in_reply_to=in_reply_to[0] if in_reply_to else None,
        references=_message_ids(first("references")),
        headers=headers,
        folder=folder,
        uid=uid,
        names=_names(name_pairs),
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
    import mailparser  # lazy (~8 MB): the sync reads headers only, most passes need no body

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
