"""Invoice PDFs for the corpus, made the way small firms' tools make them, byte-for-byte
reproducible: fpdf2 with a fixed creation date, Factur-X via the factur-x package with its
clock pinned, hostile files written by hand.

Amounts are `Decimal`; every layout takes an `Invoice` and draws it its own way, because
what pypdf gives back (label and value on one line, or a row of labels over a row of
values) depends on how the page was drawn.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import random
import secrets
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import facturx
import facturx.facturx as facturx_impl
from fpdf import FPDF
from pypdf import PdfReader, PdfWriter

CREATED = dt.datetime(2026, 11, 1, 9, 0, tzinfo=dt.UTC)
CENT = Decimal("0.01")


# ------------------------------------------------------------------------------ values


@dataclass(frozen=True)
class Line:
    label: str
    quantity: Decimal
    unit_price: Decimal  # excluding VAT

    @property
    def net(self) -> Decimal:
        return (self.quantity * self.unit_price).quantize(CENT)


@dataclass(frozen=True)
class Party:
    name: str
    address: tuple[str, ...] = ()
    country: str = "FR"
    vat_id: str = ""
    siret: str = ""


@dataclass(frozen=True)
class Invoice:
    """What the firm's tool knows when it prints an invoice."""

    number: str
    issue_date: dt.date
    seller: Party
    buyer: Party
    lines: tuple[Line, ...]
    vat_rate: Decimal = Decimal("20")  # 0 for "TVA non applicable, art. 293 B du CGI"
    currency: str = "EUR"
    due_date: dt.date | None = None
    terms: str = ""  # as printed: "30 jours fin de mois", "Net 30"
    kind: str = "invoice"  # invoice | credit_note | deposit
    already_paid: Decimal = Decimal("0")  # a deposit paid earlier, deducted at the end
    refers_to: str = ""  # the invoice a credit note or a corrected invoice names
    language: str = "fr"
    notes: tuple[str, ...] = ()  # free lines printed under the totals
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def net_total(self) -> Decimal:
        return sum((line.net for line in self.lines), Decimal("0"))

    @property
    def vat_total(self) -> Decimal:
        return (self.net_total * self.vat_rate / 100).quantize(CENT)

    @property
    def gross_total(self) -> Decimal:
        return self.net_total + self.vat_total

    @property
    def amount_due(self) -> Decimal:
        return self.gross_total - self.already_paid


# ------------------------------------------------------------------------------ formats


def money_fr(amount: Decimal, symbol: str = "€", space: str = "\u00a0") -> str:
    """1 234,56 € (a no-break space between thousands, as French tools print it)."""
    whole, _, cents = f"{amount:,.2f}".partition(".")
    text = whole.replace(",", space) + "," + cents
    return f"{text}{space}{symbol}" if symbol else text


def money_en(amount: Decimal, symbol: str = "€") -> str:
    return f"{symbol}{amount:,.2f}"


def money_code(amount: Decimal, code: str, style: str = "en") -> str:
    """EUR 1,234.56 / 1.234,56 EUR / CHF 2'450.00."""
    if style == "ch":
        return f"{code} {amount:,.2f}".replace(",", "'")
    if style == "de":
        whole, _, cents = f"{amount:,.2f}".partition(".")
        return f"{whole.replace(',', '.')},{cents} {code}"
    return f"{code} {amount:,.2f}"


MONTHS_FR = (
    "janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août", "septembre",
    "octobre", "novembre", "décembre",
)  # fmt: skip
MONTHS_FR_SHORT = (
    "janv.", "févr.", "mars", "avr.", "mai", "juin", "juil.", "août", "sept.", "oct.",
    "nov.", "déc.",
)  # fmt: skip
MONTHS_EN = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)  # fmt: skip


def date_fr(day: dt.date, style: str = "slash") -> str:
    if style == "long":
        return f"{day.day} {MONTHS_FR[day.month - 1]} {day.year}"
    if style == "short":
        return f"{day.day} {MONTHS_FR_SHORT[day.month - 1]} {day.year}"
    if style == "dot":
        return f"{day:%d.%m.%Y}"
    if style == "iso":
        return day.isoformat()
    return f"{day:%d/%m/%Y}"


