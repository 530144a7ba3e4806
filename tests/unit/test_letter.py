"""The formal notice: sums to the cent, and a PDF that says everything the law asks.

The PDF is checked the way a reader would: its text is extracted back with pypdf and
each required mention looked for.
"""

from __future__ import annotations

import dataclasses
import io
import re
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from pypdf import PdfReader

from relance.core.commands import CommandRefused
from relance.core.letter import (
    BLANK,
    ECB_RATE_DEFAULT,
    find_fonts,
    formal_notice_for,
    late_penalties,
    penalty_rate,
    record_lrar,
    render_formal_notice,
)
from relance.model import Case, CaseState, Firm, StepRecord

PARIS = timezone(timedelta(hours=2))
FIRM = Firm(
    name="Atelier Dupont SARL",
    sender="Atelier Dupont - Comptabilité <compta@dupont.example>",
    addresses=("compta@dupont.example",),
    iban="FR76 3000 6000 0112 3456 7890 189",
    payment_link="https://pay.dupont.example/{number}",
)
LETTER_DAY = date(2026, 5, 6)


def step(index: int, name: str, day: date, outcome: str = "sent") -> StepRecord:
    at = datetime(day.year, day.month, day.day, 9, 30, tzinfo=PARIS)
    return StepRecord(index, name, at, f"<relance.x.{index}@dupont.example>", outcome)


CASE = Case(
    number="F-2026-014",
    client_addrs=("compta@eclair.example",),
    subject="Facture F-2026-014",
    root_message_id="<inv-014@dupont.example>",
    client_name="Boulangerie Éclair SAS",
    amount=Decimal("1234.50"),
    issue_date=date(2026, 3, 2),
    due_date=date(2026, 4, 1),
    state=CaseState.FORMAL_NOTICE,
    steps=(
        step(1, "courtesy", date(2026, 3, 27)),
        step(2, "reminder-1", date(2026, 4, 6)),
        step(3, "reminder-2", date(2026, 4, 19)),
        step(4, "reminder-3", date(2026, 5, 1), outcome="unknown"),
        step(5, "formal-notice", LETTER_DAY, outcome="handed-over"),
    ),
)


def pdf_text(pdf: bytes) -> str:
    """The PDF's text with every run of blanks (line breaks, no-break spaces) as one space."""
    reader = PdfReader(io.BytesIO(pdf))
    text = " ".join(page.extract_text() for page in reader.pages)
    return re.sub(r"\s+", " ", text.replace("\u00a0", " "))


# -- the sums --------------------------------------------------------------------------

D = Decimal


@pytest.mark.parametrize(
    ("balance", "due", "on", "rate", "expected"),
    [
        # paid on the due date: nothing yet
        (D("1000"), date(2026, 1, 31), date(2026, 1, 31), D("12.15"), D("0.00")),
        # penalties start the day after the due date: one day
        (D("1000"), date(2026, 1, 31), date(2026, 2, 1), D("12.15"), D("0.33")),
        # a whole (365-day) year at 14.50 % is 14.50 % of the balance
        (D("1000"), date(2025, 1, 1), date(2026, 1, 1), D("14.50"), D("145.00")),
        # the letter's example: 35 days at 12.15 % on 1 234,50
        (D("1234.50"), date(2026, 4, 1), date(2026, 5, 6), D("12.15"), D("14.38")),
        (D("10000"), date(2026, 3, 1), date(2026, 3, 31), D("14.50"), D("119.18")),
        # a leap day counts as a day
        (D("3650"), date(2028, 2, 28), date(2028, 3, 1), D("10"), D("2.00")),
        # half a cent rounds up, as money does (not to even)
        (D("182.50"), date(2026, 1, 1), date(2026, 1, 2), D("1"), D("0.01")),
        # asked before the due date, or on nothing owed: nothing
        (D("1000"), date(2026, 6, 30), date(2026, 6, 1), D("12.15"), D("0.00")),
        (D("0"), date(2026, 1, 1), date(2026, 6, 1), D("12.15"), D("0.00")),
        (D("-50"), date(2026, 1, 1), date(2026, 6, 1), D("12.15"), D("0.00")),
    ],
)
def test_late_penalties_to_the_day(
    balance: Decimal, due: date, on: date, rate: Decimal, expected: Decimal
) -> None:
    assert late_penalties(balance, due, on, rate) == expected


