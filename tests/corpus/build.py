"""Write the invoice-mail corpus: `python -m tests.corpus.build`, from the repository root.

Each case below is one mail as a small firm sends it (or as something that is not an
invoice looks), and the facts a careful human would read from it. The script writes
`mails/NAME.eml` and `mails/NAME.expected.json`; the same code always writes the same bytes,
so a rebuild shows in `git diff` only when a case changed. Two very large cases (scans of
tens of megabytes) are not written: `generated_cases()` builds them in memory for the test.

Sidecar: a JSON list, one object per invoice or credit note the mail sends ([] for none):
number, kind ("invoice" | "credit_note"), amount (a string, taxes included, what is due),
currency, issue_date, due_date (stated, else the invoice's own terms applied; null when
neither is given). Optional: notes (words that must appear in the facts' notes),
disagreements (facts on which the sources must be recorded as disagreeing), refers_to
(the invoice a credit note or a corrected invoice names).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

from . import pdfs
from .mails import File, at, build_mail
from .pdfs import Invoice, Line, Party

HERE = Path(__file__).resolve().parent
MAILS = HERE / "mails"
D = Decimal


@dataclass(frozen=True)
class Built:
    raw: bytes
    expected: list[dict[str, Any]]


CASES: dict[str, Callable[[], Built]] = {}


def case(function: Callable[[], Built]) -> Callable[[], Built]:
    CASES[function.__name__] = function
    return function


def expect(invoice: Invoice, **overrides: Any) -> dict[str, Any]:
    """The sidecar entry for an invoice as printed; overrides for what the mail changes."""
    facts: dict[str, Any] = {
        "number": invoice.number,
        "kind": "credit_note" if invoice.kind == "credit_note" else "invoice",
        "amount": f"{invoice.amount_due:.2f}",
        "currency": invoice.currency,
        "issue_date": invoice.issue_date.isoformat(),
        "due_date": invoice.due_date.isoformat() if invoice.due_date else None,
    }
    if invoice.refers_to:
        facts["refers_to"] = [invoice.refers_to]
    for key, value in overrides.items():
        if isinstance(value, dt.date):
            value = value.isoformat()
        elif isinstance(value, Decimal):
            value = f"{value:.2f}"
        facts[key] = value
    return facts


# ------------------------------------------------------------------------------ people

DUPONT = Party("Atelier Dupont", ("Menuiserie - Agencement", "12 rue des Tanneurs",
                                  "69003 Lyon"), siret="123 456 789 00012",
               vat_id="FR32123456789")
DUPONT_MAIL = "Atelier Dupont <compta@atelier-dupont.fr>"
DUPONT_SOFTWARE = "Atelier Dupont <factures@atelier-dupont.fr>"  # the invoicing tool, BCC
DUPONT_OWNER = "Jean Dupont <jean@atelier-dupont.fr>"
LEMOINE = Party("Claire Lemoine - Studio Lemoine", ("Graphisme & identité visuelle",
                                                    "8 impasse des Lilas", "35000 Rennes"),
                siret="812 345 678 00021")
LEMOINE_MAIL = "Claire Lemoine <claire@studio-lemoine.fr>"
MOREAU = Party("Moreau Conseil SARL", ("40 rue de la République", "13002 Marseille"),
               siret="501 234 567 00034", vat_id="FR45501234567")
MOREAU_MAIL = "Olivier Moreau <olivier.moreau@moreau-conseil.fr>"
GIRARD_MAIL = "Plomberie Girard <contact@plomberie-girard.fr>"
GIRARD = Party("Plomberie Girard", ("5 chemin du Moulin", "44000 Nantes"),
               siret="398 765 432 00015", vat_id="FR11398765432")
KELLER = Party("Keller Traductions", ("2 quai Kléber", "67000 Strasbourg"),
               siret="834 567 890 00018", vat_id="FR67834567890")
KELLER_MAIL = "Anna Keller <anna@keller-traductions.fr>"

MARTIN = Party("Boulangerie Martin", ("3 place Bellecour", "69002 Lyon"))
MARTIN_MAIL = "Paul Martin <contact@boulangerie-martin.fr>"
TILLEULS = Party("SCI Les Tilleuls", ("27 avenue Jean Jaurès", "69007 Lyon"))
TILLEULS_MAIL = "SCI Les Tilleuls <gestion@sci-tilleuls.fr>"
CAFE = Party("Café du Port", ("1 quai de la Fosse", "44000 Nantes"))
CAFE_MAIL = "cafe.du.port@orange.fr"
ACME = Party("Acme Publishing Ltd", ("14 Fleet Street", "London EC4Y 1AA"), country="GB")
ACME_MAIL = "Accounts Payable <accounts@acme-publishing.co.uk>"
BRIGHT = Party("Brightside Inc.", ("500 Market Street", "San Francisco, CA 94105"),
               country="US")
BRIGHT_MAIL = "Brightside AP <ap@brightside.com>"
HELVETIA = Party("Helvetia Verlag AG", ("Bahnhofstrasse 10", "8001 Zürich"), country="CH")
HELVETIA_MAIL = "Buchhaltung <buchhaltung@helvetia-verlag.ch>"
BELLEVUE = Party("Hôtel Bellevue", ("9 boulevard de la Plage", "35800 Dinard"))
BELLEVUE_MAIL = "Direction <direction@hotel-bellevue.fr>"
NGUYEN_MAIL = "Dr Linh Nguyen <cabinet.nguyen@gmail.com>"

SIGN_DUPONT = "\n\nCordialement,\n\nJean Dupont\nAtelier Dupont - 04 78 00 00 00\n"
SIGN_LEMOINE = "\n\nBelle journée,\nClaire\n--\nStudio Lemoine - studio-lemoine.fr\n"
SIGN_MOREAU = "\n\nBest regards,\n\nOlivier Moreau\nMoreau Conseil SARL\n"
SIGN_KELLER = "\n\nKind regards,\nAnna Keller\nKeller Traductions\n"


def day(text: str) -> dt.date:
    return dt.date.fromisoformat(text)


def dupont_invoice(number: str, issued: str, due: str | None, *lines: Line,
                   **fields: Any) -> Invoice:
    return Invoice(number, day(issued), DUPONT, fields.pop("buyer", MARTIN), tuple(lines),
                   due_date=day(due) if due else None, **fields)


PARQUET = Line("Pose parquet chêne massif", D("35"), D("28.00"))
PLINTHES = Line("Plinthes assorties", D("12"), D("6.50"))
PLACARD = Line("Placard sur mesure, portes coulissantes", D("1"), D("1850.00"))
ESCALIER = Line("Rénovation escalier (14 marches)", D("1"), D("2340.00"))
DEPLACEMENT = Line("Déplacement", D("1"), D("45.00"))


def fx_file(invoice: Invoice, level: str, layout: Callable[[Invoice], bytes] | None = None,
            filename: str | None = None) -> File:
    pdf = (layout or pdfs.layout_classic_fr)(invoice)
    return File(filename or f"{invoice.number}.pdf",
                pdfs.facturx_pdf(pdf, pdfs.facturx_xml(invoice, level)))


def pdf_file(invoice: Invoice, layout: Callable[[Invoice], bytes] | None = None,
             filename: str | None = None) -> File:
    return File(filename or f"Facture_{invoice.number}.pdf",
                (layout or pdfs.layout_classic_fr)(invoice))


# ============================================================================== Factur-X


@case
def fx_minimum_classic() -> Built:
    """MINIMUM has no due date: the XML gives the amount, the PDF text the due date."""
    inv = dupont_invoice("F-2026-0101", "2026-11-02", "2026-12-02", PARQUET, PLINTHES,
                         terms="30 jours date de facture")
    raw = build_mail(
        "fx_minimum_classic", sender=DUPONT_MAIL, to=MARTIN_MAIL, sent=at("2026-11-02"),
        subject="Facture F-2026-0101 - Atelier Dupont",
        text="Bonjour Monsieur Martin,\n\nVeuillez trouver ci-joint la facture F-2026-0101 "
             "pour la pose du parquet.\n" + SIGN_DUPONT,
        files=(fx_file(inv, "minimum"),),
    )
    return Built(raw, [expect(inv)])


@case
def fx_basicwl_due_in_xml() -> Built:
    inv = dupont_invoice("F-2026-0102", "2026-11-03", "2026-12-18", PLACARD, DEPLACEMENT,
                         buyer=TILLEULS, terms="Paiement à 45 jours")
    raw = build_mail(
        "fx_basicwl_due_in_xml", sender=DUPONT_MAIL, to=TILLEULS_MAIL, sent=at("2026-11-03"),
        subject="Votre facture n°F-2026-0102",
        text="Madame, Monsieur,\n\nCi-joint notre facture n° F-2026-0102 d'un montant de "
             f"{pdfs.money_fr(inv.amount_due)} TTC, payable au plus tard le 18/12/2026.\n"
             + SIGN_DUPONT,
        files=(fx_file(inv, "basicwl"),),
    )
    return Built(raw, [expect(inv)])


@case
def fx_en16931_lines() -> Built:
    inv = dupont_invoice("F-2026-0103", "2026-11-04", "2026-12-04", ESCALIER, PARQUET,
                         PLINTHES, DEPLACEMENT, terms="30 jours")
    raw = build_mail(
        "fx_en16931_lines", sender=DUPONT_MAIL, to=MARTIN_MAIL, sent=at("2026-11-04", "17:40"),
        subject="Atelier Dupont : facture F-2026-0103 du 04/11/2026",
        text="Bonjour,\n\nVous trouverez en pièce jointe la facture de l'escalier et du "
             "parquet (format Factur-X).\n" + SIGN_DUPONT,
        files=(fx_file(inv, "en16931"),),
    )
    return Built(raw, [expect(inv)])


@case
def fx_en16931_usd_english() -> Built:
    inv = Invoice("MC-2026-045", day("2026-11-05"), MOREAU, BRIGHT,
                  (Line("Market entry study - France (phase 1)", D("1"), D("3800.00")),
                   Line("Workshop in Paris, 1 day", D("1"), D("450.00"))),
                  vat_rate=D("0"), currency="USD", due_date=day("2026-12-05"),
                  terms="Net 30", language="en")
    raw = build_mail(
        "fx_en16931_usd_english", sender=MOREAU_MAIL, to=BRIGHT_MAIL, sent=at("2026-11-05"),
        subject="Invoice MC-2026-045 from Moreau Conseil",
        text="Dear Sir or Madam,\n\nPlease find attached invoice MC-2026-045 for the first "
             "phase of the market entry study. Amount due: USD 4,250.00, payable by "
             "December 5, 2026.\n" + SIGN_MOREAU,
        files=(fx_file(inv, "en16931",
                       lambda i: pdfs.layout_english(i, symbol="$")),),
    )
    return Built(raw, [expect(inv)])


@case
def fx_credit_note() -> Built:
    inv = dupont_invoice("AV-2026-007", "2026-11-06", None,
                         Line("Remise commerciale sur placard (rayure porte)", D("1"),
                              D("150.00")),
                         buyer=TILLEULS, kind="credit_note", refers_to="F-2026-0102")
    raw = build_mail(
        "fx_credit_note", sender=DUPONT_MAIL, to=TILLEULS_MAIL, sent=at("2026-11-06"),
        subject="Avoir AV-2026-007 sur facture F-2026-0102",
        text="Bonjour,\n\nComme convenu, voici l'avoir AV-2026-007 de 180,00 € TTC qui vient "
             "en déduction de la facture F-2026-0102.\n" + SIGN_DUPONT,
        files=(fx_file(inv, "basicwl"),),
    )
    return Built(raw, [expect(inv)])


@case
def fx_deposit_invoice() -> Built:
    """Type code 386 (prepayment): an invoice to chase like any other, for the deposit."""
    inv = dupont_invoice("FA-2026-0031", "2026-11-06", "2026-11-16",
                         Line("Acompte de 30 % sur devis D-2026-018 (cuisine sur mesure)",
                              D("1"), D("2520.00")),
                         buyer=BELLEVUE, kind="deposit", terms="Paiement à 10 jours")
    raw = build_mail(
        "fx_deposit_invoice", sender=DUPONT_MAIL, to=BELLEVUE_MAIL, sent=at("2026-11-06"),
        subject="Facture d'acompte FA-2026-0031 - cuisine sur mesure",
        text="Bonjour,\n\nSuite à la signature du devis D-2026-018, voici la facture "
             "d'acompte (30 %). La fabrication démarre à réception du règlement.\n"
             + SIGN_DUPONT,
        files=(fx_file(inv, "en16931"),),
    )
    return Built(raw, [expect(inv)])


@case
def fx_amount_disagrees_with_pdf_text() -> Built:
    """The tool printed an old total on the PDF; the XML is right and wins, noted."""
    inv = dupont_invoice("F-2026-0104", "2026-11-09", "2026-12-09", PLACARD, buyer=CAFE)
    printed = replace(inv, lines=(Line(PLACARD.label, D("1"), D("1800.00")),))
    raw = build_mail(
        "fx_amount_disagrees_with_pdf_text", sender=DUPONT_MAIL, to=CAFE_MAIL,
        sent=at("2026-11-09"), subject="Facture F-2026-0104",
        text="Bonjour,\n\nCi-joint la facture F-2026-0104 (placard).\n" + SIGN_DUPONT,
        files=(File("F-2026-0104.pdf", pdfs.facturx_pdf(pdfs.layout_classic_fr(printed),
                                                        pdfs.facturx_xml(inv, "basicwl"))),),
    )
    return Built(raw, [expect(inv, disagreements=["amount"])])


@case
def fx_due_date_disagrees_with_mail() -> Built:
    inv = dupont_invoice("F-2026-0105", "2026-11-09", "2026-12-15", ESCALIER,
                         buyer=TILLEULS)
    raw = build_mail(
        "fx_due_date_disagrees_with_mail", sender=DUPONT_OWNER, to=TILLEULS_MAIL,
        sent=at("2026-11-09", "18:02"), subject="Facture F-2026-0105 escalier",
        text="Bonjour Madame,\n\nVoici la facture pour l'escalier, échéance le 10/12/2026 "
             "comme convenu au téléphone.\n" + SIGN_DUPONT,
        files=(fx_file(inv, "en16931"),),
    )
    return Built(raw, [expect(inv, disagreements=["due_date"])])


@case
def fx_terms_end_of_month() -> Built:
    """No due date anywhere, only '45 jours fin de mois' in the XML (BT-20) and the PDF."""
    inv = dupont_invoice("F-2026-0106", "2026-11-10", None, PARQUET, buyer=BELLEVUE,
                         terms="45 jours fin de mois")
    raw = build_mail(
        "fx_terms_end_of_month", sender=DUPONT_MAIL, to=BELLEVUE_MAIL, sent=at("2026-11-10"),
        subject="Facture F-2026-0106", text="Bonjour,\n\nVeuillez trouver notre facture "
        "ci-jointe.\n" + SIGN_DUPONT,
        files=(fx_file(inv, "basicwl"),),
    )
    return Built(raw, [expect(inv, due_date=day("2026-12-31"))])


@case
def fx_minimum_chf() -> Built:
    inv = Invoice("KT-2026-112", day("2026-11-10"), KELLER, HELVETIA,
                  (Line("Übersetzung FR>DE, Katalog 2027 (12 400 Wörter)", D("1"),
                        D("2480.00")),),
                  vat_rate=D("0"), currency="CHF", due_date=day("2026-12-10"))
    raw = build_mail(
        "fx_minimum_chf", sender=KELLER_MAIL, to=HELVETIA_MAIL, sent=at("2026-11-10"),
        subject="Invoice KT-2026-112 - catalogue translation",
        text="Dear Ms Weber,\n\nPlease find attached my invoice for the catalogue "
             "translation.\n" + SIGN_KELLER,
        files=(fx_file(inv, "minimum", lambda i: pdfs.layout_english(
            i, date_style="uk", money=lambda a: pdfs.money_code(a, "CHF", "ch"))),),
    )
    return Built(raw, [expect(inv)])


@case
def fx_final_invoice_after_deposit() -> Built:
    """BT-115 (due) is less than BT-112 (total) by the deposit already paid."""
    inv = dupont_invoice("F-2026-0107", "2026-11-12", "2026-12-12",
                         Line("Cuisine sur mesure (devis D-2026-018)", D("1"), D("8400.00")),
                         buyer=BELLEVUE, already_paid=D("3024.00"),
                         notes=("Acompte FA-2026-0031 réglé le 14/11/2026",))
    raw = build_mail(
        "fx_final_invoice_after_deposit", sender=DUPONT_MAIL, to=BELLEVUE_MAIL,
        sent=at("2026-11-12"), subject="Facture de solde F-2026-0107",
        text="Bonjour,\n\nLa cuisine est posée ; voici la facture de solde, déduction faite "
             "de l'acompte déjà versé.\n" + SIGN_DUPONT,
        files=(fx_file(inv, "en16931"),),
    )
    return Built(raw, [expect(inv)])


@case
def ubl_xml_next_to_pdf() -> Built:
    """A platform sends the UBL file next to a plain PDF: one invoice, the XML trusted."""
    inv = Invoice("MC-2026-046", day("2026-11-12"), MOREAU, TILLEULS,
                  (Line("Accompagnement stratégique, novembre", D("4"), D("650.00")),),
                  due_date=day("2026-12-12"))
    raw = build_mail(
        "ubl_xml_next_to_pdf", sender=MOREAU_MAIL, to=TILLEULS_MAIL, sent=at("2026-11-12"),
        subject="Facture MC-2026-046",
        text="Bonjour,\n\nVeuillez trouver la facture du mois de novembre (PDF et UBL).\n"
             "\nCordialement,\nOlivier Moreau\n",
        files=(pdf_file(inv, filename="MC-2026-046.pdf"),
               File("MC-2026-046.xml", pdfs.ubl_invoice_xml(inv), "application/xml")),
    )
    return Built(raw, [expect(inv)])


@case
def fx_two_invoices_one_mail() -> Built:
    one = dupont_invoice("F-2026-0108", "2026-11-13", "2026-12-13", PLINTHES,
                         DEPLACEMENT, buyer=TILLEULS)
    two = dupont_invoice("F-2026-0109", "2026-11-13", "2026-12-13", PARQUET, buyer=TILLEULS)
    raw = build_mail(
        "fx_two_invoices_one_mail", sender=DUPONT_MAIL, to=TILLEULS_MAIL,
        sent=at("2026-11-13"), subject="Factures F-2026-0108 et F-2026-0109",
        text="Bonjour,\n\nVoici les deux factures pour les appartements 3 et 5 (une par "
             "lot, comme demandé).\n" + SIGN_DUPONT,
        files=(fx_file(one, "basicwl"), fx_file(two, "basicwl")),
    )
    return Built(raw, [expect(one), expect(two)])


@case
def fx_bcc_from_invoicing_software() -> Built:
    """The invoicing tool sends from factures@ and BCCs the mailbox; HTML only."""
    inv = dupont_invoice("F-2026-0110", "2026-11-16", "2026-12-16", PLACARD, PLINTHES,
                         buyer=CAFE)
    html = (
        "<html><body><table width='600'><tr><td><img src='https://cdn.example/logo.png'>"
        "</td></tr><tr><td><p>Bonjour,</p><p>Atelier Dupont vous a envoyé une facture.</p>"
        "<table><tr><td>Facture</td><td><b>F-2026-0110</b></td></tr>"
        f"<tr><td>Montant</td><td><b>{pdfs.money_fr(inv.amount_due)}</b></td></tr>"
        "<tr><td>Échéance</td><td>16/12/2026</td></tr></table>"
        "<p><a href='https://app.example-facturation.fr/p/x7Kd2'>Payer en ligne</a></p>"
        "</td></tr></table></body></html>"
    )
    raw = build_mail(
        "fx_bcc_from_invoicing_software", sender=DUPONT_SOFTWARE, to=CAFE_MAIL,
        sent=at("2026-11-16", "08:01"),
        subject="Atelier Dupont - Facture F-2026-0110", html=html,
        headers=(("X-Mailer", "Facturation-Express 4.2"),
                 ("Delivered-To", "compta@atelier-dupont.fr")),
        files=(fx_file(inv, "en16931", filename="Facture-F-2026-0110.pdf"),),
    )
    return Built(raw, [expect(inv)])


@case
def fx_three_invoices_and_terms() -> Built:
    """Three invoices and the general terms in one mail: three invoices, not four."""
    invoices = [
        Invoice(f"KT-2026-11{n}", day("2026-11-17"), KELLER, BELLEVUE,
                (Line(f"Traduction FR>EN, menu saison {n}", D("1"), D(price)),),
                due_date=day("2026-12-17"))
        for n, price in ((3, "220.00"), (4, "180.00"), (5, "95.50"))
    ]
    files = [fx_file(invoices[0], "basicwl"), fx_file(invoices[1], "en16931"),
             pdf_file(invoices[2]),
             File("CGV-Keller-Traductions.pdf", pdfs.layout_terms_fr(KELLER))]
    raw = build_mail(
        "fx_three_invoices_and_terms", sender=KELLER_MAIL, to=BELLEVUE_MAIL,
        sent=at("2026-11-17"), subject="Vos factures de novembre",
        text="Bonjour,\n\nVeuillez trouver ci-joint les trois factures de novembre ainsi "
             "que nos conditions générales.\n\nCordialement,\nAnna Keller\n",
        files=tuple(files),
    )
    return Built(raw, [expect(inv) for inv in invoices])


# ============================================================================== PDF text


@case
def pdf_classic_fr() -> Built:
    inv = dupont_invoice("F-2026-0111", "2026-11-02", "2026-12-02", PARQUET, PLINTHES,
                         DEPLACEMENT, buyer=CAFE, terms="30 jours date de facture")
    raw = build_mail(
        "pdf_classic_fr", sender=DUPONT_MAIL, to=CAFE_MAIL, sent=at("2026-11-02", "16:20"),
        subject="Facture F-2026-0111",
        text="Bonjour,\n\nCi-joint la facture F-2026-0111.\n" + SIGN_DUPONT,
        files=(pdf_file(inv),),
    )
    return Built(raw, [expect(inv)])


@case
def pdf_long_dates_montant_ttc() -> Built:
    inv = dupont_invoice("F-2026-0112", "2026-11-18", "2026-12-18", ESCALIER, buyer=MARTIN)
    raw = build_mail(
        "pdf_long_dates_montant_ttc", sender=DUPONT_MAIL, to=MARTIN_MAIL,
        sent=at("2026-11-18"), subject="Votre facture Atelier Dupont",
        text="Bonjour,\n\nVeuillez trouver ci-joint votre facture.\n" + SIGN_DUPONT,
        files=(pdf_file(inv, lambda i: pdfs.layout_classic_fr(
            i, date_style="long", due_label="Date d'échéance", total_label="Montant TTC")),),
    )
    return Built(raw, [expect(inv)])


@case
def pdf_grid_layout() -> Built:
    """Labels on one row, values on the next: how table-based tools come out of pypdf."""
    inv = dupont_invoice("F-2026-0113", "2026-11-19", "2026-12-19", PLACARD, buyer=BELLEVUE)
    raw = build_mail(
        "pdf_grid_layout", sender=DUPONT_SOFTWARE, to=BELLEVUE_MAIL, sent=at("2026-11-19"),
        subject="Facture F-2026-0113 - Atelier Dupont",
        text="Bonjour,\n\nVotre facture F-2026-0113 est disponible en pièce jointe.\n\n"
             "Ceci est un message automatique, merci de ne pas y répondre.\n",
        files=(pdf_file(inv, pdfs.layout_grid_fr),),
    )
    return Built(raw, [expect(inv)])


@case
def pdf_grid_layout_no_mail_hints() -> Built:
    inv = dupont_invoice("F-2026-0114", "2026-11-19", "2026-12-04", PARQUET, PLINTHES,
                         buyer=MARTIN)
    raw = build_mail(
        "pdf_grid_layout_no_mail_hints", sender=DUPONT_SOFTWARE, to=MARTIN_MAIL,
        sent=at("2026-11-19", "08:00"), subject="Nouveau document de Atelier Dupont",
        text="Bonjour,\n\nUn nouveau document est disponible.\n",
        files=(pdf_file(inv, pdfs.layout_grid_fr, filename="document.pdf"),),
    )
    return Built(raw, [expect(inv)])


@case
def pdf_freelance_on_receipt() -> Built:
    inv = Invoice("2026-031", day("2026-11-20"), LEMOINE, CAFE,
                  (Line("Création du logo et de la charte graphique", D("1"), D("850.00")),),
                  vat_rate=D("0"), terms="Paiement à réception de la facture.",
                  due_date=None)
    raw = build_mail(
        "pdf_freelance_on_receipt", sender=LEMOINE_MAIL, to=CAFE_MAIL, sent=at("2026-11-20"),
        subject="Facture logo Café du Port",
        text="Bonjour Sophie,\n\nVoici la facture pour le logo, encore merci pour votre "
             "confiance !" + SIGN_LEMOINE,
        files=(pdf_file(inv, pdfs.layout_freelance_fr, filename="facture-2026-031.pdf"),),
    )
    return Built(raw, [expect(inv, due_date=inv.issue_date)])


@case
def pdf_freelance_due_sentence() -> Built:
    inv = Invoice("2026-032", day("2026-11-21"), LEMOINE, BELLEVUE,
                  (Line("Refonte de la carte du restaurant", D("1"), D("620.00")),
                   Line("Impression (épreuves)", D("1"), D("80.00"))),
                  vat_rate=D("0"), due_date=day("2026-12-21"))
    raw = build_mail(
        "pdf_freelance_due_sentence", sender=LEMOINE_MAIL, to=BELLEVUE_MAIL,
        sent=at("2026-11-21"), subject="Facture n° 2026-032",
        text="Bonjour,\n\nJe vous joins ma facture pour la nouvelle carte." + SIGN_LEMOINE,
        files=(pdf_file(inv, pdfs.layout_freelance_fr),),
    )
    return Built(raw, [expect(inv)])


@case
def pdf_english_gbp() -> Built:
    inv = Invoice("KT-2026-116", day("2026-11-20"), KELLER, ACME,
                  (Line("Translation FR>EN, 'Les Jardins de Provence' (chapters 1-6)",
                        D("1"), D("1890.00")),
                   Line("Proofreading", D("6"), D("35.00"))),
                  vat_rate=D("0"), currency="GBP", due_date=day("2026-12-20"))
    raw = build_mail(
        "pdf_english_gbp", sender=KELLER_MAIL, to=ACME_MAIL, sent=at("2026-11-20"),
        subject="Invoice KT-2026-116",
        text="Dear John,\n\nPlease find my invoice attached for the first six chapters.\n"
             + SIGN_KELLER,
        files=(pdf_file(inv, lambda i: pdfs.layout_english(
            i, symbol="£", date_style="uk", due_label="Payment due", total_label="Balance due"),
            filename="KT-2026-116.pdf"),),
    )
    return Built(raw, [expect(inv)])


@case
def pdf_english_usd_code() -> Built:
    inv = Invoice("MC-2026-047", day("2026-11-23"), MOREAU, BRIGHT,
                  (Line("Regulatory review (France)", D("12"), D("250.00")),),
                  vat_rate=D("0"), currency="USD", due_date=day("2026-12-23"), terms="Net 30")
    raw = build_mail(
        "pdf_english_usd_code", sender=MOREAU_MAIL, to=BRIGHT_MAIL, sent=at("2026-11-23"),
        subject="Invoice MC-2026-047",
        text="Hello,\n\nAttached is our invoice for the regulatory review.\n" + SIGN_MOREAU,
        files=(pdf_file(inv, lambda i: pdfs.layout_english(
            i, date_style="us", money=lambda a: pdfs.money_code(a, "USD"))),),
    )
    return Built(raw, [expect(inv)])


@case
def pdf_chf_dot_dates() -> Built:
    inv = Invoice("KT-2026-117", day("2026-11-24"), KELLER, HELVETIA,
                  (Line("Relecture catalogue (FR)", D("1"), D("1450.00")),
                   Line("Mise en page, corrections", D("1"), D("1000.00"))),
                  vat_rate=D("0"), currency="CHF", due_date=day("2026-12-24"))

    def layout(i: Invoice) -> bytes:
        return pdfs.layout_english(i, date_style="iso", due_label="Zahlbar bis",
                                   total_label="Total",
                                   money=lambda a: pdfs.money_code(a, "CHF", "ch"))

    raw = build_mail(
        "pdf_chf_dot_dates", sender=KELLER_MAIL, to=HELVETIA_MAIL, sent=at("2026-11-24"),
        subject="Rechnung / Invoice KT-2026-117",
        text="Sehr geehrte Frau Weber,\n\nanbei meine Rechnung KT-2026-117.\n\nMit "
             "freundlichen Grüssen\nAnna Keller\n",
        files=(pdf_file(inv, layout),),
    )
    return Built(raw, [expect(inv)])


@case
def pdf_terms_thirty_days_end_of_month() -> Built:
    inv = dupont_invoice("F-2026-0115", "2026-11-24", None, PLACARD, buyer=TILLEULS,
                         terms="30 jours fin de mois")
    raw = build_mail(
        "pdf_terms_thirty_days_end_of_month", sender=DUPONT_MAIL, to=TILLEULS_MAIL,
        sent=at("2026-11-24"), subject="Facture F-2026-0115",
        text="Bonjour,\n\nCi-joint la facture du placard de l'entrée.\n" + SIGN_DUPONT,
        files=(pdf_file(inv),),
    )
    return Built(raw, [expect(inv, due_date=day("2026-12-31"))])


@case
def pdf_deposit_invoice() -> Built:
    inv = dupont_invoice("FA-2026-0032", "2026-11-25", "2026-12-05",
                         Line("Acompte de 40 % sur devis D-2026-021 (dressing)", D("1"),
                              D("1120.00")),
                         buyer=MARTIN, kind="deposit",
                         notes=("Montant total du devis : 2 800,00 € HT",))
    raw = build_mail(
        "pdf_deposit_invoice", sender=DUPONT_MAIL, to=MARTIN_MAIL, sent=at("2026-11-25"),
        subject="Facture d'acompte FA-2026-0032",
        text="Bonjour,\n\nVoici la facture d'acompte pour le dressing.\n" + SIGN_DUPONT,
        files=(pdf_file(inv),),
    )
    return Built(raw, [expect(inv)])


@case
def pdf_final_invoice_after_deposit() -> Built:
    inv = dupont_invoice("F-2026-0116", "2026-11-26", "2026-12-26",
                         Line("Dressing sur mesure (devis D-2026-021)", D("1"), D("2800.00")),
                         buyer=MARTIN, already_paid=D("1344.00"))
    raw = build_mail(
        "pdf_final_invoice_after_deposit", sender=DUPONT_MAIL, to=MARTIN_MAIL,
        sent=at("2026-11-26"), subject="Facture F-2026-0116 (solde dressing)",
        text="Bonjour,\n\nLe dressing est terminé, voici la facture de solde.\n" + SIGN_DUPONT,
        files=(pdf_file(inv),),
    )
    return Built(raw, [expect(inv)])


@case
def pdf_credit_note() -> Built:
    inv = dupont_invoice("AV-2026-008", "2026-11-26", None,
                         Line("Annulation partielle : plinthes non posées", D("12"),
                              D("6.50")),
                         buyer=CAFE, kind="credit_note", refers_to="F-2026-0111")
    raw = build_mail(
        "pdf_credit_note", sender=DUPONT_MAIL, to=CAFE_MAIL, sent=at("2026-11-26"),
        subject="Avoir AV-2026-008",
        text="Bonjour,\n\nVoici l'avoir pour les plinthes non posées, à déduire de la "
             "facture F-2026-0111.\n" + SIGN_DUPONT,
        files=(pdf_file(inv, filename="Avoir_AV-2026-008.pdf"),),
    )
    return Built(raw, [expect(inv)])


@case
def pdf_credit_note_english() -> Built:
    inv = Invoice("CN-2026-03", day("2026-11-27"), MOREAU, BRIGHT,
                  (Line("Workshop cancelled (refund)", D("1"), D("450.00")),),
                  vat_rate=D("0"), currency="USD", kind="credit_note",
                  refers_to="MC-2026-045")
    raw = build_mail(
        "pdf_credit_note_english", sender=MOREAU_MAIL, to=BRIGHT_MAIL, sent=at("2026-11-27"),
        subject="Credit note CN-2026-03 (invoice MC-2026-045)",
        text="Hello,\n\nAs the Paris workshop was cancelled, here is a credit note against "
             "invoice MC-2026-045.\n" + SIGN_MOREAU,
        files=(pdf_file(inv, lambda i: pdfs.layout_english(i, symbol="$",
                                                           total_label="Total credit"),
                        filename="CN-2026-03.pdf"),),
    )
    return Built(raw, [expect(inv)])


@case
def pdf_with_terms_page() -> Built:
    inv = dupont_invoice("F-2026-0117", "2026-11-27", "2026-12-27", PARQUET, buyer=BELLEVUE)
    pdf = pdfs.with_text_page(
        pdfs.layout_classic_fr(inv),
        "CONDITIONS GÉNÉRALES DE VENTE\nArticle 1 - Toute commande d'un montant supérieur à "
        "1 500,00 € donne lieu à un acompte de 30 %.\nArticle 2 - Nos factures sont payables "
        "à 30 jours. Indemnité forfaitaire pour frais de recouvrement : 40,00 €.\n"
        "Article 3 - Garantie : 2 ans pièces et main d'oeuvre.",
    )
    raw = build_mail(
        "pdf_with_terms_page", sender=DUPONT_MAIL, to=BELLEVUE_MAIL, sent=at("2026-11-27"),
        subject="Facture F-2026-0117 - parquet salle de restaurant",
        text="Bonjour,\n\nCi-joint notre facture et nos conditions générales.\n" + SIGN_DUPONT,
        files=(File("F-2026-0117.pdf", pdf),),
    )
    return Built(raw, [expect(inv)])


@case
def pdf_number_only_in_pdf() -> Built:
    inv = dupont_invoice("F-2026-0118", "2026-11-30", "2026-12-30", ESCALIER, buyer=CAFE)
    raw = build_mail(
        "pdf_number_only_in_pdf", sender=DUPONT_MAIL, to=CAFE_MAIL, sent=at("2026-11-30"),
        subject="Votre facture",
        text="Bonjour,\n\nComme promis, la facture de l'escalier.\n" + SIGN_DUPONT,
        files=(File("scan0042.pdf", pdfs.layout_classic_fr(inv)),),
    )
    return Built(raw, [expect(inv)])


@case
def pdf_octet_stream_english() -> Built:
    inv = Invoice("INV-2026-0071", day("2026-11-30"), MOREAU, ACME,
                  (Line("Advisory retainer, November", D("1"), D("1200.00")),),
                  vat_rate=D("0"), currency="EUR", due_date=day("2026-12-15"))
    raw = build_mail(
        "pdf_octet_stream_english", sender=MOREAU_MAIL, to=ACME_MAIL, sent=at("2026-11-30"),
        subject="November invoice",
        text="Hi John,\n\nNovember's invoice is attached.\n" + SIGN_MOREAU,
        files=(File("INV-2026-0071.PDF", pdfs.layout_english(inv, date_style="abbr"),
                    "application/octet-stream"),),
    )
    return Built(raw, [expect(inv)])


@case
def pdf_two_plain_invoices() -> Built:
    one = Invoice("2026-120", day("2026-11-16"), GIRARD, CAFE,
                  (Line("Remplacement chauffe-eau 200 L", D("1"), D("890.00")),
                   Line("Main d'oeuvre", D("3"), D("55.00"))),
                  vat_rate=D("10"), due_date=day("2026-11-30"))
    two = Invoice("2026-121", day("2026-11-16"), GIRARD, CAFE,
                  (Line("Débouchage canalisation cuisine", D("1"), D("140.00")),),
                  vat_rate=D("10"), due_date=day("2026-11-30"))
    raw = build_mail(
        "pdf_two_plain_invoices", sender=GIRARD_MAIL, to=CAFE_MAIL, sent=at("2026-11-16"),
        subject="Factures interventions du 14 novembre",
        text="Bonjour,\n\nVoici les deux factures (chauffe-eau et débouchage).\n\n"
             "Cordialement,\nMarc Girard\n",
        files=(pdf_file(one), pdf_file(two)),
    )
    return Built(raw, [expect(one), expect(two)])


# ============================================================================== re-sent, corrected


@case
def resent_invoice_reply() -> Built:
    """The client lost it: the firm answers in the thread with the same invoice again."""
    inv = dupont_invoice("F-2026-0101", "2026-11-02", "2026-12-02", PARQUET, PLINTHES,
                         terms="30 jours date de facture")
    raw = build_mail(
        "resent_invoice_reply", sender=DUPONT_MAIL, to=MARTIN_MAIL, sent=at("2026-11-20"),
        subject="Re: Facture F-2026-0101 - Atelier Dupont",
        in_reply_to="<fx_minimum_classic.202611021015@atelier-dupont.fr>",
        text="Bonjour Monsieur Martin,\n\nJe vous renvoie la facture en pièce jointe.\n"
             + SIGN_DUPONT + "\n> Bonjour, je ne retrouve pas la facture, pouvez-vous me la "
             "renvoyer ?\n",
        files=(fx_file(inv, "minimum"),),
    )
    return Built(raw, [expect(inv)])


@case
def resent_duplicate_copy() -> Built:
    inv = dupont_invoice("F-2026-0111", "2026-11-02", "2026-12-02", PARQUET, PLINTHES,
                         DEPLACEMENT, buyer=CAFE, terms="30 jours date de facture")
    raw = build_mail(
        "resent_duplicate_copy", sender=DUPONT_MAIL, to="compta@cafe-du-port.fr",
        cc=CAFE_MAIL, sent=at("2026-11-23"), subject="Duplicata facture F-2026-0111",
        text="Bonjour,\n\nÀ la demande de Mme Le Goff, voici un duplicata de la facture "
             "F-2026-0111 pour votre comptabilité.\n" + SIGN_DUPONT,
        files=(pdf_file(inv),),
    )
    return Built(raw, [expect(inv)])


@case
def corrected_invoice_new_number() -> Built:
    inv = dupont_invoice("F-2026-0140", "2026-11-25", "2026-12-15", ESCALIER,
                         Line("Vernis mat supplémentaire", D("1"), D("180.00")),
                         buyer=TILLEULS, refers_to="F-2026-0105",
                         notes=("Facture rectificative : annule et remplace la facture "
                                "F-2026-0105.",))
    raw = build_mail(
        "corrected_invoice_new_number", sender=DUPONT_MAIL, to=TILLEULS_MAIL,
        sent=at("2026-11-25"),
        subject="Facture rectificative F-2026-0140 (annule et remplace F-2026-0105)",
        text="Bonjour Madame,\n\nSuite à votre remarque, voici la facture rectificative qui "
             "inclut le vernis supplémentaire. Elle annule et remplace la facture "
             "F-2026-0105.\n" + SIGN_DUPONT,
        files=(pdf_file(inv, lambda i: pdfs.layout_classic_fr(
            i, title="FACTURE RECTIFICATIVE")),),
    )
    return Built(raw, [expect(inv)])


@case
def corrected_invoice_same_number() -> Built:
    inv = dupont_invoice("F-2026-0106", "2026-11-10", "2026-12-31", PARQUET, PLINTHES,
                         buyer=BELLEVUE, terms="45 jours fin de mois")
    raw = build_mail(
        "corrected_invoice_same_number", sender=DUPONT_MAIL, to=BELLEVUE_MAIL,
        sent=at("2026-11-12"), subject="Facture F-2026-0106 corrigée",
        text="Bonjour,\n\nUne erreur s'était glissée dans la facture F-2026-0106 : les "
             "plinthes manquaient. Voici la version corrigée, merci de ne pas tenir compte "
             "de la précédente.\n" + SIGN_DUPONT,
        files=(fx_file(inv, "basicwl"),),
    )
    return Built(raw, [expect(inv)])


@case
def credit_note_and_new_invoice() -> Built:
    credit = dupont_invoice("AV-2026-009", "2026-11-27", None, PLACARD, buyer=CAFE,
                            kind="credit_note", refers_to="F-2026-0104")
    new = dupont_invoice("F-2026-0141", "2026-11-27", "2026-12-27",
                         Line(PLACARD.label, D("1"), D("1650.00")), buyer=CAFE)
    raw = build_mail(
        "credit_note_and_new_invoice", sender=DUPONT_MAIL, to=CAFE_MAIL,
        sent=at("2026-11-27"), subject="Avoir AV-2026-009 et nouvelle facture F-2026-0141",
        text="Bonjour,\n\nComme convenu, la facture F-2026-0104 est annulée par l'avoir "
             "AV-2026-009 et remplacée par la facture F-2026-0141 au prix révisé.\n"
             + SIGN_DUPONT,
        files=(fx_file(credit, "en16931"), fx_file(new, "en16931")),
    )
    return Built(raw, [expect(credit), expect(new)])


# ============================================================================== body only


@case
def body_plumber_subject_number() -> Built:
    raw = build_mail(
        "body_plumber_subject_number", sender=GIRARD_MAIL, to=NGUYEN_MAIL,
        sent=at("2026-11-12", "19:05"), subject="Facture n° 2026-118 - Plomberie Girard",
        text="Bonjour Docteur,\n\nSuite à mon intervention du 12/11/2026 (fuite sous "
             "l'évier), voici ma facture :\n\n  Recherche de fuite et remplacement du "
             "siphon\n  Montant : 240,00 € TTC\n  Payable à réception.\n\nRIB joint à "
             "mes précédents messages.\n\nMarc Girard\n",
    )
    return Built(raw, [{"number": "2026-118", "kind": "invoice", "amount": "240.00",
                        "currency": "EUR", "issue_date": "2026-11-12",
                        "due_date": "2026-11-12"}])


@case
def body_plumber_number_in_text() -> Built:
    raw = build_mail(
        "body_plumber_number_in_text", sender=GIRARD_MAIL, to=CAFE_MAIL,
        sent=at("2026-11-19", "18:30"), subject="Intervention du 19 novembre",
        text="Bonjour,\n\nVoici ma facture n° 2026-119 pour le remplacement du robinet : "
             "180,00 € TTC, à régler sous 30 jours.\n\nMerci,\nMarc Girard\n",
    )
    return Built(raw, [{"number": "2026-119", "kind": "invoice", "amount": "180.00",
                        "currency": "EUR", "issue_date": "2026-11-19",
                        "due_date": "2026-12-19"}])


@case
def body_english_euro_prefix() -> Built:
    raw = build_mail(
        "body_english_euro_prefix", sender=KELLER_MAIL, to=ACME_MAIL, sent=at("2026-11-15"),
        subject="Invoice INV-3301",
        text="Dear John,\n\nInvoice INV-3301 - proofreading of the press kit\n\n"
             "Amount due: €1,234.56\nPayment due by 15 December 2026\n\nBank transfer to "
             "IBAN FR76 3000 4000 0500 0012 3456 789.\n" + SIGN_KELLER,
    )
    return Built(raw, [{"number": "INV-3301", "kind": "invoice", "amount": "1234.56",
                        "currency": "EUR", "issue_date": "2026-11-15",
                        "due_date": "2026-12-15"}])


@case
def body_dotted_amount_short_month() -> Built:
    raw = build_mail(
        "body_dotted_amount_short_month", sender=MOREAU_MAIL, to=TILLEULS_MAIL,
        sent=at("2026-11-16"), subject="Facture 2026-045 — 1.234,56 EUR — échéance 15 déc. 2026",
        text="Bonjour,\n\nComme indiqué en objet. Détail de la mission sur demande.\n\n"
             "Olivier Moreau\n",
    )
    return Built(raw, [{"number": "2026-045", "kind": "invoice", "amount": "1234.56",
                        "currency": "EUR", "issue_date": "2026-11-16",
                        "due_date": "2026-12-15"}])


@case
def body_html_software_no_pdf() -> Built:
    html = (
        "<html><head><style>td{font-family:Arial}</style></head><body>"
        "<p>Bonjour,</p><p>Veuillez trouver votre facture <b>F-2026-0150</b> émise le "
        "20/11/2026.</p><table><tr><td>Montant TTC :</td><td>EUR 1 980,00</td></tr>"
        "<tr><td>Date d'échéance :</td><td>2026-12-20</td></tr></table>"
        "<p><a href='https://app.example-facturation.fr/d/F-2026-0150'>Télécharger la "
        "facture (PDF)</a></p><p>Atelier Dupont</p></body></html>"
    )
    raw = build_mail(
        "body_html_software_no_pdf", sender=DUPONT_SOFTWARE, to=TILLEULS_MAIL,
        sent=at("2026-11-20", "07:30"), subject="Votre facture F-2026-0150 est disponible",
        html=html, headers=(("X-Mailer", "Facturation-Express 4.2"),),
    )
    return Built(raw, [{"number": "F-2026-0150", "kind": "invoice", "amount": "1980.00",
                        "currency": "EUR", "issue_date": "2026-11-20",
                        "due_date": "2026-12-20"}])


@case
def body_terms_end_of_month() -> Built:
    raw = build_mail(
        "body_terms_end_of_month", sender=MOREAU_MAIL, to=TILLEULS_MAIL,
        sent=at("2026-11-17"), subject="Facture MC-2026-048",
        text="Bonjour,\n\nFacture MC-2026-048 du 17/11/2026 : accompagnement octobre, "
             "2 600,00 € HT soit 3 120,00 € TTC, payable à 45 jours fin de mois.\n\n"
             "Olivier Moreau\n",
        text_cte="quoted-printable",
    )
    # 17/11 + 45 days = 01/01/2027, then the end of that month (Code de commerce L441-10)
    return Built(raw, [{"number": "MC-2026-048", "kind": "invoice", "amount": "3120.00",
                        "currency": "EUR", "issue_date": "2026-11-17",
                        "due_date": "2027-01-31"}])


@case
def body_forgot_the_attachment() -> Built:
    """'Ci-joint' and no attachment: kept with the amount missing, never dropped."""
    raw = build_mail(
        "body_forgot_the_attachment", sender=DUPONT_MAIL, to=MARTIN_MAIL,
        sent=at("2026-11-23"), subject="Facture F-2026-0151",
        text="Bonjour,\n\nVeuillez trouver ci-joint notre facture.\n" + SIGN_DUPONT,
    )
    return Built(raw, [{"number": "F-2026-0151", "kind": "invoice", "amount": None,
                        "currency": "EUR", "issue_date": "2026-11-23", "due_date": None}])


@case
def body_freelance_euros_word() -> Built:
    raw = build_mail(
        "body_freelance_euros_word", sender=LEMOINE_MAIL, to=NGUYEN_MAIL,
        sent=at("2026-11-24"), subject="Facture 2026-033 - cartes de visite",
        text="Bonjour Docteur Nguyen,\n\nFacture 2026-033 : conception des cartes de "
             "visite, 450 euros (TVA non applicable, art. 293 B du CGI), à régler par "
             "virement avant le 24/12/2026.\n" + SIGN_LEMOINE,
    )
    return Built(raw, [{"number": "2026-033", "kind": "invoice", "amount": "450.00",
                        "currency": "EUR", "issue_date": "2026-11-24",
                        "due_date": "2026-12-24"}])


@case
def body_two_invoices_listed() -> Built:
    """Two invoices in the text, no attachment: each number with its own amount."""
    raw = build_mail(
        "body_two_invoices_listed", sender=GIRARD_MAIL, to=BELLEVUE_MAIL,
        sent=at("2026-11-25"), subject="Factures 2026-122 et 2026-123",
        text="Bonjour,\n\nVoici mes deux factures de novembre :\n"
             "- facture n° 2026-122 (chambres 12 et 14) : 320,00 € TTC\n"
             "- facture n° 2026-123 (cuisine) : 185,00 € TTC\n"
             "Règlement à 30 jours.\n\nMarc Girard\n",
    )
    return Built(raw, [
        {"number": "2026-122", "kind": "invoice", "amount": "320.00", "currency": "EUR",
         "issue_date": "2026-11-25", "due_date": "2026-12-25"},
        {"number": "2026-123", "kind": "invoice", "amount": "185.00", "currency": "EUR",
         "issue_date": "2026-11-25", "due_date": "2026-12-25"},
    ])


@case
def body_owner_personal_address_english() -> Built:
    raw = build_mail(
        "body_owner_personal_address_english", sender=DUPONT_OWNER, to=ACME_MAIL,
        sent=at("2026-11-26"), subject="Invoice F-2026-0152 - shelving for your Lyon office",
        text="Dear Mr Smith,\n\nInvoice number: F-2026-0152\nInvoice date: 26/11/2026\n"
             "Total amount: EUR 2,760.00 (VAT incl.)\nDue date: 26/12/2026\n\n"
             "Kind regards,\nJean Dupont\n",
    )
    return Built(raw, [{"number": "F-2026-0152", "kind": "invoice", "amount": "2760.00",
                        "currency": "EUR", "issue_date": "2026-11-26",
                        "due_date": "2026-12-26"}])


# ============================================================================== not invoices


@case
def quote_in_subject() -> Built:
    raw = build_mail(
        "quote_in_subject", sender=DUPONT_MAIL, to=BELLEVUE_MAIL, sent=at("2026-10-20"),
        subject="Devis D-2026-018 - cuisine sur mesure",
        text="Bonjour,\n\nVoici notre devis pour la cuisine. L'acompte de 30 % vous sera "
             "facturé à la signature.\n" + SIGN_DUPONT,
        files=(File("Devis_D-2026-018.pdf", pdfs.layout_quote_fr(
            "D-2026-018", day("2026-10-20"), DUPONT, BELLEVUE,
            (Line("Cuisine sur mesure", D("1"), D("8400.00")),))),),
    )
    return Built(raw, [])


@case
def quote_hidden_behind_subject() -> Built:
    raw = build_mail(
        "quote_hidden_behind_subject", sender=DUPONT_MAIL, to=MARTIN_MAIL,
        sent=at("2026-10-28"), subject="Proposition pour votre dressing",
        text="Bonjour,\n\nSuite à notre visite, voici notre proposition chiffrée.\n"
             + SIGN_DUPONT,
        files=(File("proposition-dressing.pdf", pdfs.layout_quote_fr(
            "D-2026-021", day("2026-10-28"), DUPONT, MARTIN,
            (Line("Dressing sur mesure", D("1"), D("2800.00")),))),),
    )
    return Built(raw, [])


@case
def quote_english() -> Built:
    raw = build_mail(
        "quote_english", sender=MOREAU_MAIL, to=BRIGHT_MAIL, sent=at("2026-10-15"),
        subject="Quotation Q-2026-09: market entry study",
        text="Hello,\n\nAs discussed, our quotation: phase 1 USD 3,800.00, phase 2 USD "
             "5,200.00. We invoice each phase on delivery, payment net 30.\n" + SIGN_MOREAU,
    )
    return Built(raw, [])


@case
def order_confirmation() -> Built:
    raw = build_mail(
        "order_confirmation", sender=DUPONT_MAIL, to=BELLEVUE_MAIL, sent=at("2026-11-05"),
        subject="Confirmation de commande CMD-5521",
        text="Bonjour,\n\nNous confirmons votre commande n° CMD-5521 d'un montant de "
             "8 400,00 € HT. La facture d'acompte suivra ; la facture de solde sera "
             "émise à la pose.\n" + SIGN_DUPONT,
        files=(File("BDC-CMD-5521.pdf", pdfs.layout_quote_fr(
            "CMD-5521", day("2026-11-05"), DUPONT, BELLEVUE,
            (Line("Cuisine sur mesure", D("1"), D("8400.00")),), title="BON DE COMMANDE")),),
    )
    return Built(raw, [])


@case
def pro_forma() -> Built:
    inv = dupont_invoice("PF-2026-004", "2026-11-05", "2026-11-20", PLACARD, buyer=ACME)
    raw = build_mail(
        "pro_forma", sender=DUPONT_MAIL, to=ACME_MAIL, sent=at("2026-11-05"),
        subject="Facture pro forma PF-2026-004",
        text="Bonjour,\n\nVoici la facture pro forma demandée pour votre service achats.\n"
             + SIGN_DUPONT,
        files=(pdf_file(inv, lambda i: pdfs.layout_classic_fr(i, title="FACTURE PRO FORMA")),),
    )
    return Built(raw, [])


@case
def delivery_note() -> Built:
    raw = build_mail(
        "delivery_note", sender=DUPONT_MAIL, to=TILLEULS_MAIL, sent=at("2026-11-08"),
        subject="Bon de livraison BL-2026-889",
        text="Bonjour,\n\nCi-joint le bon de livraison signé. La facture suivra.\n"
             + SIGN_DUPONT,
        files=(File("BL-2026-889.pdf", pdfs.layout_quote_fr(
            "BL-2026-889", day("2026-11-08"), DUPONT, TILLEULS, (PLACARD,),
            title="BON DE LIVRAISON")),),
    )
    return Built(raw, [])


@case
def newsletter() -> Built:
    raw = build_mail(
        "newsletter", sender="Atelier Dupont <news@atelier-dupont.fr>",
        to="clients@atelier-dupont.fr", sent=at("2026-11-10", "06:00"),
        subject="La facture électronique arrive : ce qui change pour vous",
        html="<html><body><h1>Les nouvelles de l'Atelier</h1><p>Dès 2026, chaque facture "
             "(par exemple notre facture n° F-2026-0001 de 1 200,00 €) vous parviendra "
             "au format Factur-X.</p><p><a href='https://atelier-dupont.fr/unsub'>Se "
             "désinscrire</a></p></body></html>",
        headers=(("List-Unsubscribe", "<https://atelier-dupont.fr/unsub>"),
                 ("Precedence", "bulk")),
    )
    return Built(raw, [])


@case
def reply_about_past_invoice() -> Built:
    raw = build_mail(
        "reply_about_past_invoice", sender=DUPONT_MAIL, to=MARTIN_MAIL,
        sent=at("2026-12-03"), subject="Re: Facture F-2026-0101 - Atelier Dupont",
        in_reply_to="<fx_minimum_classic.202611021015@atelier-dupont.fr>",
        text="Bonjour Monsieur Martin,\n\nBien reçu votre virement de 1 090,80 € pour la "
             "facture F-2026-0101, merci !\n" + SIGN_DUPONT,
    )
    return Built(raw, [])


@case
def mention_of_past_invoice() -> Built:
    raw = build_mail(
        "mention_of_past_invoice", sender=DUPONT_MAIL, to=TILLEULS_MAIL,
        sent=at("2026-11-20"), subject="Chantier avenue Jean Jaurès : planning",
        text="Bonjour Madame,\n\nComme indiqué sur notre facture F-2026-0102 du 03/11/2026, "
             "la pose des portes aura lieu la semaine du 7 décembre. Pouvez-vous nous "
             "confirmer l'accès au local ?\n" + SIGN_DUPONT,
    )
    return Built(raw, [])


@case
def relance_own_reminder() -> Built:
    """relance's own first reminder, invoice PDF attached again: never a new invoice."""
    inv = dupont_invoice("F-2026-0102", "2026-11-03", "2026-12-18", PLACARD, DEPLACEMENT,
                         buyer=TILLEULS, terms="Paiement à 45 jours")
    raw = build_mail(
        "relance_own_reminder", sender=DUPONT_MAIL, to=TILLEULS_MAIL,
        sent=at("2026-12-23", "08:45"), subject="Re: Votre facture n°F-2026-0102",
        in_reply_to="<fx_basicwl_due_in_xml.202611031015@atelier-dupont.fr>",
        headers=(("X-Relance-Step", "1"), ("X-Relance-Invoice", "F-2026-0102"),
                 ("Auto-Submitted", "auto-generated")),
        text="Madame, Monsieur,\n\nSauf erreur de notre part, la facture n° F-2026-0102 "
             "d'un montant de 2 274,00 €, échue le 18/12/2026, reste impayée.\n"
             + SIGN_DUPONT,
        files=(fx_file(inv, "basicwl"),),
    )
    return Built(raw, [])


