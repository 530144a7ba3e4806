"""Invoice facts from mails as French (and English-speaking) firms write them.

Every case builds a `Mail` value; PDFs are made in memory by the builders of
test_documents.
"""

from __future__ import annotations

import time
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_documents import (
    attach_file,
    cii_xml,
    encrypt,
    make_facturx_pdf,
    make_pdf,
    ubl_xml,
)

from relance.core.extract import (
    due_date_for,
    extract_invoices,
    extract_invoices_with_notes,
    invoice_numbers_in,
    looks_like_invoice,
)
from relance.model import Attachment, InvoiceFacts, Mail

PARIS = timezone(timedelta(hours=1))
SENT_AT = datetime(2026, 11, 20, 10, 30, tzinfo=PARIS)


def mail(subject: str, text: str = "", *attachments: Attachment, **fields: Any) -> Mail:
    return Mail(
        message_id="<m1@example.fr>",
        subject=subject,
        from_addr="compta@atelier-dupont.fr",
        to_addrs=("client@example.com",),
        date=fields.pop("date", SENT_AT),
        text=text,
        attachments=attachments,
        **fields,
    )


def pdf(data: bytes, filename: str = "facture.pdf") -> Attachment:
    return Attachment(filename, "application/pdf", data)


def only(found: list[InvoiceFacts]) -> InvoiceFacts:
    assert len(found) == 1, found
    return found[0]


# ------------------------------------------------------------------------------ numbers

NUMBER_CASES = [
    ("Facture n°F-2026-0042", "F-2026-0042", "invoice"),
    ("Facture N° 2026-118", "2026-118", "invoice"),
    ("FACTURE 2026-118", "2026-118", "invoice"),
    ("facture no FA2026/031", "FA2026/031", "invoice"),
    ("Invoice #INV-1042", "INV-1042", "invoice"),
    ("Invoice INV-2026-07", "INV-2026-07", "invoice"),
    ("Avoir n°AV-2026-003", "AV-2026-003", "credit_note"),
    ("Credit note CN-12", "CN-12", "credit_note"),
    ("Votre facture N°: F-2026-0042 - Atelier Dupont", "F-2026-0042", "invoice"),
    ("Atelier Dupont - Facture F-2026-0042 du 15/11/2026", "F-2026-0042", "invoice"),
    ("Invoice number: INV-1042", "INV-1042", "invoice"),
    ("Facture n\u00ba 118", "118", "invoice"),
    ("Facture n° 7", "7", "invoice"),
    ("Avoir n°AV-2026-003 sur facture F-2026-0042", "AV-2026-003", "credit_note"),
]


@pytest.mark.parametrize(("subject", "number", "kind"), NUMBER_CASES)
def test_number_and_kind_from_subject(subject: str, number: str, kind: str) -> None:
    facts = only(extract_invoices(mail(subject, "Montant : 100,00 €")))
    assert (facts.number, facts.kind) == (number, kind)


@pytest.mark.parametrize(
    ("body", "number"),
    [
        ("Bonjour,\nVeuillez trouver ci-joint la facture n°F-2026-0042.", "F-2026-0042"),
        ("N° de facture : F-2026-0042\nMontant : 10,00 €", "F-2026-0042"),
        ("Numéro de facture F-2026-0099", "F-2026-0099"),
        ("Please find attached invoice INV-2026-07.", "INV-2026-07"),
    ],
)
def test_number_from_body_when_subject_has_none(body: str, number: str) -> None:
    assert only(extract_invoices(mail("Votre document", body))).number == number


# ------------------------------------------------------------------------------ amounts

AMOUNT_CASES = [
    ("Montant : 1 234,56 €", "1234.56", "EUR"),
    ("Montant : 1\u202f234,56\u00a0€", "1234.56", "EUR"),
    ("Montant : 1\u00a0234,56 €", "1234.56", "EUR"),
    ("d'un montant de 1 234,56 € TTC", "1234.56", "EUR"),
    ("Total TTC : 1.234,56 EUR", "1234.56", "EUR"),
    ("Net à payer : 1 234,56 €", "1234.56", "EUR"),
    ("Montant TTC : 980,00 euros", "980.00", "EUR"),
    ("Total due: EUR 1234.56", "1234.56", "EUR"),
    ("Amount due: €1,234.56", "1234.56", "EUR"),
    ("Total: 1234.56 USD", "1234.56", "USD"),
    ("Total: CHF 980.00", "980.00", "CHF"),
    ("Amount due: £1,200.00", "1200.00", "GBP"),
    ("Total : 1 200 €", "1200", "EUR"),
    ("Total HT : 1 000,00 €\nTVA 20 % : 200,00 €\nTotal TTC : 1 200,00 €", "1200.00", "EUR"),
    ("Total TTC : 1 200,00 €\nTotal HT : 1 000,00 €", "1200.00", "EUR"),
    ("Montant HT 1 000,00 € - Montant TTC 1 200,00 €", "1200.00", "EUR"),
    ("1 000,00 € HT, soit 1 200,00 € TTC", "1200.00", "EUR"),
    ("Total TTC : 1 500,00 €\nAcompte versé : 500,00 €\nNet à payer : 1 000,00 €", "1000.00",
     "EUR"),
    ("Total TTC\n1 200,00\n", "1200.00", "EUR"),
    ("facture de 480,00 €.\nSARL au capital de 10 000 €", "480.00", "EUR"),
    ("Total : 450,00 €\nIndemnité forfaitaire pour frais de recouvrement : 40 €", "450.00", "EUR"),
    ("Total HT : 500,00 €\nTVA non applicable, art. 293 B du CGI", "500.00", "EUR"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "amount", "currency"), AMOUNT_CASES)
