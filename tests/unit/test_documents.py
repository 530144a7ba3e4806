"""Reading PDF and XML attachments: text, Factur-X / UBL facts, and notes instead of crashes.

The builders at the top make every PDF in memory (fpdf2, factur-x, pypdf); test_extract
imports them too.
"""

from __future__ import annotations

import io
import sys
import time
import tracemalloc
from datetime import date
from decimal import Decimal
from pathlib import Path

import facturx
import pytest
from fpdf import FPDF
from hypothesis import given, settings
from hypothesis import strategies as st
from pypdf import PdfReader, PdfWriter

from relance.core.documents import (
    MAX_PAGES,
    MAX_PDF_BYTES,
    MAX_STREAM_BYTES,
    Document,
    is_pdf,
    parse_invoice_xml,
    read_document,
    read_pdf,
    read_xml,
)
from relance.model import Attachment

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the corpus's hostile-PDF builders
    sys.path.insert(0, str(ROOT))
from tests.corpus.pdfs import flate_bomb_pdf, scanned_pdf, xml_bomb_facturx  # noqa: E402

# ------------------------------------------------------------------------------ builders


def make_pdf(*pages: str) -> bytes:
    """A plain PDF, one page per string (core fonts: latin-1 only, so 'EUR' not '€')."""
    pdf = FPDF()
    pdf.set_font("helvetica", size=11)
    for text in pages or ("",):
        pdf.add_page()
        pdf.multi_cell(0, 6, text)
    return bytes(pdf.output())