@case
def manual_reminder_with_pdf() -> Built:
    inv = dupont_invoice("F-2026-0111", "2026-11-02", "2026-12-02", PARQUET, PLINTHES,
                         DEPLACEMENT, buyer=CAFE, terms="30 jours date de facture")
    raw = build_mail(
        "manual_reminder_with_pdf", sender=DUPONT_OWNER, to=CAFE_MAIL, sent=at("2026-12-09"),
        subject="Rappel : facture F-2026-0111 en attente de règlement",
        text="Bonjour,\n\nSauf erreur, la facture F-2026-0111 échue le 02/12/2026 n'est pas "
             "encore réglée. Je vous la joins à nouveau.\n" + SIGN_DUPONT,
        files=(pdf_file(inv),),
    )
    return Built(raw, [])


@case
def payment_notice_bank() -> Built:
    raw = build_mail(
        "payment_notice_bank", sender="Ma Banque Pro <ne-pas-repondre@mabanquepro.fr>",
        to="compta@atelier-dupont.fr", sent=at("2026-12-04", "07:12"),
        subject="Avis de virement reçu",
        text="Bonjour,\n\nVous avez reçu un virement SEPA.\nMontant : 1 090,80 EUR\n"
             "Émetteur : BOULANGERIE MARTIN\nLibellé : FACTURE F-2026-0101\n"
             "Date de valeur : 04/12/2026\n",
    )
    return Built(raw, [])