def date_en(day: dt.date, style: str = "us") -> str:
    if style == "uk":
        return f"{day.day} {MONTHS_EN[day.month - 1]} {day.year}"
    if style == "abbr":
        return f"{day.day} {MONTHS_EN[day.month - 1][:3]} {day.year}"
    if style == "iso":
        return day.isoformat()
    return f"{MONTHS_EN[day.month - 1]} {day.day}, {day.year}"


# ------------------------------------------------------------------------------ fpdf


def _new_pdf() -> FPDF:
    pdf = FPDF()
    pdf.core_fonts_encoding = "windows-1252"  # € and œ in the core fonts
    pdf.set_creation_date(CREATED)
    pdf.set_auto_page_break(True, margin=15)
    pdf.add_page()
    return pdf


def _out(pdf: FPDF) -> bytes:
    return bytes(pdf.output())


def _text(pdf: FPDF, text: str, size: int = 10, style: str = "", height: float = 5) -> None:
    pdf.set_font("helvetica", style, size)
    pdf.multi_cell(0, height, text, new_x="LMARGIN", new_y="NEXT")


def _row(pdf: FPDF, cells: list[tuple[float, str]], style: str = "", align: str = "L") -> None:
    pdf.set_font("helvetica", style, 9)
    for width, text in cells:
        pdf.cell(width, 6, text, border=0, align=align if text[:1].isdigit() else "L")
    pdf.ln(6)


def _party_block(pdf: FPDF, party: Party, legal: bool = True) -> None:
    _text(pdf, party.name, 11, "B")
    for line in party.address:
        _text(pdf, line, 9)
    if legal and party.siret:
        _text(pdf, f"SIRET {party.siret}", 8)
    if legal and party.vat_id:
        _text(pdf, f"N° TVA intracommunautaire : {party.vat_id}", 8)


def _line_table_fr(pdf: FPDF, invoice: Invoice, money: Callable[[Decimal], str]) -> None:
    _row(pdf, [(90, "Désignation"), (20, "Qté"), (35, "P.U. HT"), (35, "Total HT")], "B")
    for line in invoice.lines:
        _row(pdf, [(90, line.label), (20, f"{line.quantity:f}".replace(".", ",")),
                   (35, money(line.unit_price)), (35, money(line.net))])
    pdf.ln(3)


def _line_table_en(pdf: FPDF, invoice: Invoice, money: Callable[[Decimal], str]) -> None:
    _row(pdf, [(90, "Description"), (20, "Qty"), (35, "Unit price"), (35, "Amount")], "B")
    for line in invoice.lines:
        _row(pdf, [(90, line.label), (20, f"{line.quantity:f}"), (35, money(line.unit_price)),
                   (35, money(line.net))])
    pdf.ln(3)


def _footer_fr(pdf: FPDF, invoice: Invoice) -> None:
    pdf.ln(4)
    for note in invoice.notes:
        _text(pdf, note, 8)
    _text(
        pdf,
        "En cas de retard de paiement, pénalités au taux de 3 fois le taux d'intérêt légal et "
        "indemnité forfaitaire pour frais de recouvrement de 40 € (art. L441-10 du Code de "
        "commerce). Pas d'escompte pour paiement anticipé.",
        7,
    )
    _text(pdf, "IBAN FR76 3000 4000 0500 0012 3456 789 - BIC BNPAFRPPXXX", 7)


# ------------------------------------------------------------------------------ layouts


def layout_classic_fr(invoice: Invoice, *, date_style: str = "slash",
                      due_label: str = "Échéance", total_label: str = "Net à payer",
                      title: str | None = None) -> bytes:
    """The common French layout: header, 'N°', dates, table, totals right, legal footer."""
    pdf = _new_pdf()
    _party_block(pdf, invoice.seller)
    pdf.ln(4)
    heading = title or {"credit_note": "AVOIR", "deposit": "FACTURE D'ACOMPTE"}.get(
        invoice.kind, "FACTURE"
    )
    _text(pdf, f"{heading} N° {invoice.number}", 14, "B", 8)
    _text(pdf, f"Date : {date_fr(invoice.issue_date, date_style)}", 10)
    if invoice.due_date:
        _text(pdf, f"{due_label} : {date_fr(invoice.due_date, date_style)}", 10)
    if invoice.refers_to:
        _text(pdf, f"Réf. : facture N° {invoice.refers_to}", 10)
    pdf.ln(3)
    _text(pdf, "Client :", 9, "B")
    _party_block(pdf, invoice.buyer, legal=False)
    pdf.ln(4)
    _line_table_fr(pdf, invoice, money_fr)
    totals = [("Total HT", invoice.net_total)]
    if invoice.vat_rate:
        totals.append((f"TVA {invoice.vat_rate:f} %".replace(".", ","), invoice.vat_total))
        totals.append(("Total TTC", invoice.gross_total))
    if invoice.already_paid:
        totals.append(("Acompte déjà versé", -invoice.already_paid))
    totals.append((total_label, invoice.amount_due))
    for label, amount in totals:
        _row(pdf, [(110, ""), (40, label), (35, money_fr(amount))])
    if not invoice.vat_rate:
        _text(pdf, "TVA non applicable, art. 293 B du CGI", 8)
    if invoice.terms:
        _text(pdf, f"Conditions de paiement : {invoice.terms}", 9)
    _footer_fr(pdf, invoice)
    return _out(pdf)