def cii_xml(
    number: str = "F-2026-0042",
    type_code: str = "380",
    grand_total: str = "1200.00",
    due_payable: str = "1200.00",
    currency: str = "EUR",
    issued: str = "20261115",
    due: str | None = "20261215",
    terms: str = "Paiement à 30 jours",
    buyer: str = "Boulangerie Martin",
) -> bytes:
    """A minimal Factur-X BASIC WL invoice, valid against the XSD."""
    due_block = (
        f'<ram:DueDateDateTime><udt:DateTimeString format="102">{due}</udt:DateTimeString>'
        "</ram:DueDateDateTime>"
        if due
        else ""
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<rsm:CrossIndustryInvoice
  xmlns:rsm="urn:un:unece:uncefact:data:standard:CrossIndustryInvoice:100"
  xmlns:ram="urn:un:unece:uncefact:data:standard:ReusableAggregateBusinessInformationEntity:100"
  xmlns:udt="urn:un:unece:uncefact:data:standard:UnqualifiedDataType:100"
  xmlns:qdt="urn:un:unece:uncefact:data:standard:QualifiedDataType:100">
  <rsm:ExchangedDocumentContext>
    <ram:GuidelineSpecifiedDocumentContextParameter>
      <ram:ID>urn:factur-x.eu:1p0:basicwl</ram:ID>
    </ram:GuidelineSpecifiedDocumentContextParameter>
  </rsm:ExchangedDocumentContext>
  <rsm:ExchangedDocument>
    <ram:ID>{number}</ram:ID>
    <ram:TypeCode>{type_code}</ram:TypeCode>
    <ram:IssueDateTime>
      <udt:DateTimeString format="102">{issued}</udt:DateTimeString>
    </ram:IssueDateTime>
  </rsm:ExchangedDocument>
  <rsm:SupplyChainTradeTransaction>
    <ram:ApplicableHeaderTradeAgreement>
      <ram:SellerTradeParty>
        <ram:Name>Atelier Dupont</ram:Name>
        <ram:PostalTradeAddress><ram:CountryID>FR</ram:CountryID></ram:PostalTradeAddress>
        <ram:SpecifiedTaxRegistration>
          <ram:ID schemeID="VA">FR32123456789</ram:ID>
        </ram:SpecifiedTaxRegistration>
      </ram:SellerTradeParty>
      <ram:BuyerTradeParty><ram:Name>{buyer}</ram:Name></ram:BuyerTradeParty>
    </ram:ApplicableHeaderTradeAgreement>
    <ram:ApplicableHeaderTradeDelivery/>
    <ram:ApplicableHeaderTradeSettlement>
      <ram:InvoiceCurrencyCode>{currency}</ram:InvoiceCurrencyCode>
      <ram:ApplicableTradeTax>
        <ram:CalculatedAmount>200.00</ram:CalculatedAmount>
        <ram:TypeCode>VAT</ram:TypeCode>
        <ram:BasisAmount>1000.00</ram:BasisAmount>
        <ram:CategoryCode>S</ram:CategoryCode>
        <ram:RateApplicablePercent>20.00</ram:RateApplicablePercent>
      </ram:ApplicableTradeTax>
      <ram:SpecifiedTradePaymentTerms>
        <ram:Description>{terms}</ram:Description>
        {due_block}
      </ram:SpecifiedTradePaymentTerms>
      <ram:SpecifiedTradeSettlementHeaderMonetarySummation>
        <ram:LineTotalAmount>1000.00</ram:LineTotalAmount>
        <ram:TaxBasisTotalAmount>1000.00</ram:TaxBasisTotalAmount>
        <ram:TaxTotalAmount currencyID="{currency}">200.00</ram:TaxTotalAmount>
        <ram:GrandTotalAmount>{grand_total}</ram:GrandTotalAmount>
        <ram:DuePayableAmount>{due_payable}</ram:DuePayableAmount>
      </ram:SpecifiedTradeSettlementHeaderMonetarySummation>
    </ram:ApplicableHeaderTradeSettlement>
  </rsm:SupplyChainTradeTransaction>
</rsm:CrossIndustryInvoice>
""".encode()


def ubl_xml(number: str = "INV-77", credit_note: bool = False) -> bytes:
    """A small UBL 2.1 invoice or credit note, as some invoicing tools attach alone."""
    root = "CreditNote" if credit_note else "Invoice"
    type_tag = "CreditNoteTypeCode" if credit_note else "InvoiceTypeCode"
    type_code = "381" if credit_note else "380"
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<{root} xmlns="urn:oasis:names:specification:ubl:schema:xsd:{root}-2"
  xmlns:cac="urn:oasis:names:specification:ubl:schema:xsd:CommonAggregateComponents-2"
  xmlns:cbc="urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2">
  <cbc:CustomizationID>urn:cen.eu:en16931:2017</cbc:CustomizationID>
  <cbc:ID>{number}</cbc:ID>
  <cbc:IssueDate>2026-11-15</cbc:IssueDate>
  <cbc:DueDate>2026-12-15</cbc:DueDate>
  <cbc:{type_tag}>{type_code}</cbc:{type_tag}>
  <cbc:DocumentCurrencyCode>EUR</cbc:DocumentCurrencyCode>
  <cac:AccountingCustomerParty><cac:Party><cac:PartyLegalEntity>
    <cbc:RegistrationName>Client SA</cbc:RegistrationName>
  </cac:PartyLegalEntity></cac:Party></cac:AccountingCustomerParty>
  <cac:PaymentTerms><cbc:Note>Net 30</cbc:Note></cac:PaymentTerms>
  <cac:LegalMonetaryTotal>
    <cbc:TaxInclusiveAmount currencyID="EUR">600.00</cbc:TaxInclusiveAmount>
    <cbc:PayableAmount currencyID="EUR">600.00</cbc:PayableAmount>
  </cac:LegalMonetaryTotal>
</{root}>
""".encode()


def make_facturx_pdf(xml: bytes, *pages: str) -> bytes:
    """A Factur-X PDF the way invoicing software makes one (XSD-checked by factur-x)."""
    return bytes(facturx.generate_from_binary(make_pdf(*pages), xml))


def attach_file(pdf: bytes, name: str, content: bytes) -> bytes:
    """Embed a file with pypdf: how a non-conforming tool might ship its XML."""
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf)))
    writer.add_attachment(name, content)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def encrypt(pdf: bytes, user_password: str) -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf)))
    writer.encrypt(user_password=user_password, owner_password="owner", algorithm="AES-256")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


# ------------------------------------------------------------------------------ PDF text


def test_pdf_text_is_read() -> None:
    document = read_pdf(make_pdf("FACTURE N° F-2026-0042\nTotal TTC : 1 200,00 EUR"), "f.pdf")
    assert "F-2026-0042" in document.text
    assert "1 200,00 EUR" in document.text
    assert document.xml is None
    assert document.notes == ()


def test_pdf_pages_beyond_the_cap_are_not_read() -> None:
    pages = [f"page {index}" for index in range(MAX_PAGES + 5)]
    document = read_pdf(make_pdf(*pages), "long.pdf")
    assert f"page {MAX_PAGES - 1}" in document.text
    assert f"page {MAX_PAGES}" not in document.text
    assert any("first 20" in note for note in document.notes)


def test_pdf_encrypted_with_a_password_gives_a_note() -> None:
    document = read_pdf(encrypt(make_pdf("FACTURE N° F-1"), "secret"), "locked.pdf")
    assert document.text == ""
    assert document.notes == ("locked.pdf: encrypted PDF, cannot read it",)