def test_amount_and_currency(body: str, amount: str, currency: str) -> None:
    facts = only(extract_invoices(mail("Facture F-2026-0042", body)))
    assert (facts.amount, facts.currency) == (Decimal(amount), currency)
    assert isinstance(facts.amount, Decimal)


def test_amount_without_vat_only_is_missing() -> None:
    facts = only(extract_invoices(mail("Facture F-2026-0042", "Total HT : 1 000,00 €")))
    assert facts.amount is None
    assert "amount" in facts.missing


def test_credit_note_amount_is_positive() -> None:
    facts = only(extract_invoices(mail("Avoir n°AV-2026-003", "Montant : -120,00 €")))
    assert (facts.kind, facts.amount) == ("credit_note", Decimal("120.00"))


# ------------------------------------------------------------------------------ dates

DUE_DATE_CASES = [
    "Échéance : 15/12/2026",
    "Echeance : 15/12/2026",
    "Date d'échéance : 15.12.2026",
    "Date d’échéance : 2026-12-15",
    "À régler avant le 15 décembre 2026",
    "à payer avant le 15 déc. 2026",
    "Payable le 15 decembre 2026",
    "Due date: December 15, 2026",
    "Due by 15 December 2026",
    "Payment due 15/12/2026",
    "Date limite de paiement : 15/12/2026",
    "à régler par virement avant le 15/12/2026",
    "Merci de me régler d'ici le 15 décembre 2026",
    "Amount due: €10.00, due 2026-12-15",
    "sera prélevée le 15/12/2026 sur votre compte",
    "Zahlbar bis: 2026-12-15",
]


@pytest.mark.parametrize("body", DUE_DATE_CASES)
def test_due_date_phrases(body: str) -> None:
    facts = only(extract_invoices(mail("Facture F-2026-0042", f"Montant : 10,00 €\n{body}")))
    assert facts.due_date == date(2026, 12, 15)
    assert "due_date" not in facts.missing


@pytest.mark.parametrize(
    ("body", "due"),
    [
        ("Tu peux me régler d'ici le 15 janvier ?", date(2027, 1, 15)),  # sent in November
        ("À régler avant le 15/12.", date(2026, 12, 15)),
        ("À régler avant le 30 novembre.", date(2026, 11, 30)),
    ],
)
def test_due_date_without_a_year_is_the_next_one(body: str, due: date) -> None:
    facts = only(extract_invoices(mail("Facture F-2026-0042", f"Montant : 10,00 €\n{body}")))
    assert facts.due_date == due


def test_due_date_on_the_first_of_the_month() -> None:
    body = "Montant : 10,00 €\nÀ régler avant le 1er décembre 2026"
    assert only(extract_invoices(mail("Facture F-1-2026", body))).due_date == date(2026, 12, 1)


ISSUE_DATE_CASES = [
    "Date : 15/11/2026",
    "Date de facture : 15/11/2026",
    "Facture émise le 15 novembre 2026",
    "Invoice date: November 15, 2026",
    "Invoice date: 2026-11-15",
    "Date de facturation : 15.11.2026",
    "Facture n° F-2026-0042 du 15/11/2026",
]


@pytest.mark.parametrize("body", ISSUE_DATE_CASES)
def test_issue_date_phrases(body: str) -> None:
    facts = only(extract_invoices(mail("Facture F-2026-0042", f"Montant : 10,00 €\n{body}")))
    assert facts.issue_date == date(2026, 11, 15)