def test_late_penalties_refuse_a_negative_rate() -> None:
    with pytest.raises(ValueError, match="negative"):
        late_penalties(D("100"), date(2026, 1, 1), date(2026, 2, 1), D("-1"))


def test_penalty_rate_is_ecb_plus_ten_points() -> None:
    assert penalty_rate(D("4.50")) == D("14.50")
    assert penalty_rate() == ECB_RATE_DEFAULT + 10


# -- the letter ------------------------------------------------------------------------


def test_letter_pdf_holds_every_required_mention() -> None:
    notice = formal_notice_for(
        [CASE], FIRM, LETTER_DAY, firm_address=("12 rue des Lilas", "69003 Lyon"),
        client_address=("4 place du Marché", "69002 Lyon"), place="Lyon",
    )
    letter = render_formal_notice(notice)
    text = pdf_text(letter.pdf)
    required = [
        # who writes to whom, and how it is sent
        "Atelier Dupont SARL", "12 rue des Lilas", "69003 Lyon", "compta@dupont.example",
        "Boulangerie Éclair SAS", "4 place du Marché", "69002 Lyon",
        "Lettre recommandée avec accusé de réception", "À Lyon, le 6 mai 2026",
        "mise en demeure",
        # the invoice: number, dates, amounts
        "F-2026-014", "du 2 mars 2026", "1 234,50 EUR TTC", "payable au plus tard le 1er "
        "avril 2026", "02/03/2026", "01/04/2026", "35 j",
        # penalties to the day, the rate and its basis, the indemnity
        "14,38 EUR", "12,15 %", "BCE de 2,15 % majoré de 10 points", "L441-10",
        "prorata temporis", "40,00 EUR", "D441-5", "Total à régler 1 288,88 EUR",
        # the deadline and the consequences
        "8 jours à compter de la réception", "injonction de payer", "1344 du Code civil",
        # the earlier reminders with their dates (only those really sent)
        "27 mars 2026", "6 avril 2026", "19 avril 2026",
        # how to pay
        "FR76 3000 6000 0112 3456 7890 189", "https://pay.dupont.example/F-2026-014",
    ]
    missing = [m for m in required if m not in text]
    assert not missing, f"not in the PDF: {missing}\n---\n{text}"
    assert "1 mai 2026" not in text  # reminder-3's send is unknown: not claimed
    assert letter.total == D("1288.88")
    assert letter.to_fill == ()
    assert PdfReader(io.BytesIO(letter.pdf)).metadata.title.startswith("Mise en demeure")


def test_letter_text_is_the_text_on_paper() -> None:
    letter = render_formal_notice(formal_notice_for([CASE], FIRM, LETTER_DAY))
    flat = re.sub(r"\s+", " ", letter.text)
    for mention in ("F-2026-014", "14,38 EUR", "injonction de payer", "6 avril 2026",
                    "Total à régler : 1 288,88 EUR"):
        assert mention in flat


def test_unknown_addresses_leave_blank_lines_and_say_so() -> None:
    letter = render_formal_notice(formal_notice_for([CASE], FIRM, LETTER_DAY))
    text = pdf_text(letter.pdf)
    assert text.count(BLANK) >= 5  # two for the firm, three for the client
    assert any("adresse postale du client" in item for item in letter.to_fill)
    assert any("adresse postale de l'entreprise" in item for item in letter.to_fill)
    assert any("lieu" in item for item in letter.to_fill)