def layout_grid_fr(invoice: Invoice) -> bytes:
    """Invoicing software: a row of labels, then a row of values (pypdf reads them apart)."""
    pdf = _new_pdf()
    _party_block(pdf, invoice.seller)
    pdf.ln(4)
    title = "AVOIR" if invoice.kind == "credit_note" else "FACTURE"
    _text(pdf, title, 16, "B", 9)
    _row(pdf, [(45, "Numéro"), (45, "Date"), (45, "Échéance"), (45, "Code client")], "B")
    _row(pdf, [(45, invoice.number), (45, date_fr(invoice.issue_date)),
               (45, date_fr(invoice.due_date) if invoice.due_date else "-"), (45, "C0042")])
    pdf.ln(3)
    _party_block(pdf, invoice.buyer, legal=False)
    pdf.ln(4)
    _line_table_fr(pdf, invoice, lambda a: money_fr(a, ""))
    _row(pdf, [(45, "Total HT"), (45, "TVA"), (45, "Total TTC"), (45, "Net à payer")], "B")
    _row(pdf, [(45, money_fr(invoice.net_total)), (45, money_fr(invoice.vat_total)),
               (45, money_fr(invoice.gross_total)), (45, money_fr(invoice.amount_due))])
    if invoice.terms:
        _text(pdf, f"Mode de règlement : virement - {invoice.terms}", 9)
    _footer_fr(pdf, invoice)
    return _out(pdf)


def layout_freelance_fr(invoice: Invoice) -> bytes:
    """A micro-entrepreneur's word-processor invoice: no VAT, one total, plain sentences."""
    pdf = _new_pdf()
    _text(pdf, invoice.seller.name, 12, "B")
    for line in invoice.seller.address:
        _text(pdf, line, 9)
    _text(pdf, f"SIRET : {invoice.seller.siret}", 9)
    pdf.ln(6)
    _text(pdf, f"Facture n° {invoice.number} du {date_fr(invoice.issue_date, 'long')}", 13, "B")
    pdf.ln(2)
    _text(pdf, f"À l'attention de {invoice.buyer.name}", 10)
    pdf.ln(4)
    for line in invoice.lines:
        _text(pdf, f"- {line.label} : {money_fr(line.net)}", 10)
    pdf.ln(3)
    _text(pdf, f"Total : {money_fr(invoice.amount_due)}", 11, "B")
    _text(pdf, "TVA non applicable, art. 293 B du CGI", 9)
    if invoice.terms:
        _text(pdf, invoice.terms, 10)
    if invoice.due_date:
        _text(pdf, f"À régler avant le {date_fr(invoice.due_date, 'long')}.", 10)
    _footer_fr(pdf, invoice)
    return _out(pdf)