@case
def payment_receipt_provider() -> Built:
    raw = build_mail(
        "payment_receipt_provider", sender="Stripe <receipts@stripe.com>",
        to="olivier.moreau@moreau-conseil.fr", sent=at("2026-12-06"),
        subject="Payment received for invoice MC-2026-045",
        text="Brightside Inc. paid invoice MC-2026-045.\n\nAmount paid: $4,250.00\n"
             "Date paid: December 6, 2026\nPayment method: ACH transfer\n",
    )
    return Built(raw, [])


@case
def general_terms_only() -> Built:
    raw = build_mail(
        "general_terms_only", sender=KELLER_MAIL, to=HELVETIA_MAIL, sent=at("2026-11-02"),
        subject="Nos conditions générales de vente 2027",
        text="Bonjour,\n\nVous trouverez ci-joint nos conditions générales, applicables à "
             "toute facture émise à partir du 1er janvier 2027.\n\nAnna Keller\n",
        files=(File("CGV-2027.pdf", pdfs.layout_terms_fr(KELLER)),),
    )
    return Built(raw, [])


@case
def statement_of_account() -> Built:
    raw = build_mail(
        "statement_of_account", sender=DUPONT_MAIL, to=TILLEULS_MAIL, sent=at("2026-11-30"),
        subject="Relevé de compte au 30/11/2026",
        text="Bonjour,\n\nPour votre information, voici l'état de votre compte :\n"
             "- facture F-2026-0102 du 03/11/2026 : 2 274,00 €\n"
             "- avoir AV-2026-007 du 06/11/2026 : -180,00 €\n"
             "Solde dû : 2 094,00 €\n" + SIGN_DUPONT,
    )
    return Built(raw, [])


