"""Reading invoice attachments from bytes: PDF text, and Factur-X / ZUGFeRD / UBL XML.

Bytes in, values out: no files, no network, no clock. Everything here is bounded and never
raises on bad input, because a client's broken PDF must not stop the daemon: a PDF that is
too big, encrypted or corrupt gives a `Document` with a note instead of an exception. Memory
is bounded too: pypdf inflates no stream beyond `MAX_STREAM_BYTES` while we read (a PDF
"zip bomb" costs a note, not a gigabyte).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from fnmatch import fnmatch
from typing import TYPE_CHECKING, Any

from relance.model import Attachment

if TYPE_CHECKING:
    from lxml import etree
    from pypdf import PdfReader

# pypdf (~23 MB), factur-x (~41 MB: its XSDs and PDF stack) and lxml are imported on the
# first attachment that needs them: most mailboxes hold far more mail than invoices, and
# the daemon's resident memory should not pay for a reader it may never use.

MAX_PDF_BYTES = 20 * 1024 * 1024  # invoices are small; bigger is a scan or an attack
MAX_PAGES = 20  # the facts are on the first pages; the rest is annexes
MAX_TEXT_CHARS = 200_000
MAX_XML_BYTES = 5 * 1024 * 1024
MAX_STREAM_BYTES = 16 * 1024 * 1024  # one inflated stream: a page of text is kilobytes

# Embedded names used by the standards, most specific first; any other *.xml comes last.
_EMBEDDED_XML_NAMES = ("factur-x.xml", "zugferd-invoice.xml", "xrechnung.xml", "*.xml")
_INVOICE_FLAVORS = ("factur-x", "ubl-2.1-invoice", "ubl-2.1-creditnote")
_PROFORMA_TYPE_CODE = "325"  # UNTDID 1001: a pro forma is not a claim to chase

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class XmlFacts:
    """What a structured invoice (CII or UBL) says, before it meets the other sources."""

    number: str | None
    kind: str  # "invoice" | "credit_note"
    amount: Decimal | None  # amount due for payment, else grand total (taxes included)
    currency: str | None
    issue_date: date | None
    due_date: date | None
    terms_text: str | None  # BT-20 as written ("Paiement à 30 jours"); parsed by extract
    client_name: str | None
    flavor: str
    refers_to: tuple[str, ...] = ()  # BG-3: the invoice a credit note or correction names


@dataclass(frozen=True)
class Document:
    """One attachment as read: its text, its structured XML if any, and what went wrong."""

    filename: str
    text: str = ""
    xml: XmlFacts | None = None
    notes: tuple[str, ...] = ()


def is_pdf(attachment: Attachment) -> bool:
    """Generous on purpose: mail clients label PDFs octet-stream often enough."""
    return (
        attachment.content_type.lower().startswith("application/pdf")
        or attachment.filename.lower().endswith(".pdf")
        or attachment.data[:1024].lstrip().startswith(b"%PDF-")
    )


def is_xml(attachment: Attachment) -> bool:
    content_type = attachment.content_type.lower()
    return (
        content_type.startswith(("application/xml", "text/xml"))
        or attachment.filename.lower().endswith(".xml")
    )


def read_document(attachment: Attachment) -> Document | None:
    """Read a PDF or a standalone XML invoice; None for any other kind of attachment."""
    if is_pdf(attachment):
        return read_pdf(attachment.data, attachment.filename)
    if is_xml(attachment):
        return read_xml(attachment.data, attachment.filename)
    return None


def read_pdf(data: bytes, filename: str = "") -> Document:
    """Text of the first pages and the embedded invoice XML; a note instead of a crash."""
    name = filename or "attachment.pdf"
    if len(data) > MAX_PDF_BYTES:
        return Document(name, notes=(f"{name}: PDF larger than 20 MB, not read",))
    notes: list[str] = []
    # pypdf raises many exception types on broken files (and RecursionError on loops);
    # one bad attachment must only cost a note.
    from pypdf import PdfReader  # lazy: see the imports above

    try:
        with _bounded_pypdf():
            reader = PdfReader(io.BytesIO(data))
            if reader.is_encrypted and not _decrypt_with_empty_password(reader):
                return Document(name, notes=(f"{name}: encrypted PDF, cannot read it",))
            xml, xml_notes = _embedded_invoice_xml(reader, name)
            notes.extend(xml_notes)
            text = _pdf_text(reader, name, notes)
            pages = len(reader.pages)
    except Exception as exc:  # see above
        return Document(name, notes=(f"{name}: unreadable PDF ({_short(exc)})",))
    if pages > MAX_PAGES:
        notes.append(f"{name}: only the first {MAX_PAGES} of {pages} pages read")
    if not text.strip() and xml is None:
        notes.append(f"{name}: no text in the PDF (a scan?); its facts must come from the mail")
    return Document(name, text=text, xml=xml, notes=tuple(notes))


@contextlib.contextmanager
def _bounded_pypdf() -> Iterator[None]:
    """Tighter pypdf limits for this read only (pypdf >= 7 scopes them to the context)."""
    import pypdf  # lazy: see the imports above

    apply_configuration = getattr(pypdf, "apply_configuration", None)
    if apply_configuration is None:  # older pypdf: its own 75 MB limits still hold
        yield
        return
    with apply_configuration(
        zlib_maximum_output_length=MAX_STREAM_BYTES,
        lzw_maximum_output_length=MAX_STREAM_BYTES,
        run_length_maximum_output_length=MAX_STREAM_BYTES,
        array_based_stream_maximum_output_length=MAX_STREAM_BYTES,
        stream_decoding_work_maximum_length=4 * MAX_STREAM_BYTES,
        image_maximum_buffer_size=MAX_STREAM_BYTES,
    ):
        yield


def read_xml(data: bytes, filename: str = "") -> Document:
    """A standalone UBL or CII invoice, as sent alongside (or instead of) a PDF."""
    name = filename or "attachment.xml"
    xml, note = parse_invoice_xml(data, name)
    return Document(name, xml=xml, notes=(note,) if note else ())


def parse_invoice_xml(data: bytes, name: str = "invoice.xml") -> tuple[XmlFacts | None, str]:
    """Parse CII (Factur-X / ZUGFeRD 2) or UBL 2.1; (None, why) when it is not an invoice."""
    if len(data) > MAX_XML_BYTES:
        return None, f"{name}: XML larger than 5 MB, not read"
    from lxml import etree  # lazy: see the imports above

    try:
        root = etree.fromstring(data, parser=_safe_xml_parser())
    except etree.XMLSyntaxError as exc:
        return None, f"{name}: not well-formed XML ({_short(exc)})"
    import facturx  # lazy: see the imports above

    try:
        flavor = facturx.get_flavor(root)
    except Exception:  # factur-x raises a bare Exception for unknown roots
        return None, ""  # some other XML (an order, a config): not ours to judge
    if flavor not in _INVOICE_FLAVORS:
        return None, f"{name}: {flavor} XML is not supported, falling back to the PDF text"
    try:
        level = facturx.get_level(root, flavor)
    except Exception:  # a missing profile ID must not hide the facts
        level = "extended"  # no field filtering
    try:
        data_dict = facturx.parse_ubl_cii_xml(
            root, flavor=flavor, level=level, check_xsd=False, float_as="string"
        )
    except Exception as exc:  # the parser trusts its input; ours is not
        return None, f"{name}: unreadable {flavor} XML ({_short(exc)})"
    return _xml_facts(data_dict, flavor, name)


def _xml_facts(data_dict: dict[str, Any], flavor: str, name: str) -> tuple[XmlFacts | None, str]:
    import facturx  # lazy: see the imports above

    type_code = str(data_dict.get("BT-3") or "").strip()
    if type_code == _PROFORMA_TYPE_CODE:
        return None, f"{name}: pro forma invoice (type code 325), not a claim"
    if flavor == "ubl-2.1-creditnote" or (
        type_code and facturx.is_credit_note({"BT-3": type_code})
    ):
        kind = "credit_note"
    else:
        kind = "invoice"
    amount = _decimal(data_dict.get("BT-115"))
    if amount is None:
        amount = _decimal(data_dict.get("BT-112"))
    buyer = data_dict.get("BG-7")
    client_name = buyer.get("name") if isinstance(buyer, dict) else None
    number = data_dict.get("BT-1")
    preceding = data_dict.get("BG-3")
    refers_to = tuple(
        reference
        for entry in (preceding if isinstance(preceding, list) else [])
        if isinstance(entry, dict) and (reference := _text(entry.get("BT-25")))
    )
    facts = XmlFacts(
        number=str(number).strip() if number else None,
        kind=kind,
        amount=abs(amount) if amount is not None else None,
        currency=_text(data_dict.get("BT-5")),
        issue_date=_date(data_dict.get("BT-2")),
        due_date=_date(data_dict.get("BT-9")),
        terms_text=_text(data_dict.get("BT-20")),
        client_name=_text(client_name),
        flavor=flavor,
        refers_to=refers_to,
    )
    return facts, ""


def _embedded_invoice_xml(reader: PdfReader, name: str) -> tuple[XmlFacts | None, list[str]]:
    """The first embedded file that is an invoice XML; each file read (and inflated) only
    when its name fits, and a broken one costs a note, not the PDF's text."""
    notes: list[str] = []
    try:
        embedded = list(reader.attachment_list)
    except Exception as exc:  # a broken name tree: read the text anyway
        return None, [f"{name}: embedded files unreadable ({_short(exc)})"]
    for pattern in _EMBEDDED_XML_NAMES:
        for file in embedded:
            embedded_name = file.name or ""
            if not fnmatch(embedded_name.lower(), pattern):
                continue
            label = f"{name}/{embedded_name}"
            try:
                content = file.content
            except Exception as exc:  # a stream that inflates past the limit, or garbage
                note = f"{label}: embedded XML unreadable ({_short(exc)})"
                if note not in notes:
                    notes.append(note)
                continue
            if not content:
                continue
            facts, note = parse_invoice_xml(content, label)
            if facts is not None:
                return facts, notes
            if note and note not in notes:
                notes.append(note)
    return None, notes