def layout_english(invoice: Invoice, *, symbol: str = "€", date_style: str = "us",
                   due_label: str = "Due date", total_label: str = "Amount due",
                   money: Callable[[Decimal], str] | None = None) -> bytes:
    """An English invoice (a French firm's foreign clients, or an English-made template)."""
    fmt = money or (lambda amount: money_en(amount, symbol))
    pdf = _new_pdf()
    _party_block(pdf, invoice.seller, legal=False)
    if invoice.seller.vat_id:
        _text(pdf, f"VAT number: {invoice.seller.vat_id}", 8)
    pdf.ln(4)
    title = "CREDIT NOTE" if invoice.kind == "credit_note" else "INVOICE"
    _text(pdf, title, 16, "B", 9)
    number_label = "Credit note number" if invoice.kind == "credit_note" else "Invoice number"
    _text(pdf, f"{number_label}: {invoice.number}", 10)
    _text(pdf, f"Invoice date: {date_en(invoice.issue_date, date_style)}", 10)
    if invoice.due_date:
        _text(pdf, f"{due_label}: {date_en(invoice.due_date, date_style)}", 10)
    if invoice.refers_to:
        _text(pdf, f"Original invoice: {invoice.refers_to}", 10)
    pdf.ln(3)
    _text(pdf, "Bill to:", 9, "B")
    _party_block(pdf, invoice.buyer, legal=False)
    pdf.ln(4)
    _line_table_en(pdf, invoice, fmt)
    _row(pdf, [(110, ""), (40, "Subtotal"), (35, fmt(invoice.net_total))])
    if invoice.vat_rate:
        _row(pdf, [(110, ""), (40, f"VAT {invoice.vat_rate:f}%"), (35, fmt(invoice.vat_total))])
    else:
        _text(pdf, "VAT reverse charge / export of services - VAT not applicable", 8)
    _row(pdf, [(110, ""), (40, total_label), (35, fmt(invoice.amount_due))], "B")
    if invoice.terms:
        _text(pdf, f"Payment terms: {invoice.terms}", 9)
    _text(pdf, "Bank: BNP Paribas - IBAN FR76 3000 4000 0500 0012 3456 789 - BIC BNPAFRPPXXX", 7)
    return _out(pdf)


def layout_quote_fr(number: str, issued: dt.date, seller: Party, buyer: Party,
                    lines: tuple[Line, ...], title: str = "DEVIS") -> bytes:
    """A quote or an order confirmation: it looks like an invoice and is not one."""
    net = sum((line.net for line in lines), Decimal("0"))
    vat = (net * Decimal("0.2")).quantize(CENT)
    pdf = _new_pdf()
    _party_block(pdf, seller)
    pdf.ln(4)
    _text(pdf, f"{title} N° {number}", 14, "B", 8)
    _text(pdf, f"Date : {date_fr(issued)}", 10)
    _text(pdf, f"Validité de l'offre : {date_fr(issued + dt.timedelta(days=30))}", 10)
    _party_block(pdf, buyer, legal=False)
    pdf.ln(4)
    inv = Invoice(number, issued, seller, buyer, lines)
    _line_table_fr(pdf, inv, money_fr)
    _row(pdf, [(110, ""), (40, "Total HT"), (35, money_fr(net))])
    _row(pdf, [(110, ""), (40, "TVA 20 %"), (35, money_fr(vat))])
    _row(pdf, [(110, ""), (40, "Total TTC"), (35, money_fr(net + vat))])
    _text(pdf, "Un acompte de 30 % sera facturé à la commande ; le solde à la livraison, "
               "facture payable à 30 jours.", 9)
    _text(pdf, "Bon pour accord, date et signature :", 9)
    return _out(pdf)


def layout_terms_fr(seller: Party) -> bytes:
    """General terms (CGV): every invoice word, no invoice."""
    pdf = _new_pdf()
    _text(pdf, f"CONDITIONS GÉNÉRALES DE VENTE - {seller.name}", 13, "B")
    _text(pdf, "Article 5 - Facturation et paiement. Toute facture est payable à 30 jours à "
               "compter de sa date d'émission. Tout retard entraîne des pénalités au taux de "
               "3 fois le taux d'intérêt légal et une indemnité forfaitaire de 40 € pour frais "
               "de recouvrement. Montant minimum de commande : 150,00 €.", 9)
    return _out(pdf)


def with_text_page(pdf: bytes, text: str) -> bytes:
    """Append a page (general terms at the back of an invoice)."""
    extra = _new_pdf()
    _text(extra, text, 8)
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf)))
    writer.append(PdfReader(io.BytesIO(_out(extra))))
    return _pinned_write(writer)


def _pinned_write(writer: PdfWriter) -> bytes:
    writer.add_metadata({"/CreationDate": "D:20261101090000+00'00'",
                         "/ModDate": "D:20261101090000+00'00'"})
    out = io.BytesIO()
    with _pinned_randomness(random.Random(0)):
        writer.write(out)
    return out.getvalue()


# ------------------------------------------------------------------------------ Factur-X