@case
def auto_reply_from_client() -> Built:
    raw = build_mail(
        "auto_reply_from_client", sender=MARTIN_MAIL, to="compta@atelier-dupont.fr",
        sent=at("2026-11-02", "10:16"),
        subject="Réponse automatique : Facture F-2026-0101 - Atelier Dupont",
        headers=(("Auto-Submitted", "auto-replied"),),
        text="Je suis absent jusqu'au 9 novembre. Pour toute urgence : 04 78 11 22 33.\n",
    )
    return Built(raw, [])


@case
def unrelated_site_visit() -> Built:
    raw = build_mail(
        "unrelated_site_visit", sender=DUPONT_OWNER, to=BELLEVUE_MAIL, sent=at("2026-11-04"),
        subject="Rendez-vous chantier jeudi 10 h",
        text="Bonjour,\n\nJe passerai jeudi à 10 h pour les mesures de la cuisine. Prévoir "
             "environ 1 h 30.\n" + SIGN_DUPONT,
    )
    return Built(raw, [])


@case
def purchase_order_from_client() -> Built:
    raw = build_mail(
        "purchase_order_from_client", sender=ACME_MAIL, to="compta@atelier-dupont.fr",
        sent=at("2026-11-03"), subject="Purchase order PO-7781",
        text="Hello,\n\nPlease find our purchase order PO-7781 for the shelving "
             "(EUR 2,760.00). Please quote the PO number on your invoice.\n\nAcme AP team\n",
    )
    return Built(raw, [])