def test_issue_date_and_due_date_side_by_side() -> None:
    body = "Date : 15/11/2026  Échéance : 15/12/2026\nMontant : 10,00 €"
    facts = only(extract_invoices(mail("Facture F-2026-0042", body)))
    assert (facts.issue_date, facts.due_date) == (date(2026, 11, 15), date(2026, 12, 15))


def test_mail_date_is_the_fallback_issue_date() -> None:
    facts = only(extract_invoices(mail("Facture F-2026-0042", "Montant : 10,00 €")))
    assert facts.issue_date == SENT_AT.date()
    assert "issue_date" not in facts.missing


# ------------------------------------------------------------------------------ terms

TERMS_CASES = [
    ("Paiement à 30 jours", 30, False),
    ("paiement à 45 jours", 45, False),
    ("Conditions : à 30 jours", 30, False),
    ("30 jours fin de mois", 30, True),
    ("Règlement : 45 jours fin de mois", 45, True),
    ("Terms: net 30", 30, False),
    ("Payment terms: 30 days", 30, False),
    ("Paiement à réception de facture", 0, False),
    ("Délai de paiement : 60 jours", 60, False),
    ("à régler sous 30 jours", 30, False),
]


@pytest.mark.parametrize(("body", "days", "end_of_month"), TERMS_CASES)
def test_payment_terms(body: str, days: int, end_of_month: bool) -> None:
    facts = only(extract_invoices(mail("Facture F-2026-0042", f"Montant : 10,00 €\n{body}")))
    assert (facts.terms_days, facts.terms_end_of_month) == (days, end_of_month)
    assert facts.due_date is None
    assert "due_date" not in facts.missing


# ------------------------------------------------------------------------------ missing facts


@pytest.mark.parametrize(
    ("body", "sent_at", "missing"),
    [
        ("Montant : 10,00 €\nÉchéance : 15/12/2026", SENT_AT, ()),
        ("Échéance : 15/12/2026", SENT_AT, ("amount",)),
        ("Montant : 10,00 €", SENT_AT, ("due_date",)),
        ("", SENT_AT, ("amount", "due_date")),
        ("Montant : 10,00 €\nà 30 jours", None, ("issue_date",)),
        ("", None, ("amount", "due_date", "issue_date")),
    ],
)
def test_missing_facts_are_named(
    body: str, sent_at: datetime | None, missing: tuple[str, ...]
) -> None:
    facts = only(extract_invoices(mail("Facture F-2026-0042", body, date=sent_at)))
    assert facts.missing == missing


# ------------------------------------------------------------------------------ not invoices

NOT_INVOICES = [
    pytest.param(mail("Devis n°D-2026-01", "Montant : 1 200,00 €"), id="devis"),
    pytest.param(mail("Quote Q-12", "Total: €1,200.00"), id="quote"),
    pytest.param(mail("Confirmation de commande n°1234", "Total : 50,00 €"), id="order"),
    pytest.param(mail("Facture proforma PF-2026-3", "Total : 50,00 €"), id="proforma"),
    pytest.param(mail("Notre newsletter de novembre", "La facture électronique arrive"),
                 id="newsletter"),
    pytest.param(
        mail("Nouveautés", "Exemple : facture n° F-2026-0001, 10,00 €",
             headers={"list-unsubscribe": "<mailto:u@example.fr>"}),
        id="newsletter-headers",
    ),
    pytest.param(mail("Re: Facture F-2026-0042", "Merci, le paiement part demain."),
                 id="reply"),
    pytest.param(mail("RE: Facture F-2026-0042", "> Montant : 1 200,00 €"), id="reply-upper"),
    pytest.param(mail("Fwd: Invoice INV-1042", "See below."), id="forward"),
    pytest.param(mail("TR : Facture F-2026-0042", "Pour info."), id="transfert"),
    pytest.param(mail("Relance facture F-2026-0042", "Montant : 1 200,00 €"), id="relance"),
    pytest.param(mail("Rappel : facture F-2026-0042", "Montant : 1 200,00 €"), id="rappel"),
    pytest.param(mail("Payment reminder: invoice INV-1042", "Amount due: €10.00"),
                 id="reminder"),
    pytest.param(
        mail("Facture F-2026-0042", "Montant : 1 200,00 €", headers={"x-relance-step": "2"}),
        id="own-reminder",
    ),
    pytest.param(
        mail("Facture F-2026-0042 : à vérifier", "", headers={"x-relance-notice": "facts"}),
        id="own-notice",
    ),
    pytest.param(mail("Bonjour", "On se voit jeudi ?"), id="chat"),
    pytest.param(mail("Votre facture", "Votre facture arrive bientôt."), id="no-number"),
    pytest.param(
        mail("Relance facture F-2026-0042", "", pdf(make_pdf("FACTURE N° F-2026-0042"))),
        id="relance-with-the-pdf",
    ),
    pytest.param(mail("Avis de virement reçu", "Libellé : FACTURE F-2026-0042, 10,00 EUR"),
                 id="bank-notice"),
    pytest.param(mail("Payment received for invoice INV-1042", "Amount paid: $10.00"),
                 id="payment-received"),
    pytest.param(mail("Relevé de compte au 30/11/2026", "facture F-2026-0042 : 10,00 €"),
                 id="statement"),
    pytest.param(mail("Facture acquittée F-2026-0042", "Montant : 10,00 €"), id="receipted"),
    pytest.param(mail("Friendly nudge: invoice INV-1042", "Amount: €10.00"), id="nudge"),
    pytest.param(mail("Réponse automatique : Facture F-2026-0042", "Absent jusqu'au 9."),
                 id="auto-reply-subject"),
    pytest.param(
        mail("Facture F-2026-0042", "Je suis absent.", headers={"auto-submitted": "auto-replied"}),
        id="auto-replied",
    ),
    pytest.param(
        mail("Chantier : planning", "Comme indiqué sur notre facture F-2026-0042 du "
             "03/11/2026, la pose aura lieu lundi."),
        id="mention-of-a-past-invoice",
    ),
    pytest.param(
        mail("TR: Votre facture BM-88213", "Pour la compta.\n\n---- Message transféré ----\n"
             "De : Bois & Matériaux <factures@bois-materiaux.fr>\nObjet : Votre facture",
             pdf(make_pdf("FACTURE N° BM-88213\nTotal TTC : 2 928,00 EUR"))),
        id="supplier-invoice-forwarded",
    ),
]  # fmt: skip