@contextlib.contextmanager
def _pinned_facturx_clock() -> Iterator[None]:
    """factur-x stamps the PDF and its XMP with the current time; pin it for stable bytes."""
    stamp = facturx_impl._get_pdf_timestamp
    meta = facturx_impl._get_metadata_timestamp

    def fixed_stamp(date: dt.datetime | None = None) -> str:
        return stamp(date or CREATED)

    facturx_impl._get_pdf_timestamp = fixed_stamp
    facturx_impl._get_metadata_timestamp = lambda: "2026-11-01T09:00:00+00:00"
    try:
        yield
    finally:
        facturx_impl._get_pdf_timestamp = stamp
        facturx_impl._get_metadata_timestamp = meta


TYPE_CODES = {"invoice": "380", "credit_note": "381", "deposit": "386"}


def cii_data(invoice: Invoice, level: str) -> dict[str, Any]:
    """The factur-x package's data dict (EN 16931 business terms) for BASIC WL / EN16931."""
    data: dict[str, Any] = {
        "BT-1": invoice.number,
        "BT-2": invoice.issue_date,
        "BT-3": TYPE_CODES[invoice.kind],
        "BT-5": invoice.currency,
        "BT-72": invoice.issue_date,
        "BG-4": {
            "name": invoice.seller.name, "country_code": invoice.seller.country,
            "vat_identifier": invoice.seller.vat_id or "FR32123456789",
            "legal_identifier": (invoice.seller.siret or "12345678900012").replace(" ", "")[:9],
            "legal_identifier_schemeid": "0002",
            "addr_l1": invoice.seller.address[0] if invoice.seller.address else "",
            "city": "Lyon", "postcode": "69003",
        },
        "BG-7": {"name": invoice.buyer.name, "country_code": invoice.buyer.country},
        "BG-23": [{
            "BT-116": f"{invoice.net_total:.2f}", "BT-117": f"{invoice.vat_total:.2f}",
            "BT-118": "S" if invoice.vat_rate else "E",
            "BT-119": f"{invoice.vat_rate:.2f}",
            **({} if invoice.vat_rate else {"BT-120": "TVA non applicable, art. 293 B du CGI"}),
        }],
        "BT-106": f"{invoice.net_total:.2f}",
        "BT-109": f"{invoice.net_total:.2f}",
        "BT-110": f"{invoice.vat_total:.2f}",
        "BT-112": f"{invoice.gross_total:.2f}",
        "BT-115": f"{invoice.amount_due:.2f}",
    }
    if invoice.already_paid:
        data["BT-113"] = f"{invoice.already_paid:.2f}"
    if invoice.due_date:
        data["BT-9"] = invoice.due_date
    if invoice.terms:
        data["BT-20"] = invoice.terms
    if invoice.refers_to:
        data["BG-3"] = [{"BT-25": invoice.refers_to}]
    if level in ("en16931", "extended"):
        data["BG-25"] = [
            {
                "BT-126": str(index), "BT-129": f"{line.quantity:f}", "BT-130": "C62",
                "BT-131": f"{line.net:.2f}", "BT-146": f"{line.unit_price:.2f}",
                "BT-151": "S" if invoice.vat_rate else "E",
                "BT-152": f"{invoice.vat_rate:.2f}", "BT-153": line.label,
            }
            for index, line in enumerate(invoice.lines, 1)
        ]
    return data