@case
def supplier_invoice_forwarded_to_accountant() -> Built:
    """The firm forwards a supplier's invoice to its accountant: not the firm's claim."""
    supplier = Party("Bois & Matériaux SA", ("ZI Nord", "69120 Vaulx-en-Velin"),
                     siret="302 111 222 00019", vat_id="FR90302111222")
    inv = Invoice("BM-88213", day("2026-11-05"), supplier, DUPONT,
                  (Line("Chêne massif 27 mm (m²)", D("40"), D("61.00")),),
                  due_date=day("2026-12-05"))
    raw = build_mail(
        "supplier_invoice_forwarded_to_accountant", sender=DUPONT_MAIL,
        to="Cabinet Fiduciaire <pieces@fiduciaire-rhone.fr>", sent=at("2026-11-07"),
        subject="TR: Votre facture BM-88213",
        text="Pour la compta de novembre.\n\n-------- Message transféré --------\n"
             "De : Bois & Matériaux <factures@bois-materiaux.fr>\n"
             "Objet : Votre facture BM-88213\n\nBonjour, veuillez trouver votre facture.\n",
        files=(pdf_file(inv),),
    )
    return Built(raw, [])


# ============================================================================== hostile


@case
def hostile_encrypted_pdf() -> Built:
    inv = dupont_invoice("F-2026-0160", "2026-11-24", "2026-12-24", PLACARD, buyer=ACME)
    raw = build_mail(
        "hostile_encrypted_pdf", sender=DUPONT_SOFTWARE, to=ACME_MAIL, sent=at("2026-11-24"),
        subject="Facture F-2026-0160",
        text="Bonjour,\n\nVotre facture est protégée : le mot de passe est votre code "
             "client.\n",
        files=(File("F-2026-0160.pdf", pdfs.encrypted(pdfs.layout_classic_fr(inv),
                                                       "C0042")),),
    )
    return Built(raw, [{"number": "F-2026-0160", "kind": "invoice", "amount": None,
                        "currency": "EUR", "issue_date": "2026-11-24", "due_date": None,
                        "notes": ["encrypted"]}])