@pytest.mark.parametrize("message", NOT_INVOICES)
def test_not_an_invoice(message: Mail) -> None:
    assert extract_invoices(message) == []


def test_invoicing_software_marked_auto_generated_is_still_an_invoice() -> None:
    message = mail("Facture F-2026-0042", "Montant : 10,00 €",
                   headers={"auto-submitted": "auto-generated"})
    assert only(extract_invoices(message)).number == "F-2026-0042"


def test_own_invoice_forwarded_again_is_an_invoice() -> None:
    body = ("Je vous transfère la facture.\n---- Message transféré ----\n"
            "De : Atelier Dupont <compta@atelier-dupont.fr>\nObjet : Facture F-2026-0042")
    message = mail("TR: Facture F-2026-0042", body, pdf(make_pdf(PDF_TEXT)))
    assert only(extract_invoices(message)).number == "F-2026-0042"


@pytest.mark.parametrize(
    "body",
    [
        "Veuillez trouver ci-joint la facture n°F-2026-0042.",
        "N° de facture : F-2026-0042",
        "Please find attached invoice F-2026-0042.",
        "Voici notre facture F-2026-0042 pour le chantier.",
    ],
)
def test_a_body_that_sends_an_invoice_without_its_amount_is_kept(body: str) -> None:
    facts = only(extract_invoices(mail("Votre document", body)))
    assert (facts.number, facts.amount, facts.missing[0]) == ("F-2026-0042", None, "amount")


def test_several_invoices_listed_in_the_body_are_several_invoices() -> None:
    body = ("Voici mes deux factures :\n- facture n° 2026-122 : 320,00 € TTC\n"
            "- facture n° 2026-123 : 185,00 € TTC\nRèglement à 30 jours.")
    found = extract_invoices(mail("Factures de novembre", body))
    assert [(f.number, f.amount, f.terms_days) for f in found] == [
        ("2026-122", Decimal("320.00"), 30), ("2026-123", Decimal("185.00"), 30)
    ]


def test_subject_naming_an_invoice_and_a_quote_keeps_the_invoice() -> None:
    message = mail(
        "Facture parquet et devis escalier", "Ci-joint la facture et le devis.",
        pdf(make_pdf(PDF_TEXT), "facture.pdf"),
        pdf(make_pdf("DEVIS N° D-2026-030\nTotal TTC : 2 808,00 EUR"), "devis.pdf"),
    )
    assert only(extract_invoices(message)).number == "F-2026-0042"


def test_a_quote_pdf_under_an_invoice_subject_is_not_an_invoice() -> None:
    quote = make_pdf("Atelier Dupont\nDEVIS N° D-2026-030\nTotal TTC : 2 808,00 EUR\n"
                     "Un acompte de 30 % sera facturé à la commande.")
    found, notes = extract_invoices_with_notes(mail("Proposition", "Voici.", pdf(quote)))
    assert (found, notes) == ([], ())