def _pdf_text(reader: PdfReader, name: str, notes: list[str]) -> str:
    parts: list[str] = []
    size = 0
    for index, page in enumerate(reader.pages):
        if index >= MAX_PAGES or size >= MAX_TEXT_CHARS:
            break
        try:
            page_text = page.extract_text() or ""
        except Exception as exc:  # one bad page must not lose the others
            notes.append(f"{name}: page {index + 1} unreadable ({_short(exc)})")
            continue
        parts.append(page_text)
        size += len(page_text)
    return "\n".join(parts)[:MAX_TEXT_CHARS]


def _decrypt_with_empty_password(reader: PdfReader) -> bool:
    """Invoicing software often encrypts with an empty user password (print/copy limits)."""
    try:
        return bool(reader.decrypt(""))
    except Exception:  # unsupported algorithm or broken encryption dict
        return False


def _safe_xml_parser() -> etree.XMLParser:
    """No entities, no DTD, no network: attachments come from strangers."""
    from lxml import etree  # lazy: see the imports above

    return etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False
    )


def _decimal(value: object) -> Decimal | None:
    if value is None or value == "":
        return None
    try:
        return Decimal(str(value).strip())
    except InvalidOperation:
        return None


def _date(value: object) -> date | None:
    return value if isinstance(value, date) else None


def _text(value: object) -> str | None:
    return (value.strip() or None) if isinstance(value, str) else None


def _short(exc: BaseException) -> str:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {message[:120]}" if message else type(exc).__name__