@case
def hostile_encrypted_empty_password() -> Built:
    """Print/copy restrictions only (empty user password): read as any other PDF."""
    inv = dupont_invoice("F-2026-0161", "2026-11-24", "2026-12-24", PARQUET, buyer=MARTIN)
    raw = build_mail(
        "hostile_encrypted_empty_password", sender=DUPONT_MAIL, to=MARTIN_MAIL,
        sent=at("2026-11-24"), subject="Facture F-2026-0161",
        text="Bonjour,\n\nCi-joint la facture.\n" + SIGN_DUPONT,
        files=(File("F-2026-0161.pdf", pdfs.encrypted(pdfs.layout_classic_fr(inv), "")),),
    )
    return Built(raw, [expect(inv)])


@case
def hostile_truncated_pdf() -> Built:
    inv = Invoice("INV-5501", day("2026-11-20"), MOREAU, ACME,
                  (Line("Advisory", D("1"), D("900.00")),), vat_rate=D("0"),
                  due_date=day("2026-12-20"))
    raw = build_mail(
        "hostile_truncated_pdf", sender=MOREAU_MAIL, to=ACME_MAIL, sent=at("2026-11-20"),
        subject="Invoice INV-5501",
        text="Hello,\n\nInvoice INV-5501 attached. Amount due: €900.00, due 2026-12-20.\n"
             + SIGN_MOREAU,
        files=(File("INV-5501.pdf", pdfs.truncated(pdfs.layout_english(inv))),),
    )
    return Built(raw, [{"number": "INV-5501", "kind": "invoice", "amount": "900.00",
                        "currency": "EUR", "issue_date": "2026-11-20",
                        "due_date": "2026-12-20", "notes": ["unreadable"]}])


@case
def hostile_flate_bomb() -> Built:
    raw = build_mail(
        "hostile_flate_bomb", sender=DUPONT_MAIL, to=CAFE_MAIL, sent=at("2026-11-25"),
        subject="Facture F-2026-0162",
        text="Bonjour,\n\nFacture F-2026-0162 ci-jointe, montant 540,00 € TTC, échéance "
             "le 25/12/2026.\n" + SIGN_DUPONT,
        files=(File("F-2026-0162.pdf", pdfs.flate_bomb_pdf()),),
    )
    return Built(raw, [{"number": "F-2026-0162", "kind": "invoice", "amount": "540.00",
                        "currency": "EUR", "issue_date": "2026-11-25",
                        "due_date": "2026-12-25", "notes": ["F-2026-0162.pdf"]}])


@case
def hostile_xml_bomb_in_facturx() -> Built:
    """The embedded XML inflates to a gigabyte; the PDF text must still be read."""
    inv = dupont_invoice("F-2026-0163", "2026-11-25", "2026-12-25", ESCALIER, buyer=MARTIN)
    raw = build_mail(
        "hostile_xml_bomb_in_facturx", sender=DUPONT_MAIL, to=MARTIN_MAIL,
        sent=at("2026-11-25"), subject="Facture F-2026-0163",
        text="Bonjour,\n\nCi-joint la facture.\n" + SIGN_DUPONT,
        files=(File("F-2026-0163.pdf", pdfs.xml_bomb_facturx(pdfs.layout_classic_fr(inv))),),
    )
    return Built(raw, [expect(inv, notes=["factur-x.xml"])])