def test_pdf_encrypted_with_an_empty_user_password_is_read() -> None:
    document = read_pdf(encrypt(make_pdf("FACTURE N° F-2026-0042"), ""), "restricted.pdf")
    assert "F-2026-0042" in document.text
    assert document.notes == ()


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"%PDF-1.4 garbage", id="garbage"),
        pytest.param(b"not a pdf at all", id="not-pdf"),
        pytest.param(make_pdf("FACTURE N° F-1")[:300], id="truncated"),
        pytest.param(b"%PDF-1.7\n" + b"\x00\xff" * 500 + b"\n%%EOF", id="binary-noise"),
    ],
)
def test_corrupt_pdf_gives_a_note_not_an_exception(data: bytes) -> None:
    document = read_pdf(data, "broken.pdf")
    assert document.text == ""
    assert len(document.notes) == 1
    assert document.notes[0].startswith("broken.pdf: unreadable PDF")


def test_pdf_over_twenty_megabytes_is_skipped() -> None:
    document = read_pdf(b"%PDF-1.4\n" + b"0" * MAX_PDF_BYTES, "huge.pdf")
    assert document.notes == ("huge.pdf: PDF larger than 20 MB, not read",)


def test_pdf_without_text_says_it_may_be_a_scan() -> None:
    document = read_pdf(scanned_pdf(2, 2_000), "scan.pdf")
    assert document.text.strip() == ""
    assert document.notes == (
        "scan.pdf: no text in the PDF (a scan?); its facts must come from the mail",
    )


def _bounded(data: bytes, name: str) -> tuple[Document, float, int]:
    tracemalloc.start()
    started = time.perf_counter()
    try:
        document = read_pdf(data, name)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return document, time.perf_counter() - started, peak


def test_a_stream_that_inflates_past_the_limit_costs_a_note_not_the_memory() -> None:
    document, seconds, peak = _bounded(flate_bomb_pdf(64 * 1024 * 1024), "bomb.pdf")
    assert document.notes
    assert seconds < 2
    assert peak < 2 * MAX_STREAM_BYTES + 16 * 1024 * 1024


def test_an_embedded_xml_bomb_keeps_the_pdf_text() -> None:
    pdf = xml_bomb_facturx(make_pdf("FACTURE N° F-2026-0042\nTotal TTC : 10,00 EUR"),
                           64 * 1024 * 1024)
    document, seconds, peak = _bounded(pdf, "f.pdf")
    assert "F-2026-0042" in document.text
    assert document.xml is None
    assert document.notes[0].startswith("f.pdf/factur-x.xml: embedded XML unreadable")
    assert seconds < 2
    assert peak < 2 * MAX_STREAM_BYTES + 16 * 1024 * 1024


# ------------------------------------------------------------------------------ Factur-X


def test_facturx_pdf_gives_the_xml_facts() -> None:
    document = read_pdf(make_facturx_pdf(cii_xml(), "FACTURE N° F-2026-0042"), "f.pdf")
    xml = document.xml
    assert xml is not None
    assert (xml.number, xml.kind, xml.amount, xml.currency) == (
        "F-2026-0042",
        "invoice",
        Decimal("1200.00"),
        "EUR",
    )
    assert (xml.issue_date, xml.due_date) == (date(2026, 11, 15), date(2026, 12, 15))
    assert xml.terms_text == "Paiement à 30 jours"
    assert xml.client_name == "Boulangerie Martin"
    assert xml.flavor == "factur-x"
    assert "F-2026-0042" in document.text


@pytest.mark.parametrize(
    ("type_code", "kind"),
    [("380", "invoice"), ("381", "credit_note"), ("384", "invoice"), ("396", "credit_note")],
)
def test_facturx_type_code_gives_the_kind(type_code: str, kind: str) -> None:
    xml, note = parse_invoice_xml(cii_xml(type_code=type_code))
    assert xml is not None and xml.kind == kind
    assert note == ""


def test_facturx_preceding_invoice_is_read() -> None:
    xml = cii_xml(number="AV-9", type_code="381").replace(
        b"</ram:SpecifiedTradeSettlementHeaderMonetarySummation>",
        b"</ram:SpecifiedTradeSettlementHeaderMonetarySummation>"
        b"<ram:InvoiceReferencedDocument><ram:IssuerAssignedID>F-2026-0042"
        b"</ram:IssuerAssignedID></ram:InvoiceReferencedDocument>",
    )
    facts, note = parse_invoice_xml(xml)
    assert facts is not None and note == ""
    assert (facts.kind, facts.refers_to) == ("credit_note", ("F-2026-0042",))


def test_facturx_amount_due_wins_over_grand_total() -> None:
    xml, _ = parse_invoice_xml(cii_xml(grand_total="1200.00", due_payable="900.00"))
    assert xml is not None and xml.amount == Decimal("900.00")