def minimum_xml(invoice: Invoice) -> bytes:
    """Factur-X MINIMUM (the package generates BASIC WL and up only): written by hand."""
    due = f"{invoice.amount_due:.2f}"
    tax = (f'<ram:TaxTotalAmount currencyID="{invoice.currency}">'
           f"{invoice.vat_total:.2f}</ram:TaxTotalAmount>")
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<rsm:CrossIndustryInvoice
  xmlns:rsm="urn:un:unece:uncefact:data:standard:CrossIndustryInvoice:100"
  xmlns:ram="urn:un:unece:uncefact:data:standard:ReusableAggregateBusinessInformationEntity:100"
  xmlns:udt="urn:un:unece:uncefact:data:standard:UnqualifiedDataType:100"
  xmlns:qdt="urn:un:unece:uncefact:data:standard:QualifiedDataType:100">
  <rsm:ExchangedDocumentContext>
    <ram:GuidelineSpecifiedDocumentContextParameter>
      <ram:ID>urn:factur-x.eu:1p0:minimum</ram:ID>
    </ram:GuidelineSpecifiedDocumentContextParameter>
  </rsm:ExchangedDocumentContext>
  <rsm:ExchangedDocument>
    <ram:ID>{invoice.number}</ram:ID>
    <ram:TypeCode>{TYPE_CODES[invoice.kind]}</ram:TypeCode>
    <ram:IssueDateTime>
      <udt:DateTimeString format="102">{invoice.issue_date:%Y%m%d}</udt:DateTimeString>
    </ram:IssueDateTime>
  </rsm:ExchangedDocument>
  <rsm:SupplyChainTradeTransaction>
    <ram:ApplicableHeaderTradeAgreement>
      <ram:SellerTradeParty>
        <ram:Name>{invoice.seller.name}</ram:Name>
        <ram:PostalTradeAddress><ram:CountryID>FR</ram:CountryID></ram:PostalTradeAddress>
        <ram:SpecifiedTaxRegistration>
          <ram:ID schemeID="VA">{invoice.seller.vat_id or "FR32123456789"}</ram:ID>
        </ram:SpecifiedTaxRegistration>
      </ram:SellerTradeParty>
      <ram:BuyerTradeParty><ram:Name>{invoice.buyer.name}</ram:Name></ram:BuyerTradeParty>
    </ram:ApplicableHeaderTradeAgreement>
    <ram:ApplicableHeaderTradeDelivery/>
    <ram:ApplicableHeaderTradeSettlement>
      <ram:InvoiceCurrencyCode>{invoice.currency}</ram:InvoiceCurrencyCode>
      <ram:SpecifiedTradeSettlementHeaderMonetarySummation>
        <ram:TaxBasisTotalAmount>{invoice.net_total:.2f}</ram:TaxBasisTotalAmount>
        {tax}
        <ram:GrandTotalAmount>{invoice.gross_total:.2f}</ram:GrandTotalAmount>
        <ram:DuePayableAmount>{due}</ram:DuePayableAmount>
      </ram:SpecifiedTradeSettlementHeaderMonetarySummation>
    </ram:ApplicableHeaderTradeSettlement>
  </rsm:SupplyChainTradeTransaction>