def test_words_that_look_like_numbers_are_not_numbers() -> None:
    bodies = [
        "Montant facturé : 1 200,00 €",
        "facture à 30 jours",
        "Toutes nos factures 2026",
        "Pour avoir 2 jours de retard",
    ]
    for body in bodies:
        assert extract_invoices(mail("Infos", body)) == [], body


# ------------------------------------------------------------------------------ attachments

PDF_TEXT = (
    "Atelier Dupont\nFACTURE N° F-2026-0042\nDate : 15/11/2026\n"
    "Total HT : 1 000,00 EUR\nTVA 20 % : 200,00 EUR\nTotal TTC : 1 200,00 EUR\n"
    "Echeance : 15/12/2026\nSARL au capital de 10 000 EUR"
)


def test_pdf_text_gives_the_facts() -> None:
    message = mail("Votre facture", "Bonjour, ci-joint votre facture.", pdf(make_pdf(PDF_TEXT)))
    facts = only(extract_invoices(message))
    assert facts.number == "F-2026-0042"
    assert facts.amount == Decimal("1200.00")
    assert (facts.issue_date, facts.due_date) == (date(2026, 11, 15), date(2026, 12, 15))
    assert facts.source == "pdf"
    assert facts.missing == ()


def test_facturx_gives_the_facts() -> None:
    attachment = pdf(make_facturx_pdf(cii_xml(), "FACTURE N° F-2026-0042"))
    facts = only(extract_invoices(mail("Facture F-2026-0042", "Ci-joint.", attachment)))
    assert facts == InvoiceFacts(
        number="F-2026-0042",
        kind="invoice",
        amount=Decimal("1200.00"),
        currency="EUR",
        issue_date=date(2026, 11, 15),
        due_date=date(2026, 12, 15),
        terms_days=30,
        client_name="Boulangerie Martin",
        source="factur-x",
    )


def test_facturx_wins_and_the_disagreement_is_recorded() -> None:
    attachment = pdf(make_facturx_pdf(cii_xml(), "FACTURE N° F-2026-0042"))
    message = mail("Facture F-2026-0042", "Montant : 1 100,00 €", attachment)
    facts = only(extract_invoices(message))
    assert facts.amount == Decimal("1200.00")
    assert facts.disagreements == ("amount: factur-x 1200.00 != mail 1100.00",)


def test_pdf_text_wins_over_the_mail() -> None:
    message = mail(
        "Facture F-2026-0042", "Montant : 1 100,00 €\nÉchéance : 20/12/2026",
        pdf(make_pdf(PDF_TEXT)),
    )  # fmt: skip
    facts = only(extract_invoices(message))
    assert (facts.amount, facts.due_date) == (Decimal("1200.00"), date(2026, 12, 15))
    assert facts.disagreements == (
        "amount: pdf 1200.00 != mail 1100.00",
        "due_date: pdf 2026-12-15 != mail 2026-12-20",
    )


def test_mail_fills_what_the_pdf_does_not_say() -> None:
    message = mail(
        "Facture F-2026-0042", "Paiement à 45 jours fin de mois",
        pdf(make_pdf("FACTURE N° F-2026-0042\nTotal TTC : 300,00 EUR")),
    )  # fmt: skip
    facts = only(extract_invoices(message))
    assert (facts.amount, facts.terms_days, facts.terms_end_of_month) == (
        Decimal("300.00"), 45, True,
    )  # fmt: skip
    assert facts.source == "pdf"


def test_several_pdfs_are_several_invoices() -> None:
    message = mail(
        "Vos factures de novembre",
        "Bonjour, ci-joint les factures F-2026-0042 et F-2026-0043.",
        pdf(make_pdf("FACTURE N° F-2026-0042\nTotal TTC : 1 200,00 EUR"), "F-2026-0042.pdf"),
        pdf(make_pdf("FACTURE N° F-2026-0043\nTotal TTC : 300,00 EUR"), "F-2026-0043.pdf"),
        pdf(make_pdf("AVOIR N° AV-2026-003\nTotal TTC : 50,00 EUR"), "AV-2026-003.pdf"),
    )
    found = extract_invoices(message)
    assert [(f.number, f.kind, f.amount) for f in found] == [
        ("F-2026-0042", "invoice", Decimal("1200.00")),
        ("F-2026-0043", "invoice", Decimal("300.00")),
        ("AV-2026-003", "credit_note", Decimal("50.00")),
    ]


def test_pdf_and_xml_of_the_same_invoice_are_one_invoice() -> None:
    message = mail(
        "Invoice INV-77", "",
        pdf(make_pdf("INVOICE INV-77\nTotal due: 600.00 EUR")),
        Attachment("INV-77.xml", "application/xml", ubl_xml("INV-77")),
    )  # fmt: skip
    facts = only(extract_invoices(message))
    assert (facts.number, facts.source, facts.amount) == ("INV-77", "factur-x", Decimal("600"))
    assert facts.disagreements == ()