@case
def hostile_zip_named_pdf() -> Built:
    raw = build_mail(
        "hostile_zip_named_pdf", sender=DUPONT_MAIL, to=CAFE_MAIL, sent=at("2026-11-26"),
        subject="Facture F-2026-0164",
        text="Bonjour,\n\nVoici la facture F-2026-0164 : 96,00 € TTC à régler à réception.\n"
             + SIGN_DUPONT,
        files=(File("F-2026-0164.pdf", pdfs.zip_as_pdf(20 << 20)),),
    )
    return Built(raw, [{"number": "F-2026-0164", "kind": "invoice", "amount": "96.00",
                        "currency": "EUR", "issue_date": "2026-11-26",
                        "due_date": "2026-11-26", "notes": ["unreadable"]}])


@case
def hostile_small_scan() -> Built:
    """A scanned invoice (images only): no text, the facts come from the mail."""
    raw = build_mail(
        "hostile_small_scan", sender=GIRARD_MAIL, to=NGUYEN_MAIL, sent=at("2026-11-27"),
        subject="Facture 2026-124 (scannée)",
        text="Bonjour,\n\nVoici la facture scannée. Montant : 310,00 € TTC, "
             "échéance le 27/12/2026.\n\nMarc Girard\n",
        files=(File("scan_20261127.pdf", pdfs.scanned_pdf(2, 24_000)),),
    )
    return Built(raw, [{"number": "2026-124", "kind": "invoice", "amount": "310.00",
                        "currency": "EUR", "issue_date": "2026-11-27",
                        "due_date": "2026-12-27", "notes": ["no text"]}])


# ============================================================================== held out
# Written after the extractor was tuned on the cases above, and measured once before any
# change; the report prints their figures apart (see report.py). That first measure, on 21
# mails: precision 14/15, recall 14/17, kind 13/14, due date 13/14, other facts 14/14. The
# misses ("facture d'avoir", "prélevée le", "Friendly nudge", "(n°2026-14)", a due date with
# no year, "Facture ... et devis ..." in one subject) were fixed afterwards, so these mails
# are held out no longer; heldout_html_cells_without_colons still fails (see test_corpus).


@case
def heldout_sage_style_totals() -> Built:
    pdf = pdfs.layout_lines(
        "Atelier Dupont - 12 rue des Tanneurs - 69003 Lyon", "FACTURE",
        "N° Facture : FA00123          Date : 03/12/2026",
        "Date d'échéance : 02/01/2027", "Client : SCI Les Tilleuls",
        ("Total H.T.", "1 250,00"), ("T.V.A. 20,00 %", "250,00"),
        ("Total T.T.C.", "1 500,00"), ("Montant dû", "1 500,00 EUR"),
    )
    raw = build_mail(
        "heldout_sage_style_totals", sender=DUPONT_MAIL, to=TILLEULS_MAIL,
        sent=at("2026-12-03"), subject="Facture FA00123",
        text="Bonjour,\n\nVeuillez trouver ci-joint la facture FA00123.\n" + SIGN_DUPONT,
        files=(File("FA00123.pdf", pdf),),
    )
    return Built(raw, [{"number": "FA00123", "kind": "invoice", "amount": "1500.00",
                        "currency": "EUR", "issue_date": "2026-12-03",
                        "due_date": "2027-01-02"}])


@case
def heldout_english_net_45() -> Built:
    pdf = pdfs.layout_lines(
        "Moreau Conseil SARL", "INVOICE", "Invoice No. 2026/118", "Date: 3 Dec 2026",
        "Customer: Acme Publishing Ltd", "Terms: Net 45",
        ("Consulting services, November 2026", "€2,875.00"), ("VAT 20%", "€575.00"),
        ("TOTAL DUE", "€3,450.00"),
    )
    raw = build_mail(
        "heldout_english_net_45", sender=MOREAU_MAIL, to=ACME_MAIL, sent=at("2026-12-03"),
        subject="Invoice 2026/118", text="Hi John,\n\nInvoice attached.\n" + SIGN_MOREAU,
        files=(File("Invoice-2026-118.pdf", pdf),),
    )
    return Built(raw, [{"number": "2026/118", "kind": "invoice", "amount": "3450.00",
                        "currency": "EUR", "issue_date": "2026-12-03",
                        "due_date": "2027-01-17"}])


@case
def heldout_informal_body_no_year() -> Built:
    raw = build_mail(
        "heldout_informal_body_no_year", sender=LEMOINE_MAIL, to="julie.r@gmail.com",
        sent=at("2026-12-04"), subject="Les photos + la facture",
        text="Coucou Julie,\n\nLes photos sont en ligne ! Comme convenu je t'envoie ma "
             "facture (n°2026-14) pour le reportage : 1 200 €. Tu peux me régler d'ici le "
             "15 janvier ?\n\nBises,\nClaire\n",
    )
    return Built(raw, [{"number": "2026-14", "kind": "invoice", "amount": "1200.00",
                        "currency": "EUR", "issue_date": "2026-12-04",
                        "due_date": "2027-01-15"}])


@case
def heldout_facturx_extended() -> Built:
    inv = dupont_invoice("F-2026-0201", "2026-12-04", "2027-01-04", PLACARD, PARQUET,
                         buyer=BELLEVUE, terms="30 jours")
    xml = bytes(pdfs.facturx.generate_cii_xml(pdfs.cii_data(inv, "extended"),
                                              level="extended", check_schematron=False))
    raw = build_mail(
        "heldout_facturx_extended", sender=DUPONT_SOFTWARE, to=BELLEVUE_MAIL,
        sent=at("2026-12-04"), subject="Document F-2026-0201",
        text="Bonjour,\n\nVotre document est joint.\n",
        files=(File("F-2026-0201.pdf", pdfs.facturx_pdf(pdfs.layout_classic_fr(inv), xml)),),
    )
    return Built(raw, [expect(inv)])


@case
def heldout_ubl_only() -> Built:
    inv = Invoice("2026-0456", day("2026-12-05"), MOREAU, TILLEULS,
                  (Line("Mission d'audit", D("1"), D("3200.00")),), due_date=day("2027-01-05"))
    raw = build_mail(
        "heldout_ubl_only", sender=MOREAU_MAIL, to=TILLEULS_MAIL, sent=at("2026-12-05"),
        subject="Invoice 2026-0456 (UBL)",
        text="Bonjour,\n\nLa facture au format UBL est jointe.\n\nOlivier Moreau\n",
        files=(File("2026-0456.xml", pdfs.ubl_invoice_xml(inv), "application/xml"),),
    )
    return Built(raw, [expect(inv)])


@case
def heldout_credit_note_body_only() -> Built:
    raw = build_mail(
        "heldout_credit_note_body_only", sender=GIRARD_MAIL, to=NGUYEN_MAIL,
        sent=at("2026-12-05"), subject="Avoir AV-12",
        text="Bonjour Docteur,\n\nSuite à l'erreur sur le déplacement, voici l'avoir n° AV-12 "
             "de 60,00 € TTC sur la facture 2026-118.\n\nMarc Girard\n",
    )
    return Built(raw, [{"number": "AV-12", "kind": "credit_note", "amount": "60.00",
                        "currency": "EUR", "issue_date": "2026-12-05", "due_date": None,
                        "refers_to": ["2026-118"]}])


@case
def heldout_amount_in_words() -> Built:
    pdf = pdfs.layout_lines(
        "Plomberie Girard", "FACTURE N° 2026-130", "Nantes, le 6 décembre 2026",
        "Doit : Café du Port", ("Remplacement ballon d'eau chaude", "1 090,91 €"),
        ("TVA 10 %", "109,09 €"), ("TOTAL TTC", "1 200,00 €"),
        "Arrêtée la présente facture à la somme de mille deux cents euros (1 200,00 €).",
        "Paiement à 15 jours.",
    )
    raw = build_mail(
        "heldout_amount_in_words", sender=GIRARD_MAIL, to=CAFE_MAIL, sent=at("2026-12-06"),
        subject="Facture 2026-130", text="Bonjour,\n\nCi-joint ma facture.\n\nMarc Girard\n",
        files=(File("Facture 2026-130.pdf", pdf),),
    )
    return Built(raw, [{"number": "2026-130", "kind": "invoice", "amount": "1200.00",
                        "currency": "EUR", "issue_date": "2026-12-06",
                        "due_date": "2026-12-21"}])


@case
def heldout_discount_and_early_payment() -> Built:
    pdf = pdfs.layout_lines(
        "Atelier Dupont", "FACTURE", "Facture n° F-2026-0202", "Date de facture : 07/12/2026",
        "Échéance : 06/01/2027", ("Total TTC avant remise", "2 400,00 €"),
        ("Remise fidélité 5 %", "-120,00 €"), ("Net à payer", "2 280,00 €"),
        "Escompte 2 % pour paiement sous 8 jours : 45,60 €.",
    )
    raw = build_mail(
        "heldout_discount_and_early_payment", sender=DUPONT_MAIL, to=MARTIN_MAIL,
        sent=at("2026-12-07"), subject="Facture F-2026-0202",
        text="Bonjour,\n\nCi-joint la facture.\n" + SIGN_DUPONT,
        files=(File("F-2026-0202.pdf", pdf),),
    )
    return Built(raw, [{"number": "F-2026-0202", "kind": "invoice", "amount": "2280.00",
                        "currency": "EUR", "issue_date": "2026-12-07",
                        "due_date": "2027-01-06"}])


@case
def heldout_retention_money() -> Built:
    pdf = pdfs.layout_lines(
        "Atelier Dupont", "FACTURE DE SITUATION N° 3", "Facture n° F-2026-0203 du 08/12/2026",
        "Chantier : Hôtel Bellevue - aménagement du hall",
        ("Montant des travaux HT", "10 000,00 €"), ("TVA 20 %", "2 000,00 €"),
        ("Total TTC", "12 000,00 €"), ("Retenue de garantie 5 %", "-600,00 €"),
        ("Net à payer", "11 400,00 €"), "Règlement à 45 jours fin de mois.",
    )
    raw = build_mail(
        "heldout_retention_money", sender=DUPONT_MAIL, to=BELLEVUE_MAIL,
        sent=at("2026-12-08"), subject="Situation n° 3 - facture F-2026-0203",
        text="Bonjour,\n\nVeuillez trouver la situation n° 3.\n" + SIGN_DUPONT,
        files=(File("F-2026-0203.pdf", pdf),),
    )
    return Built(raw, [{"number": "F-2026-0203", "kind": "invoice", "amount": "11400.00",
                        "currency": "EUR", "issue_date": "2026-12-08",
                        "due_date": "2027-01-31"}])