def test_unknown_client_name_is_left_blank_too() -> None:
    nameless = dataclasses.replace(CASE, client_name="")
    letter = render_formal_notice(formal_notice_for([nameless], FIRM, LETTER_DAY))
    assert any("nom" in item for item in letter.to_fill)


def test_several_invoices_of_one_client_in_one_letter() -> None:
    second = dataclasses.replace(
        CASE, number="F-2026-020", amount=D("800.00"), paid=D("300.00"),
        issue_date=date(2026, 3, 16), due_date=date(2026, 4, 15), steps=(),
    )
    letter = render_formal_notice(formal_notice_for([CASE, second], FIRM, LETTER_DAY))
    text = pdf_text(letter.pdf)
    # 500.00 for 21 days at 12.15 %: 3.50; the indemnity is due per invoice
    assert [line.penalties for line in letter.lines] == [D("14.38"), D("3.50")]
    assert letter.indemnity == D("80.00")
    assert letter.total == D("1234.50") + D("500.00") + D("17.88") + D("80.00")
    for mention in ("factures n° F-2026-014, F-2026-020", "500,00 EUR", "300,00 EUR",
                    "80,00 EUR", "ces sommes sont majorées", "1 832,38 EUR"):
        assert mention in text, mention


def test_another_ecb_rate_and_deadline() -> None:
    notice = formal_notice_for([CASE], FIRM, LETTER_DAY, ecb_rate=D("4.50"), deadline_days=15)
    text = pdf_text(render_formal_notice(notice).pdf)
    assert "14,50 %" in text and "BCE de 4,50 %" in text
    assert "17,16 EUR" in text  # 1234.50 x 14.50 % x 35 / 365
    assert "15 jours à compter de la réception" in text


def test_same_facts_give_the_same_pdf() -> None:
    notice = formal_notice_for([CASE], FIRM, LETTER_DAY)
    assert render_formal_notice(notice).pdf == render_formal_notice(notice).pdf


def test_without_a_unicode_font_the_letter_falls_back_to_latin1(tmp_path: Path) -> None:
    assert find_fonts(tmp_path) is None
    letter = render_formal_notice(formal_notice_for([CASE], FIRM, LETTER_DAY), fonts=tmp_path)
    text = pdf_text(letter.pdf)
    for mention in ("Boulangerie Éclair SAS", "échéance", "1 288,88 EUR", "injonction de payer",
                    "mise en demeure de payer - facture"):
        assert mention in text, mention


def test_the_system_has_a_unicode_font() -> None:
    """Debian's fonts-dejavu-core; without it letters fall back to latin-1 core fonts."""
    assert find_fonts() is not None


def test_a_case_without_amount_or_due_date_gets_no_letter() -> None:
    with pytest.raises(ValueError, match="unknown"):
        formal_notice_for([dataclasses.replace(CASE, amount=None)], FIRM, LETTER_DAY)
    with pytest.raises(ValueError, match="nothing owed"):
        formal_notice_for([dataclasses.replace(CASE, paid=CASE.amount)], FIRM, LETTER_DAY)


# -- sent-lrar -------------------------------------------------------------------------


def test_record_lrar_notes_the_posting_date() -> None:
    updated = record_lrar(CASE, date(2026, 5, 7))
    assert updated.state is CaseState.FORMAL_NOTICE
    assert updated.reason == "formal notice sent by registered post 2026-05-07"


def test_record_lrar_refuses_a_case_without_a_letter() -> None:
    with pytest.raises(CommandRefused, match="no formal notice"):
        record_lrar(dataclasses.replace(CASE, state=CaseState.CHASING), date(2026, 5, 7))


def test_record_lrar_refuses_a_date_before_the_letter() -> None:
    with pytest.raises(CommandRefused, match="prepared on 2026-05-06"):
        record_lrar(CASE, date(2026, 5, 1))


def test_record_lrar_refuses_a_date_in_the_future() -> None:
    with pytest.raises(CommandRefused, match="future"):
        record_lrar(CASE, date(2026, 5, 9), today=date(2026, 5, 8))