def test_credit_note_from_facturx() -> None:
    attachment = pdf(make_facturx_pdf(cii_xml("AV-2026-003", type_code="381"), "AVOIR"))
    facts = only(extract_invoices(mail("Avoir AV-2026-003", "", attachment)))
    assert (facts.number, facts.kind) == ("AV-2026-003", "credit_note")


def test_pdf_without_a_number_takes_the_mail_number() -> None:
    message = mail(
        "Facture F-2026-0042", "Bonjour,",
        pdf(make_pdf("Facture\nTotal TTC : 640,00 EUR\nDate : 15/11/2026")),
    )  # fmt: skip
    facts = only(extract_invoices(message))
    assert (facts.number, facts.amount, facts.source) == ("F-2026-0042", Decimal("640"), "pdf")


def test_number_from_the_pdf_file_name() -> None:
    message = mail(
        "Votre document", "Bonjour,",
        pdf(make_pdf("Facture\nTotal TTC : 640,00 EUR"), "Facture_F-2026-0042.pdf"),
    )  # fmt: skip
    assert only(extract_invoices(message)).number == "F-2026-0042"


def test_reply_that_attaches_the_invoice_is_an_invoice() -> None:
    message = mail("Re: votre commande", "Voici la facture.", pdf(make_pdf(PDF_TEXT)))
    assert only(extract_invoices(message)).number == "F-2026-0042"


def test_terms_and_conditions_pdf_is_not_an_invoice() -> None:
    cgv = pdf(make_pdf("Conditions generales de vente\nToute facture est payable a 30 jours."))
    message = mail("Facture F-2026-0042", "Montant : 90,00 €", cgv)
    facts = only(extract_invoices(message))
    assert (facts.source, facts.amount) == ("mail", Decimal("90.00"))


@pytest.mark.parametrize(
    ("data", "note_start"),
    [
        (encrypt(make_pdf("FACTURE N° F-2026-0042"), "secret"), "f.pdf: encrypted PDF"),
        (b"%PDF-1.4 this is not really a PDF", "f.pdf: unreadable PDF"),
    ],
)
def test_unreadable_pdf_gives_a_note_and_the_mail_facts(data: bytes, note_start: str) -> None:
    message = mail("Facture F-2026-0042", "Montant : 1 200,00 €", pdf(data, "f.pdf"))
    found, notes = extract_invoices_with_notes(message)
    assert [(f.number, f.amount, f.source) for f in found] == [
        ("F-2026-0042", Decimal("1200.00"), "mail")
    ]
    assert len(notes) == 1 and notes[0].startswith(note_start)
    assert found[0].notes == notes  # the owner sees why the amount came from the mail


def test_notes_of_one_invoice_are_not_on_another() -> None:
    other = make_pdf(PDF_TEXT.replace("F-2026-0042", "F-2026-0043"))
    message = mail("Factures", "Ci-joint.", pdf(make_pdf(PDF_TEXT), "a.pdf"),
                   pdf(attach_file(other, "factur-x.xml", b"<broken"), "b.pdf"))
    first, second = extract_invoices(message)
    assert first.notes == ()
    assert second.notes and second.notes[0].startswith("b.pdf/factur-x.xml")


def test_unreadable_attachment_next_to_an_invoice_is_noted_on_it() -> None:
    message = mail("Factures", "Ci-joint.", pdf(make_pdf(PDF_TEXT), "a.pdf"),
                   pdf(encrypt(make_pdf(PDF_TEXT), "secret"), "b.pdf"))
    facts = only(extract_invoices(message))  # b.pdf may hide another invoice: say so
    assert facts.notes == ("b.pdf: encrypted PDF, cannot read it",)


def test_credit_note_names_the_invoice_it_credits() -> None:
    text = ("AVOIR N° AV-2026-003\nDate : 20/11/2026\nRéf. : facture N° F-2026-0042\n"
            "Total TTC : 120,00 EUR")
    facts = only(extract_invoices(mail("Avoir AV-2026-003", "Ci-joint.", pdf(make_pdf(text)))))
    assert (facts.kind, facts.notes) == ("credit_note",
                                         ("AV-2026-003 credits invoice F-2026-0042",))
    assert "due_date" not in facts.missing  # a credit note is not chased


