"""The formal notice (mise en demeure) as a printable PDF, and the sums it claims.

Pure but for reading a font file: case and firm facts in, PDF bytes out, the same bytes
for the same facts (the PDF's creation date is the letter's date). The owner prints it,
signs it and posts it by registered mail with acknowledgement of receipt (LRAR); relance
never sends it, and learns it left through the owner's `sent-lrar DATE` (`record_lrar`).

The law it cites (Code de commerce, between businesses):
- art. L441-10 II: late-payment penalties are due from the day after the due date,
  without any reminder, at the ECB's refinancing rate plus 10 percentage points unless
  the terms say otherwise; the rate in force on 1 January applies for the first half of
  the year, on 1 July for the second;
- art. D441-5: a fixed indemnity of 40 EUR per invoice for recovery costs;
- Code civil art. 1344: a letter with a sufficient demand is a "mise en demeure";
- Code de procédure civile art. 1405 s.: the "injonction de payer" that follows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import ROUND_HALF_UP, Decimal
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from relance.core.commands import CommandRefused
from relance.core.compose import RECOVERY_INDEMNITY
from relance.model import Case, CaseState, Firm

if TYPE_CHECKING:
    from fpdf import FPDF

# The ECB main refinancing rate, in percent: 2.15 % since 11 June 2025, the rate in force
# on 1 January 2026. A parameter everywhere: the firm's terms or a new semester may call
# for another.
ECB_RATE_DEFAULT = Decimal("2.15")
PENALTY_MARGIN_POINTS = Decimal("10")  # art. L441-10 II
DEADLINE_DAYS_DEFAULT = 8
DAYS_PER_YEAR = Decimal(365)  # prorata temporis on a 365-day year
CENT = Decimal("0.01")
BLANK = "." * 48  # a line to fill by hand

_MONTHS = ("janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août",
           "septembre", "octobre", "novembre", "décembre")
# Unicode TrueType fonts, most readable first; fpdf2's core fonts (latin-1) as a last resort.
_FONT_DIRS = (
    Path("/usr/share/fonts/truetype/dejavu"),
    Path("/usr/share/fonts/dejavu"),
    Path("/usr/share/fonts/TTF"),
    Path("/usr/local/share/fonts"),
)
_FONT_FAMILIES = (
    ("DejaVuSerif", {"": "DejaVuSerif.ttf", "B": "DejaVuSerif-Bold.ttf",
                     "I": "DejaVuSerif-Italic.ttf"}),
    ("DejaVuSans", {"": "DejaVuSans.ttf", "B": "DejaVuSans-Bold.ttf",
                    "I": "DejaVuSans-Oblique.ttf"}),
)
_LATIN1 = str.maketrans({"€": "EUR", "’": "'", "‘": "'", "“": '"', "”": '"', "–": "-",
                         "—": "-", "…": "...", "œ": "oe", "Œ": "OE", "\u202f": " ",
                         "→": "->", "•": "-"})


# -- the sums --------------------------------------------------------------------------


def penalty_rate(ecb_rate: Decimal = ECB_RATE_DEFAULT) -> Decimal:
    """The legal penalty rate in percent a year: the ECB rate plus 10 points."""
    return ecb_rate + PENALTY_MARGIN_POINTS


def late_penalties(balance: Decimal, due_date: date, on: date, annual_rate: Decimal) -> Decimal:
    """Penalties owed on `on` for `balance` unpaid since `due_date`, to the cent.

    `annual_rate` is in percent a year (14.50 for 14.50 %). They run from the day after
    the due date (art. L441-10 II), prorata temporis on a 365-day year: a balance paid on
    its due date owes nothing, one day later owes one day. Nothing is owed on nothing.
    """
    if annual_rate < 0:
        raise ValueError(f"a penalty rate cannot be negative ({annual_rate} %)")
    days = (on - due_date).days
    if days <= 0 or balance <= 0:
        return Decimal("0.00")
    owed = balance * annual_rate / Decimal(100) * Decimal(days) / DAYS_PER_YEAR
    return owed.quantize(CENT, rounding=ROUND_HALF_UP)


# -- what the letter says --------------------------------------------------------------


@dataclass(frozen=True)
class Party:
    """A firm or a client as the letter names them; an empty address is left blank."""

    name: str
    address: tuple[str, ...] = ()
    email: str = ""


@dataclass(frozen=True)
class LetterInvoice:
    number: str
    issue_date: date | None
    due_date: date
    amount: Decimal
    paid: Decimal = Decimal("0")
    currency: str = "EUR"

    @property
    def balance(self) -> Decimal:
        return self.amount - self.paid


@dataclass(frozen=True)
class EarlierReminder:
    on: date
    what: str  # "courriel de relance", "appel téléphonique"...


@dataclass(frozen=True)
class FormalNotice:
    """Everything the letter states; `formal_notice_for` builds it from cases."""

    firm: Party
    client: Party
    invoices: tuple[LetterInvoice, ...]
    on: date  # the letter's date: penalties are computed to this day
    reminders: tuple[EarlierReminder, ...] = ()
    ecb_rate: Decimal = ECB_RATE_DEFAULT
    deadline_days: int = DEADLINE_DAYS_DEFAULT
    place: str = ""  # "Lyon": where the letter is signed; blank to fill when unknown
    iban: str = ""
    payment_link: str = ""
    signatory: str = ""


@dataclass(frozen=True)
class InvoiceLine:
    invoice: LetterInvoice
    days_late: int
    penalties: Decimal


@dataclass(frozen=True)
class Letter:
    """The rendered letter: the PDF to print, the same words as text, what to complete."""

    pdf: bytes
    text: str
    to_fill: tuple[str, ...]  # what relance did not know, left blank for the owner's pen
    lines: tuple[InvoiceLine, ...]
    principal: Decimal
    penalties: Decimal
    indemnity: Decimal
    total: Decimal


def formal_notice_for(
    cases: Sequence[Case],
    firm: Firm,
    on: date,
    *,
    firm_address: Sequence[str] = (),
    client_address: Sequence[str] = (),
    ecb_rate: Decimal = ECB_RATE_DEFAULT,
    deadline_days: int = DEADLINE_DAYS_DEFAULT,
    place: str = "",
) -> FormalNotice:
    """The notice for one client's unpaid invoices (usually one case).

    Raises ValueError for a case whose amount or due date is unknown, or with nothing
    owed: a formal notice must state exact sums.
    """
    if not cases:
        raise ValueError("a formal notice needs at least one invoice")
    invoices = []
    for case in cases:
        if case.amount is None or case.due_date is None:
            raise ValueError(f"invoice {case.number}: amount or due date unknown")
        if case.balance is None or case.balance <= 0:
            raise ValueError(f"invoice {case.number}: nothing owed")
        invoices.append(LetterInvoice(case.number, case.issue_date, case.due_date,
                                      case.amount, case.paid, case.currency))
    first = cases[0]
    reminders = sorted(
        {(s.at.date(), "courriel de rappel avant échéance" if s.at.date() <= _first_due(cases)
          else "courriel de relance")
         for c in cases for s in c.steps if s.outcome == "sent"},
    )
    sender_email = firm.sender.rsplit("<", 1)[-1].rstrip(">").strip()
    return FormalNotice(
        firm=Party(firm.name, tuple(firm_address), sender_email),
        client=Party(first.client_name or "", tuple(client_address),
                     first.client_addrs[0] if first.client_addrs else ""),
        invoices=tuple(invoices),
        on=on,
        reminders=tuple(EarlierReminder(d, what) for d, what in reminders),
        ecb_rate=ecb_rate,
        deadline_days=deadline_days,
        place=place,
        iban=firm.iban,
        payment_link=firm.payment_link.replace("{number}", first.number)
        if len(cases) == 1 else "",
    )


def _first_due(cases: Sequence[Case]) -> date:
    dues: list[date] = [c.due_date for c in cases if c.due_date is not None]
    return min(dues)


def record_lrar(case: Case, sent_on: date, today: date | None = None) -> Case:
    """The owner posted the formal notice by registered mail on `sent_on` (`sent-lrar`).

    Only a case handed over as a formal notice can have one; not before the letter was
    prepared, nor after `today` when given. Saying it again corrects the date (the
    journal keeps both).
    """
    if today is not None and sent_on > today:
        raise CommandRefused(f"{sent_on:%Y-%m-%d} is in the future; the date the letter "
                             "was posted, please")
    if case.state is not CaseState.FORMAL_NOTICE:
        raise CommandRefused(
            f"{case.number} is {case.state.value}: no formal notice was prepared for it")
    prepared = [s.at.date() for s in case.steps if s.outcome == "handed-over"]
    if prepared and sent_on < max(prepared):
        raise CommandRefused(
            f"{case.number}: the letter was prepared on {max(prepared):%Y-%m-%d}; it cannot "
            f"have been posted on {sent_on:%Y-%m-%d}")
    return dataclasses.replace(
        case, reason=f"formal notice sent by registered post {sent_on:%Y-%m-%d}")


# -- rendering -------------------------------------------------------------------------


def fr_date(value: date) -> str:
    day = "1er" if value.day == 1 else str(value.day)
    return f"{day} {_MONTHS[value.month - 1]} {value.year}"


def fr_money(amount: Decimal, currency: str = "EUR") -> str:
    """1234.5 → "1 234,50 EUR" (no-break spaces: a sum never splits across lines)."""
    value = amount.quantize(CENT, rounding=ROUND_HALF_UP)
    units, _, cents = f"{abs(value):.2f}".partition(".")
    grouped = f"{int(units):,}".replace(",", "\u00a0")
    return f"{'-' if value < 0 else ''}{grouped},{cents}\u00a0{currency}"


def fr_rate(rate: Decimal) -> str:
    return f"{rate.quantize(CENT):.2f}".replace(".", ",") + "\u00a0%"


def render_formal_notice(notice: FormalNotice, fonts: Path | None = None) -> Letter:
    """The letter as PDF and text. `fonts` names a directory of DejaVu TTF files; by
    default the usual system places are searched (Debian: fonts-dejavu-core)."""
    lines = tuple(
        InvoiceLine(inv, max(0, (notice.on - inv.due_date).days),
                    late_penalties(inv.balance, inv.due_date, notice.on,
                                   penalty_rate(notice.ecb_rate)))
        for inv in notice.invoices
    )
    principal = sum((line.invoice.balance for line in lines), Decimal("0.00"))
    penalties = sum((line.penalties for line in lines), Decimal("0.00"))
    indemnity = RECOVERY_INDEMNITY * len(lines)
    total = principal + penalties + indemnity
    blocks, to_fill = _blocks(notice, lines, principal, penalties, indemnity, total)
    text = _as_text(blocks)
    pdf = _as_pdf(blocks, notice, fonts)
    return Letter(pdf, text, tuple(to_fill), lines, principal, penalties, indemnity, total)


# A letter is a list of blocks, rendered once as PDF and once as text, so the text the
# owner reads in the notice is the text on paper.
Block = tuple[str, Any]


def _blocks(
    notice: FormalNotice,
    lines: Sequence[InvoiceLine],
    principal: Decimal,
    penalties: Decimal,
    indemnity: Decimal,
    total: Decimal,
) -> tuple[list[Block], list[str]]:
    to_fill: list[str] = []
    currency = notice.invoices[0].currency
    several = len(lines) > 1
    numbers = ", ".join(line.invoice.number for line in lines)

    firm_lines = [notice.firm.name, *notice.firm.address]
    if not notice.firm.address:
        firm_lines += [BLANK, BLANK]
        to_fill.append("l'adresse postale de l'entreprise (en-tête)")
    if notice.firm.email:
        firm_lines.append(notice.firm.email)

    client_lines = [notice.client.name or BLANK]
    if not notice.client.name:
        to_fill.append("le nom ou la raison sociale du client")
    if notice.client.address:
        client_lines += list(notice.client.address)
    else:
        client_lines += [BLANK, BLANK, BLANK]
        to_fill.append("l'adresse postale du client (destinataire)")

    place = notice.place or BLANK[:20]
    if not notice.place:
        to_fill.append("le lieu (« Fait à ... »)")
    blocks: list[Block] = [
        ("sender", firm_lines),
        ("recipient", ["Lettre recommandée avec accusé de réception", *client_lines]),
        ("right", [f"À {place}, le {fr_date(notice.on)}"]),
        ("bold", f"Objet : mise en demeure de payer — facture{'s' if several else ''} "
                 f"n° {numbers}"),
        ("para", "Madame, Monsieur,"),
    ]
    if several:
        blocks.append(("para", "Nous vous avons adressé les factures détaillées ci-dessous, "
                               "dont le règlement était dû aux dates d'échéance indiquées."))
    else:
        inv = lines[0].invoice
        issued = f" du {fr_date(inv.issue_date)}" if inv.issue_date else ""
        blocks.append(("para", f"Nous vous avons adressé la facture n° {inv.number}{issued}, "
                               f"d'un montant de {fr_money(inv.amount, inv.currency)} TTC, "
                               f"payable au plus tard le {fr_date(inv.due_date)}."))
    if notice.reminders:
        blocks.append(("para", "Malgré nos rappels, restés sans effet :"))
        blocks.append(("bullets", [f"{r.what} du {fr_date(r.on)}" for r in notice.reminders]))
    unpaid = "Ces sommes restent impayées" if several else "Cette somme reste impayée"
    blocks.append(("para", f"{unpaid} à ce jour."))
    blocks.append(("table", [
        ("Facture", "Date", "Échéance", "Montant TTC", "Déjà réglé", "Reste dû", "Retard",
         "Pénalités"),
        *[(line.invoice.number,
           _short(line.invoice.issue_date) if line.invoice.issue_date else "—",
           _short(line.invoice.due_date),
           fr_money(line.invoice.amount, line.invoice.currency),
           fr_money(line.invoice.paid, line.invoice.currency),
           fr_money(line.invoice.balance, line.invoice.currency),
           f"{line.days_late} j",
           fr_money(line.penalties, line.invoice.currency)) for line in lines],
    ]))
    rate = penalty_rate(notice.ecb_rate)
    increased = "ces sommes sont majorées" if several else "cette somme est majorée"
    blocks.append(("para",
        f"Conformément à l'article L441-10 du Code de commerce, {increased} de plein droit "
        f"de pénalités de retard au taux annuel de {fr_rate(rate)} (taux de refinancement "
        f"de la BCE de {fr_rate(notice.ecb_rate)} majoré de 10 points), calculées prorata "
        f"temporis du lendemain de l'échéance au {fr_date(notice.on)}, soit "
        f"{fr_money(penalties, currency)} ; elles continuent de courir jusqu'au complet "
        "paiement. S'y ajoute l'indemnité forfaitaire pour frais de recouvrement de "
        f"{fr_money(RECOVERY_INDEMNITY, 'EUR')} par facture prévue à l'article D441-5 du "
        f"Code de commerce, soit {fr_money(indemnity, 'EUR')}."))
    blocks.append(("totals", [
        ("Principal restant dû", fr_money(principal, currency)),
        (f"Pénalités de retard au {fr_date(notice.on)}", fr_money(penalties, currency)),
        ("Indemnité forfaitaire (art. D441-5)", fr_money(indemnity, "EUR")),
        ("Total à régler", fr_money(total, currency)),
    ]))
    blocks.append(("para",
        "Par la présente, qui vaut mise en demeure au sens de l'article 1344 du Code civil, "
        f"nous vous demandons de nous régler la somme de {fr_money(total, currency)} dans "
        f"un délai de {notice.deadline_days} jours à compter de la réception de ce courrier."))
    blocks.append(("para",
        "À défaut de règlement intégral dans ce délai, nous saisirons sans autre avis le "
        "tribunal compétent d'une requête en injonction de payer (articles 1405 et suivants "
        "du Code de procédure civile), les frais de procédure et de recouvrement pouvant "
        "être mis à votre charge."))
    ways = []
    if notice.iban:
        ways.append(f"par virement sur notre compte IBAN {notice.iban}, en indiquant la "
                    f"référence {numbers}")
    if notice.payment_link:
        ways.append(f"en ligne : {notice.payment_link}")
    if ways:
        blocks.append(("para", "Modalités de règlement :"))
        blocks.append(("bullets", ways))
    blocks.append(("closing", "Nous vous prions d'agréer, Madame, Monsieur, l'expression de "
                              "nos salutations distinguées."))
    blocks.append(("signature", [notice.firm.name,
                                 notice.signatory or "Nom, qualité et signature :"]))
    return blocks, to_fill


def _short(value: date) -> str:
    return f"{value:%d/%m/%Y}"


def _as_text(blocks: Sequence[Block]) -> str:
    out: list[str] = []
    for kind, body in blocks:
        if kind in ("sender", "recipient", "right", "signature"):
            out.extend(str(x) for x in body)
        elif kind == "bullets":
            out.extend(f"  - {x}" for x in body)
        elif kind == "table":
            rows = list(body)
            widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
            out.extend("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True))
                       .rstrip() for r in rows)
        elif kind == "totals":
            out.extend(f"{k} : {v}" for k, v in body)
        else:
            out.append(str(body))
        out.append("")
    return "\n".join(out).replace("\u00a0", " ").rstrip() + "\n"


def find_fonts(directory: Path | None = None) -> tuple[str, dict[str, Path]] | None:
    """A Unicode font family on this machine: (name, style → file), or None."""
    places = (directory,) if directory is not None else _FONT_DIRS
    for family, styles in _FONT_FAMILIES:
        for place in places:
            files = {style: place / name for style, name in styles.items()}
            if all(f.is_file() for f in files.values()):
                return family, files
    return None


@cache
def _pdf_class() -> type[FPDF]:
    """fpdf2 (with fontTools) costs ~56 MB of memory; only a formal notice needs it, so
    it is imported on the first letter, not when the daemon starts."""
    from fpdf import FPDF

    class _Pdf(FPDF):
        def footer(self) -> None:
            self.set_y(-11)
            self.set_font(size=8)
            self.set_text_color(110)
            self.cell(0, 5, f"{self.page_no()}/{{nb}}", align="C")
            self.set_text_color(0)

    return _Pdf


def _as_pdf(blocks: Sequence[Block], notice: FormalNotice, fonts: Path | None) -> bytes:
    from fpdf.enums import XPos, YPos  # lazy: see _pdf_class

    pdf = _pdf_class()(format="A4", unit="mm")
    pdf.set_margins(22, 15, 20)
    pdf.set_auto_page_break(True, margin=16)
    found = find_fonts(fonts)
    if found is not None:
        family, files = found
        for style, path in files.items():
            pdf.add_font(family, style, str(path))
        clean = _keep
    else:
        family, clean = "Times", _latin1  # honest fallback: "EUR", no curly quotes
    created = datetime.combine(notice.on, time(12, 0))
    pdf.set_creation_date(created)
    pdf.set_title(clean(f"Mise en demeure - {notice.client.name or 'client'}"))
    pdf.set_author(clean(notice.firm.name))
    pdf.set_creator("relance")
    pdf.add_page()
    width = pdf.epw
    for kind, body in blocks:
        if kind == "sender":
            pdf.set_font(family, "B", 11)
            items = list(body)
            pdf.cell(0, 5.5, clean(items[0]), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
            pdf.set_font(family, "", 10)
            for line in items[1:]:
                pdf.cell(0, 5, clean(line), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        elif kind == "recipient":
            # The window of a French DL envelope: right half, about 45 mm from the top.
            pdf.set_y(max(pdf.get_y() + 4, 40))
            for index, line in enumerate(body):
                pdf.set_font(family, "B" if index == 0 else "", 9 if index == 0 else 11)
                pdf.set_x(pdf.l_margin + width * 0.52)
                pdf.cell(width * 0.48, 5.5, clean(line), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
            pdf.ln(4)
        elif kind == "right":
            pdf.set_font(family, "", 10.5)
            for line in body:
                pdf.cell(0, 5.5, clean(line), align="R", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
            pdf.ln(2)
        elif kind == "bold":
            pdf.set_font(family, "B", 10.5)
            pdf.multi_cell(0, 5.5, clean(str(body)), align="L")
            pdf.ln(1)
        elif kind in ("para", "closing"):
            pdf.set_font(family, "", 10)
            if kind == "closing" and pdf.get_y() + 22 > pdf.page_break_trigger:
                pdf.add_page()  # the closing formula stays with the signature
            pdf.ln(1)
            pdf.multi_cell(0, 4.9, clean(str(body)), align="J")
        elif kind == "bullets":
            pdf.set_font(family, "", 10)
            for line in body:
                pdf.set_x(pdf.l_margin + 6)
                pdf.multi_cell(width - 6, 4.9, clean(f"– {line}"), align="L")
        elif kind == "table":
            _table(pdf, family, clean, list(body))
        elif kind == "totals":
            pdf.ln(1.5)
            rows = list(body)
            for index, (label, value) in enumerate(rows):
                last = index == len(rows) - 1
                pdf.set_font(family, "B" if last else "", 10)
                pdf.set_x(pdf.l_margin + width * 0.35)
                pdf.cell(width * 0.43, 5.4, clean(label), border="T" if last else 0)
                pdf.cell(width * 0.22, 5.4, clean(value), border="T" if last else 0, align="R",
                         new_x=XPos.LMARGIN, new_y=YPos.NEXT)
            pdf.ln(1)
        elif kind == "signature":
            pdf.ln(4)
            pdf.set_font(family, "", 10)
            for line in body:
                pdf.set_x(pdf.l_margin + width * 0.55)
                pdf.cell(width * 0.45, 5.5, clean(line), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    return bytes(pdf.output())


def _table(
    pdf: FPDF, family: str, fix: Callable[[str], str], rows: list[tuple[str, ...]]
) -> None:
    pdf.ln(2)
    pdf.set_fill_color(232)
    widths = (0.15, 0.11, 0.11, 0.14, 0.13, 0.14, 0.07, 0.15)
    for index, row in enumerate(rows):
        pdf.set_font(family, "B" if index == 0 else "", 7.8 if index == 0 else 8.5)
        for col, (cell, share) in enumerate(zip(row, widths, strict=True)):
            align = "L" if col == 0 or index == 0 else "R"
            pdf.cell(pdf.epw * share, 6, fix(cell), border=1, align=align,
                     fill=index == 0)
        pdf.ln(6)
    pdf.ln(1)


def _keep(text: str) -> str:
    return text


def _latin1(text: str) -> str:
    return text.translate(_LATIN1).encode("latin-1", "replace").decode("latin-1")