def test_facturx_pro_forma_is_not_an_invoice() -> None:
    xml, note = parse_invoice_xml(cii_xml(type_code="325"), "pf.xml")
    assert xml is None
    assert "pro forma" in note


def test_xml_embedded_by_pypdf_is_found() -> None:
    document = read_pdf(attach_file(make_pdf("FACTURE"), "factur-x.xml", cii_xml()), "f.pdf")
    assert document.xml is not None and document.xml.number == "F-2026-0042"


def test_xml_with_another_name_is_found() -> None:
    pdf = attach_file(make_pdf("INVOICE"), "invoice-data.xml", ubl_xml("INV-9"))
    document = read_pdf(pdf, "f.pdf")
    assert document.xml is not None and document.xml.number == "INV-9"


def test_broken_embedded_xml_gives_a_note_and_keeps_the_text() -> None:
    pdf = attach_file(make_pdf("FACTURE N° F-7"), "factur-x.xml", b"<rsm:Cross")
    document = read_pdf(pdf, "f.pdf")
    assert document.xml is None
    assert "F-7" in document.text
    assert any("not well-formed XML" in note for note in document.notes)


# ------------------------------------------------------------------------------ standalone XML


def test_standalone_ubl_invoice() -> None:
    document = read_xml(ubl_xml(), "INV-77.xml")
    xml = document.xml
    assert xml is not None
    assert (xml.number, xml.kind, xml.amount) == ("INV-77", "invoice", Decimal("600.00"))
    assert (xml.issue_date, xml.due_date) == (date(2026, 11, 15), date(2026, 12, 15))
    assert xml.client_name == "Client SA"
    assert xml.terms_text == "Net 30"


def test_standalone_ubl_credit_note() -> None:
    xml = read_xml(ubl_xml("CN-3", credit_note=True)).xml
    assert xml is not None and (xml.number, xml.kind) == ("CN-3", "credit_note")


def test_unrelated_xml_is_ignored_quietly() -> None:
    document = read_xml(b"<config><a>1</a></config>", "settings.xml")
    assert (document.xml, document.notes) == (None, ())


def test_malformed_xml_gives_a_note() -> None:
    document = read_xml(b"<Invoice><cbc:ID>", "f.xml")
    assert document.xml is None
    assert document.notes[0].startswith("f.xml: not well-formed XML")


def test_xml_entities_are_not_resolved() -> None:
    hostile = (
        b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        b"<Invoice xmlns='urn:oasis:names:specification:ubl:schema:xsd:Invoice-2'"
        b" xmlns:cbc='urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2'>"
        b"<cbc:ID>&x;</cbc:ID><cbc:DocumentCurrencyCode>EUR</cbc:DocumentCurrencyCode>"
        b"</Invoice>"
    )
    xml, _ = parse_invoice_xml(hostile)
    assert xml is not None
    assert xml.number is None  # the entity stays unexpanded: no file was read


# ------------------------------------------------------------------------------ dispatch


@pytest.mark.parametrize(
    ("filename", "content_type", "data", "expected"),
    [
        ("facture.pdf", "application/pdf", b"", True),
        ("FACTURE.PDF", "application/octet-stream", b"", True),
        ("scan", "application/octet-stream", b"%PDF-1.4\n", True),
        ("facture", "application/pdf; name=facture", b"", True),
        ("logo.png", "image/png", b"\x89PNG", False),
        ("facture.xml", "application/xml", b"<x/>", False),
    ],
)
def test_is_pdf(filename: str, content_type: str, data: bytes, expected: bool) -> None:
    assert is_pdf(Attachment(filename, content_type, data)) is expected


def test_read_document_ignores_images_and_reads_xml() -> None:
    assert read_document(Attachment("logo.png", "image/png", b"\x89PNG")) is None
    document = read_document(Attachment("f.xml", "text/xml", ubl_xml()))
    assert document is not None and document.xml is not None


# ------------------------------------------------------------------------------ robustness

_VALID = make_facturx_pdf(cii_xml(), "FACTURE N° F-2026-0042")


@settings(max_examples=150, deadline=None)
@given(
    cuts=st.lists(
        st.tuples(st.integers(0, len(_VALID) - 1), st.binary(min_size=1, max_size=8)),
        min_size=1,
        max_size=6,
    )
)
def test_damaged_pdf_never_raises(cuts: list[tuple[int, bytes]]) -> None:
    data = bytearray(_VALID)
    for position, junk in cuts:
        data[position : position + len(junk)] = junk
    document = read_pdf(bytes(data), "damaged.pdf")
    assert isinstance(document.text, str)


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=3000))
def test_random_bytes_never_raise(data: bytes) -> None:
    read_pdf(data, "random.pdf")
    read_xml(data, "random.xml")