def test_facturx_credit_note_names_its_invoice_from_the_xml() -> None:
    xml = cii_xml(number="AV-9", type_code="381").replace(
        b"</ram:SpecifiedTradeSettlementHeaderMonetarySummation>",
        b"</ram:SpecifiedTradeSettlementHeaderMonetarySummation>"
        b"<ram:InvoiceReferencedDocument><ram:IssuerAssignedID>F-2026-0042"
        b"</ram:IssuerAssignedID></ram:InvoiceReferencedDocument>",
    )
    facts = only(extract_invoices(mail("Avoir", "", pdf(make_facturx_pdf(xml, "AVOIR")))))
    assert facts.notes == ("AV-9 credits invoice F-2026-0042",)


def test_corrected_invoice_names_the_invoice_it_replaces() -> None:
    text = ("FACTURE RECTIFICATIVE N° F-2026-0050\nDate : 20/11/2026\n"
            "Annule et remplace la facture F-2026-0042\nNet à payer : 1 380,00 EUR")
    facts = only(extract_invoices(mail("Facture rectificative", "", pdf(make_pdf(text)))))
    assert (facts.number, facts.kind) == ("F-2026-0050", "invoice")
    assert facts.notes == ("F-2026-0050 replaces invoice F-2026-0042",)


@pytest.mark.parametrize(
    ("title", "number", "kind"),
    [
        ("FACTURE D'ACOMPTE N° FA-2026-0031", "FA-2026-0031", "invoice"),
        ("Facture de solde n° F-2026-0107", "F-2026-0107", "invoice"),
        ("FACTURE D'AVOIR N° FAV-2026-002", "FAV-2026-002", "credit_note"),
        ("Facture (n°2026-14)", "2026-14", "invoice"),
    ],
)
def test_qualified_titles(title: str, number: str, kind: str) -> None:
    facts = only(extract_invoices(mail("Document", "", pdf(make_pdf(f"{title}\nTotal TTC : "
                                                                       "10,00 EUR")))))
    assert (facts.number, facts.kind) == (number, kind)


def test_a_row_of_labels_over_a_row_of_values_is_read() -> None:
    text = ("FACTURE\nNuméro Date Échéance Code client\n"
            "F-2026-0113 19/11/2026 19/12/2026 C0042\n"
            "Total HT TVA Total TTC Net à payer\n"
            "1 850,00 EUR 370,00 EUR 2 220,00 EUR 2 220,00 EUR")
    facts = only(extract_invoices(mail("Document", "", pdf(make_pdf(text), "doc.pdf"))))
    assert (facts.number, facts.amount, facts.issue_date, facts.due_date) == (
        "F-2026-0113", Decimal("2220.00"), date(2026, 11, 19), date(2026, 12, 19))


def test_a_date_echeance_column_over_one_date_is_the_due_date() -> None:
    text = "FACTURE\nNuméro Date Échéance\nF-2026-0114 04/12/2026\nNet à payer : 10,00 EUR"
    facts = only(extract_invoices(mail("Document", "", pdf(make_pdf(text), "doc.pdf"))))
    assert facts.due_date == date(2026, 12, 4)


def test_invoice_pdf_without_any_number_is_noted() -> None:
    message = mail("Votre facture", "Bonjour,", pdf(make_pdf("Facture\nTotal : 10,00 EUR")))
    found, notes = extract_invoices_with_notes(message)
    assert found == []
    assert notes == ("looks like an invoice, but no invoice number was found",)


# ------------------------------------------------------------------------------ prefilter


@pytest.mark.parametrize(
    ("subject", "content_type", "expected"),
    [
        ("Facture F-2026-0042", "text/plain", True),
        ("FACTURE", "text/plain", True),
        ("Votre facturation de novembre", "text/plain", True),
        ("Invoice INV-1042", "text/html", True),
        ("Your invoices", "text/plain", True),
        ("Avoir AV-3", "text/plain", True),
        ("Credit note CN-12", "text/plain", True),
        ("Credit-note CN-12", "text/plain", True),
        ("Factúre", "text/plain", True),
        ("Re: facture", "text/plain", True),
        ("Documents", "multipart/mixed; boundary=x", True),
        ("Documents", "Multipart/Mixed", True),
        ("Bonjour", "text/plain", False),
        ("Bonjour", "multipart/alternative", False),
        ("Déjeuner jeudi", "text/html; charset=utf-8", False),
    ],
)
def test_looks_like_invoice(subject: str, content_type: str, expected: bool) -> None:
    assert looks_like_invoice(subject, content_type) is expected


# ------------------------------------------------------------------------------ replies