</rsm:CrossIndustryInvoice>
""".encode()


def facturx_xml(invoice: Invoice, level: str) -> bytes:
    if level == "minimum":
        return minimum_xml(invoice)
    return bytes(facturx.generate_cii_xml(cii_data(invoice, level), level=level,
                                          check_schematron=False))


def facturx_pdf(pdf: bytes, xml: bytes) -> bytes:
    """PDF/A-3 with the XML embedded, XSD-checked by factur-x, with a pinned clock."""
    with _pinned_facturx_clock(), _pinned_randomness(random.Random(len(xml))):
        return bytes(facturx.generate_from_binary(
            pdf, xml, check_xsd=True,
            pdf_metadata={"author": "relance corpus", "keywords": "Factur-X",
                          "title": "Facture", "subject": "Facture"},
        ))


def ubl_invoice_xml(invoice: Invoice) -> bytes:
    """UBL 2.1 as a standalone attachment (some platforms send it next to the PDF)."""
    data = cii_data(invoice, "en16931")
    with contextlib.suppress(KeyError):
        del data["BT-72"]
    return bytes(facturx.generate_ubl_xml(data, level="en16931", check_schematron=False))


# ------------------------------------------------------------------------------ hostile


def encrypted(pdf: bytes, password: str) -> bytes:
    """AES-256 with a user password; pypdf salts with `secrets`, pinned for stable bytes."""
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf)))
    with _pinned_randomness(random.Random(len(pdf))):
        writer.encrypt(user_password=password, owner_password="owner-" + password,
                       algorithm="AES-256")
        out = io.BytesIO()
        writer.write(out)
    return out.getvalue()


@contextlib.contextmanager
def _pinned_randomness(rng: random.Random) -> Iterator[None]:
    saved = secrets.token_bytes
    secrets.token_bytes = lambda n=32: rng.randbytes(n)  # type: ignore[assignment]
    try:
        yield
    finally:
        secrets.token_bytes = saved  # type: ignore[assignment]


def truncated(pdf: bytes, keep: float = 0.45) -> bytes:
    """A PDF cut short in transit (or by a flaky upload): header, half the objects, no xref."""
    return pdf[: int(len(pdf) * keep)]


def _raw_pdf(objects: list[bytes]) -> bytes:
    """A PDF from numbered object bodies (1-based), with a correct xref table."""
    out = io.BytesIO()
    out.write(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n"
              % (len(objects) + 1, xref))
    return out.getvalue()


def _deflate_zeros(size: int, chunk: int = 1 << 20) -> bytes:
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(bytes(chunk)) for _ in range(size // chunk)]
    parts.append(compressor.flush())
    return b"".join(parts)


def flate_bomb_pdf(expanded_bytes: int = 1 << 30) -> bytes:
    """A one-page PDF whose content stream inflates to `expanded_bytes` (twice deflated, so
    the file stays a few kilobytes): the PDF cousin of a zip bomb."""
    inner = _deflate_zeros(expanded_bytes)
    outer = zlib.compress(inner, 9)
    content = (b"<< /Length %d /Filter [/FlateDecode /FlateDecode] >>\nstream\n" % len(outer)
               + outer + b"\nendstream")
    return _raw_pdf([
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R "
        b"/Resources << >> >>",
        content,
    ])


def xml_bomb_facturx(pdf: bytes, expanded_bytes: int = 1 << 30) -> bytes:
    """A real invoice PDF with a `factur-x.xml` that inflates to a gigabyte."""
    inner = _deflate_zeros(expanded_bytes)
    outer = zlib.compress(inner, 9)
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf)))
    writer.add_attachment("factur-x.xml", b"<placeholder/>")
    # Swap the embedded file's stream for the bomb, keeping pypdf's file specification.
    from pypdf.generic import ArrayObject, NameObject, NumberObject

    for obj in writer._objects:
        if obj is not None and getattr(obj, "get", None) and obj.get("/Type") == "/EmbeddedFile":
            obj._data = outer
            obj[NameObject("/Filter")] = ArrayObject(
                [NameObject("/FlateDecode"), NameObject("/FlateDecode")]
            )
            obj[NameObject("/Length")] = NumberObject(len(outer))
    return _pinned_write(writer)


def zip_as_pdf(expanded_bytes: int = 50 << 20) -> bytes:
    """A zip archive (zeros, deflated) named and typed as a PDF."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        info = zipfile.ZipInfo("facture.pdf", date_time=(2026, 11, 1, 9, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        with archive.open(info, "w") as member:
            for _ in range(expanded_bytes // (1 << 20)):
                member.write(bytes(1 << 20))
    return out.getvalue()


def scanned_pdf(pages: int, bytes_per_page: int, seed: int = 7) -> bytes:
    """A scanner's PDF: each page one big image (noise, so it does not compress), no text.
    Written by hand: fast, and the size is whatever the test asks for."""
    rng = random.Random(seed)
    objects: list[bytes] = [b"", b""]  # catalog and page tree, filled in below
    kids = []
    for index in range(pages):
        image_number = len(objects) + 1
        image = rng.randbytes(bytes_per_page)
        objects.append(
            b"<< /Type /XObject /Subtype /Image /Width 2480 /Height 3508 /ColorSpace "
            b"/DeviceGray /BitsPerComponent 8 /Filter /DCTDecode /Length %d >>\nstream\n"
            % len(image) + image + b"\nendstream"
        )
        content = b"q 595 0 0 842 0 0 cm /Im%d Do Q" % index
        objects.append(b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream")
        page_number = len(objects) + 1
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents %d 0 R "
            b"/Resources << /XObject << /Im%d %d 0 R >> >> >>"
            % (page_number - 1, index, image_number)
        )
        kids.append(b"%d 0 R" % page_number)
    objects[0] = b"<< /Type /Catalog /Pages 2 0 R >>"
    objects[1] = b"<< /Type /Pages /Kids [" + b" ".join(kids) + b"] /Count %d >>" % pages
    return _raw_pdf(objects)


def layout_lines(*lines: str | tuple[str, str]) -> bytes:
    """Free-form page: a string is a line; (left, right) is a label with its value on the
    right edge, the way totals columns are drawn."""
    pdf = _new_pdf()
    for line in lines:
        if isinstance(line, tuple):
            left, right = line
            _row(pdf, [(120, left), (60, right)])
        elif line.isupper() and len(line) < 40:
            _text(pdf, line, 14, "B", 8)
        else:
            _text(pdf, line, 10)
    return _out(pdf)