@case
def heldout_usd_with_euro_equivalent() -> Built:
    pdf = pdfs.layout_lines(
        "Keller Traductions", "INVOICE", "Invoice number: KT-2026-130",
        "Invoice date: December 8, 2026", "Due date: January 7, 2027",
        ("Translation, 8,000 words", "USD 2,000.00"),
        ("Total due", "USD 2,000.00"), "(For information: approx. EUR 1,850.00)",
    )
    raw = build_mail(
        "heldout_usd_with_euro_equivalent", sender=KELLER_MAIL, to=BRIGHT_MAIL,
        sent=at("2026-12-08"), subject="Invoice KT-2026-130",
        text="Hello,\n\nPlease find my invoice attached.\n" + SIGN_KELLER,
        files=(File("KT-2026-130.pdf", pdf),),
    )
    return Built(raw, [{"number": "KT-2026-130", "kind": "invoice", "amount": "2000.00",
                        "currency": "USD", "issue_date": "2026-12-08",
                        "due_date": "2027-01-07"}])


@case
def heldout_quote_accepted() -> Built:
    raw = build_mail(
        "heldout_quote_accepted", sender=DUPONT_MAIL, to=BELLEVUE_MAIL, sent=at("2026-12-09"),
        subject="Votre accord pour la cuisine",
        text="Bonjour,\n\nMerci pour votre accord sur le devis D-2026-018 (8 400,00 € HT). "
             "La facture d'acompte suivra dans la semaine.\n" + SIGN_DUPONT,
    )
    return Built(raw, [])


@case
def heldout_receipted_invoice() -> Built:
    inv = dupont_invoice("F-2026-0099", "2026-10-15", "2026-11-14", PLINTHES, buyer=MARTIN)
    raw = build_mail(
        "heldout_receipted_invoice", sender=DUPONT_MAIL, to=MARTIN_MAIL, sent=at("2026-12-09"),
        subject="Facture acquittée F-2026-0099",
        text="Bonjour,\n\nComme demandé, voici la facture acquittée pour votre assurance.\n"
             + SIGN_DUPONT,
        files=(pdf_file(inv, lambda i: pdfs.layout_classic_fr(i, title="FACTURE ACQUITTÉE")),),
    )
    return Built(raw, [])


@case
def heldout_invoice_and_quote_pdfs() -> Built:
    inv = dupont_invoice("F-2026-0204", "2026-12-10", "2027-01-09", PARQUET, buyer=TILLEULS)
    raw = build_mail(
        "heldout_invoice_and_quote_pdfs", sender=DUPONT_MAIL, to=TILLEULS_MAIL,
        sent=at("2026-12-10"), subject="Facture parquet et devis escalier",
        text="Bonjour,\n\nCi-joint la facture du parquet, et le devis pour l'escalier que "
             "vous m'aviez demandé.\n" + SIGN_DUPONT,
        files=(pdf_file(inv), File("Devis_D-2026-030.pdf", pdfs.layout_quote_fr(
            "D-2026-030", day("2026-12-10"), DUPONT, TILLEULS, (ESCALIER,)))),
    )
    return Built(raw, [expect(inv)])


@case
def heldout_uk_vat_invoice() -> Built:
    pdf = pdfs.layout_lines(
        "Keller Traductions", "VAT INVOICE", "Invoice Number 10045", "Tax Point 11/12/2026",
        "To: Acme Publishing Ltd", ("Editing, 'Provence' manuscript", "£800.00"),
        ("VAT @ 20%", "£160.00"), ("Total GBP", "£960.00"), "Payment due within 30 days.",
    )
    raw = build_mail(
        "heldout_uk_vat_invoice", sender=KELLER_MAIL, to=ACME_MAIL, sent=at("2026-12-11"),
        subject="Invoice 10045", text="Dear John,\n\nInvoice attached.\n" + SIGN_KELLER,
        files=(File("10045.pdf", pdf),),
    )
    return Built(raw, [{"number": "10045", "kind": "invoice", "amount": "960.00",
                        "currency": "GBP", "issue_date": "2026-12-11",
                        "due_date": "2027-01-10"}])


@case
def heldout_credit_invoice_wording() -> Built:
    pdf = pdfs.layout_lines(
        "Atelier Dupont", "FACTURE D'AVOIR N° FAV-2026-002", "Date : 11/12/2026",
        "Annule partiellement la facture F-2026-0202",
        ("Remboursement plinthes", "-150,00 €"), ("Net à payer", "-150,00 €"),
    )
    raw = build_mail(
        "heldout_credit_invoice_wording", sender=DUPONT_MAIL, to=MARTIN_MAIL,
        sent=at("2026-12-11"), subject="Facture d'avoir FAV-2026-002",
        text="Bonjour,\n\nVoici l'avoir correspondant.\n" + SIGN_DUPONT,
        files=(File("FAV-2026-002.pdf", pdf),),
    )
    return Built(raw, [{"number": "FAV-2026-002", "kind": "credit_note", "amount": "150.00",
                        "currency": "EUR", "issue_date": "2026-12-11", "due_date": None,
                        "refers_to": ["F-2026-0202"]}])


@case
def heldout_promotion_mail() -> Built:
    raw = build_mail(
        "heldout_promotion_mail", sender=DUPONT_MAIL, to=MARTIN_MAIL, sent=at("2026-11-20"),
        subject="Black Friday à l'Atelier : -20 % sur les dressings",
        text="Bonjour,\n\nJusqu'au 30/11/2026, -20 % sur tous nos dressings (à partir de "
             "1 500,00 €). Facture et paiement en 3 fois sans frais.\n" + SIGN_DUPONT,
    )
    return Built(raw, [])


@case
def heldout_html_cells_without_colons() -> Built:
    html = (
        "<html><body><p>Bonjour,</p><p>Votre facture est disponible.</p><table>"
        "<tr><td>Facture</td><td>F-2026-0205</td></tr>"
        "<tr><td>Date</td><td>12/12/2026</td></tr>"
        "<tr><td>Montant</td><td>1 250,00 €</td></tr>"
        "<tr><td>Échéance</td><td>11/01/2027</td></tr></table></body></html>"
    )
    raw = build_mail(
        "heldout_html_cells_without_colons", sender=DUPONT_SOFTWARE, to=CAFE_MAIL,
        sent=at("2026-12-12"), subject="Votre facture Atelier Dupont", html=html,
    )
    return Built(raw, [{"number": "F-2026-0205", "kind": "invoice", "amount": "1250.00",
                        "currency": "EUR", "issue_date": "2026-12-12",
                        "due_date": "2027-01-11"}])


@case
def heldout_direct_debit() -> Built:
    raw = build_mail(
        "heldout_direct_debit", sender=MOREAU_MAIL, to=TILLEULS_MAIL, sent=at("2026-12-12"),
        subject="Facture MC-2026-060 - abonnement conseil décembre",
        text="Bonjour,\n\nFacture MC-2026-060 : 89,00 € TTC, qui sera prélevée le "
             "20/12/2026 sur votre compte.\n\nOlivier Moreau\n",
    )
    return Built(raw, [{"number": "MC-2026-060", "kind": "invoice", "amount": "89.00",
                        "currency": "EUR", "issue_date": "2026-12-12",
                        "due_date": "2026-12-20"}])


@case
def heldout_minimum_with_english_pdf() -> Built:
    inv = Invoice("INV-2026-0088", day("2026-12-13"), MOREAU, ACME,
                  (Line("Advisory retainer, December", D("1"), D("1200.00")),),
                  vat_rate=D("0"), due_date=day("2027-01-12"))
    raw = build_mail(
        "heldout_minimum_with_english_pdf", sender=MOREAU_MAIL, to=ACME_MAIL,
        sent=at("2026-12-13"), subject="December invoice",
        text="Hi John,\n\nDecember's invoice (Factur-X) is attached.\n" + SIGN_MOREAU,
        files=(fx_file(inv, "minimum", lambda i: pdfs.layout_english(i, date_style="abbr")),),
    )
    return Built(raw, [expect(inv)])


@case
def heldout_friendly_reminder_english() -> Built:
    raw = build_mail(
        "heldout_friendly_reminder_english", sender=KELLER_MAIL, to=ACME_MAIL,
        sent=at("2026-12-14"), subject="Friendly nudge: invoice KT-2026-116",
        text="Dear John,\n\nJust checking that invoice KT-2026-116 (£2,100.00, due on "
             "20 December 2026) reached you safely.\n" + SIGN_KELLER,
    )
    return Built(raw, [])


@case
def heldout_invoice_number_after_label_line() -> Built:
    pdf = pdfs.layout_lines(
        "Studio Lemoine", "Facture", "Numéro", "2026-040", "Date d'émission", "14/12/2026",
        "Date d'échéance", "13/01/2027", ("Total à payer", "740,00 €"),
        "TVA non applicable, art. 293 B du CGI",
    )
    raw = build_mail(
        "heldout_invoice_number_after_label_line", sender=LEMOINE_MAIL, to=BELLEVUE_MAIL,
        sent=at("2026-12-14"), subject="Facture décembre",
        text="Bonjour,\n\nVoici ma facture de décembre." + SIGN_LEMOINE,
        files=(File("facture.pdf", pdf),),
    )
    return Built(raw, [{"number": "2026-040", "kind": "invoice", "amount": "740.00",
                        "currency": "EUR", "issue_date": "2026-12-14",
                        "due_date": "2027-01-13"}])


# ============================================================================== built at test time


def big_scan(name: str, pages: int, bytes_per_page: int) -> Built:
    raw = build_mail(
        name, sender=GIRARD_MAIL, to=BELLEVUE_MAIL, sent=at("2026-11-28"),
        subject="Facture 2026-125 (scan)",
        text="Bonjour,\n\nFacture 2026-125 en pièce jointe (scan du carnet). Montant : "
             "1 480,00 € TTC, à régler avant le 28/12/2026.\n\nMarc Girard\n",
        files=(File("scan.pdf", pdfs.scanned_pdf(pages, bytes_per_page)),),
    )
    return Built(raw, [{"number": "2026-125", "kind": "invoice", "amount": "1480.00",
                        "currency": "EUR", "issue_date": "2026-11-28",
                        "due_date": "2026-12-28"}])


def generated_cases() -> dict[str, Callable[[], Built]]:
    """Cases too big to keep in git: a 60-page scan, and one over the 20 MB cap."""
    return {
        "generated_scan_60_pages": lambda: big_scan("generated_scan_60_pages", 60, 150_000),
        "generated_scan_over_cap": lambda: big_scan("generated_scan_over_cap", 24, 900_000),
    }


# ============================================================================== writing


def write_all(target: Path = MAILS) -> list[str]:
    target.mkdir(exist_ok=True)
    written = []
    for name, make in CASES.items():
        built = make()
        (target / f"{name}.eml").write_bytes(built.raw)
        (target / f"{name}.expected.json").write_text(
            json.dumps(built.expected, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        written.append(name)
    for stale in target.iterdir():
        if stale.name.split(".", 1)[0] not in CASES:
            stale.unlink()
    return written


if __name__ == "__main__":
    names = write_all()
    size = sum(path.stat().st_size for path in MAILS.iterdir())
    print(f"{len(names)} mails written to {MAILS} ({size / 1e6:.2f} MB)")