@pytest.mark.parametrize(
    ("text", "numbers"),
    [
        ("Bonjour, concernant la facture F-2026-0042, le virement part demain.",
         ["F-2026-0042"]),
        ("Re: Facture n°F-2026-0042", ["F-2026-0042"]),
        ("Les factures F-2026-0042 et F-2026-0043 seront réglées.",
         ["F-2026-0042", "F-2026-0043"]),
        ("Invoice #INV-1042 was paid; invoice INV-1043 too.", ["INV-1042", "INV-1043"]),
        ("Votre avoir n° AV-2026-003 a bien été reçu", ["AV-2026-003"]),
        ("La facture F-2026-0042 (facture F-2026-0042)", ["F-2026-0042"]),
        ("Nous avons bien reçu votre facture.", []),
        ("Facturé le 15/11/2026 pour 1 200 €", []),
        ("", []),
    ],
)  # fmt: skip
def test_invoice_numbers_in(text: str, numbers: list[str]) -> None:
    assert invoice_numbers_in(text) == numbers


# ------------------------------------------------------------------------------ due dates


@pytest.mark.parametrize(
    ("facts", "default_days", "default_eom", "expected"),
    [
        (InvoiceFacts("F", due_date=date(2026, 12, 1), issue_date=date(2026, 11, 15)), 30,
         False, date(2026, 12, 1)),
        (InvoiceFacts("F", issue_date=date(2026, 11, 15)), 30, False, date(2026, 12, 15)),
        (InvoiceFacts("F", issue_date=date(2026, 11, 15), terms_days=45), 30, False,
         date(2026, 12, 30)),
        (InvoiceFacts("F", issue_date=date(2026, 11, 15), terms_days=30,
                      terms_end_of_month=True), 60, False, date(2026, 12, 31)),
        (InvoiceFacts("F", issue_date=date(2026, 11, 15), terms_days=45,
                      terms_end_of_month=True), 30, False, date(2026, 12, 31)),
        (InvoiceFacts("F", issue_date=date(2026, 1, 20)), 30, True, date(2026, 2, 28)),
        (InvoiceFacts("F", issue_date=date(2026, 11, 15), terms_days=0), 30, False,
         date(2026, 11, 15)),
        (InvoiceFacts("F"), 30, False, None),
    ],
)  # fmt: skip
def test_due_date_for(
    facts: InvoiceFacts, default_days: int, default_eom: bool, expected: date | None
) -> None:
    assert due_date_for(facts, default_days, default_eom) == expected


# ------------------------------------------------------------------------------ robustness

WORDS = [
    "Facture", "facture", "n°", "N°", "Avoir", "Invoice", "#", ":", "F-2026-0042", "2026-118",
    "Montant", "Total TTC", "Total HT", "Net à payer", "1 200,00", "1\u202f234,56", "€", "EUR",
    "$1,200.00", "TTC", "HT", "Échéance", "15/12/2026", "1er décembre 2026", "Date :",
    "à 30 jours", "fin de mois", "net 30", "Re:", "Devis", "relance", "du", "et", "\n", " ",
    "-", "0", "99", "capital", "%",
]  # fmt: skip
invoice_like = st.lists(st.sampled_from(WORDS), max_size=40).map(" ".join)


@settings(max_examples=300, deadline=None)
@given(subject=st.one_of(st.text(max_size=200), invoice_like),
       body=st.one_of(st.text(max_size=2000), invoice_like))  # fmt: skip
def test_any_text_gives_facts_or_nothing_never_an_error(subject: str, body: str) -> None:
    for facts in extract_invoices(mail(subject, body)):
        assert any(ch.isdigit() for ch in facts.number)
        assert facts.amount is None or facts.amount >= 0
        assert set(facts.missing) <= {"amount", "due_date", "issue_date"}
    for number in invoice_numbers_in(f"{subject}\n{body}"):
        assert any(ch.isdigit() for ch in number)
    assert isinstance(looks_like_invoice(subject, body[:40]), bool)


@settings(max_examples=200, deadline=None)
@given(
    issued=st.dates(min_value=date(2000, 1, 1), max_value=date(2090, 12, 31)),
    days=st.integers(min_value=0, max_value=120),
    end_of_month=st.booleans(),
)
def test_due_date_is_never_before_the_issue_date(
    issued: date, days: int, end_of_month: bool
) -> None:
    due = due_date_for(InvoiceFacts("F-1", issue_date=issued), days, end_of_month)
    assert due is not None and due >= issued + timedelta(days=days)
    if end_of_month:
        assert (due + timedelta(days=1)).day == 1


def test_long_lines_of_numbers_stay_fast() -> None:
    started = time.perf_counter()
    extract_invoices(mail("Facture F-2026-0042", "1 " * 50_000))
    # A guard against catastrophic backtracking (it was quadratic once: 20 s), not a
    # benchmark: the bound is loose enough for a loaded CI machine.
    assert time.perf_counter() - started < 60
