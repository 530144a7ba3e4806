"""Invoice facts from a parsed mail: number, kind, amount, dates, payment terms.

Pure: values in, values out (no I/O, no clock). Sources by trust: a Factur-X / UBL XML in
an attachment > the PDF's text > the mail's subject and body. The most trusted source wins
per fact; where a less trusted one says something else, the disagreement is recorded so the
owner can see it. Text is matched on a folded copy (accents and odd spaces made plain, one
character for one) so that "Échéance" and "Echeance", "1 234,56" with a no-break space and
with a plain one, read the same.

Each invoice also carries notes for the owner: an attachment that could not be read (and
why), and the invoice a credit note credits or a corrected invoice replaces ("AV-3 credits
invoice F-12"). What is not a new invoice gives []: a quote, an order, a reminder, a reply,
a payment notice, a statement, someone else's invoice forwarded, a mere mention.
`tests/corpus/` holds the mails this is measured on (`python -m tests.corpus.report`).
"""

from __future__ import annotations

import bisect
import calendar
import re
import unicodedata
from dataclasses import dataclass, replace
from datetime import date, timedelta
from decimal import Decimal, InvalidOperation

from relance.core.documents import Document, XmlFacts, is_pdf, read_document
from relance.model import InvoiceFacts, Mail

__all__ = [
    "due_date_for",
    "extract_invoices",
    "extract_invoices_with_notes",
    "invoice_named_by_headers",
    "invoice_numbers_in",
    "looks_like_invoice",
]

MAX_BODY_CHARS = 100_000  # invoice facts sit at the top; a huge body is a newsletter

# ---------------------------------------------------------------------------- folding

_FOLD_PAIRS = {
    "àáâãäå": "a", "ÀÁÂÃÄÅ": "A", "éèêë": "e", "ÉÈÊË": "E", "íìîï": "i", "ÍÌÎÏ": "I",
    "óòôõö": "o", "ÓÒÔÕÖ": "O", "úùûü": "u", "ÚÙÛÜ": "U", "ç": "c", "Ç": "C",
    "ÿ": "y", "ñ": "n", "Ñ": "N", "º": "°",
    "\u00a0\u202f\u2009\u2007\u2002\u2003": " ",
    "\u2019\u2018\u02bc\u00b4`": "'",
    "\u2010\u2011\u2012\u2013\u2014\u2212": "-",
}  # fmt: skip
_FOLD = str.maketrans({ch: plain for chars, plain in _FOLD_PAIRS.items() for ch in chars})


def _fold(text: str) -> str:
    """One character for one, so a position in the folded text is one in the original."""
    return text.translate(_FOLD)


# ---------------------------------------------------------------------------- numbers

_TOKEN = r"(?=[A-Z0-9._/-]*\d)[A-Z0-9](?:[A-Z0-9]|[._/-](?=[A-Z0-9])){0,39}"
_KEYWORD = r"factures?|invoices?|avoirs?|credit[ -]?notes?|notes? de credit"
_MARKER = r"n ?°|no\b\.?|nr\b\.?|numero\b|num\b\.?|number\b|ref(?:erence)?\b\.?|#"
# "Facture rectificative n° F-2", "Facture d'acompte FA-3", "Final invoice INV-4"
_QUALIFIER = (
    r"rectificative|corrective|corrigee|d'acompte|de solde|finale?|definitive|originale?"
    r"|d'avoir|commerciale|corrected|deposit|final"
)
_NUMBER_RE = re.compile(
    rf"\b(?P<kw>{_KEYWORD})\b(?:[ \t]+(?P<qual>{_QUALIFIER})\b)?[ \t]*\n?[ \t]*\(?"
    rf"(?P<mark>{_MARKER})?[ \t]*(?P<colon>[:#])?\s*(?P<num>{_TOKEN})",
    re.IGNORECASE,
)
# "N° de facture : F-2026-0042", "Numéro d'avoir AV-3"
_REVERSE_NUMBER_RE = re.compile(
    rf"(?:{_MARKER})\s*(?:de\s+(?:la\s+|l')?|d'|of\s+(?:the\s+)?)?"
    rf"(?P<kw>facture|avoir|invoice|credit note)\b\s*(?P<colon>:)?\s*(?P<num>{_TOKEN})",
    re.IGNORECASE,
)
_LIST_MORE_RE = re.compile(
    rf"\s*(?:,|;|&|\+|\bet\b|\band\b)\s*(?:n ?°\s*)?(?P<num>{_TOKEN})", re.IGNORECASE
)
_NOT_A_NUMBER_AFTER_RE = re.compile(
    r"[ \t]*(?:%|€|\$|£|(?:jours?|days?|mois|months?|ans?|years?|euros?|eur|usd|gbp|chf"
    r"|ttc|ht)\b)",
    re.IGNORECASE,
)
_YEAR_RE = re.compile(r"(?:19|20)\d\d")


@dataclass(frozen=True)
class _NumberHit:
    number: str
    kind: str  # "invoice" | "credit_note"
    start: int
    end: int
    labelled: bool = False  # a field ("N° de facture : F-12"), not a phrase ("la facture F-12")


def _kind_of(keyword: str) -> str:
    return "credit_note" if keyword.lower().startswith(("avoir", "credit", "note")) else "invoice"


def _acceptable_token(folded: str, original: str, match: re.Match[str], marked: bool) -> bool:
    token = match.group("num")
    if match.group("kw").lower() == "facture" and original[match.end("kw") - 1] in "éÉ":
        return False  # "facturé" (invoiced), not "facture"
    if not marked and (len(token) < 3 or _YEAR_RE.fullmatch(token)):
        return False  # "Invoice 42", "Factures 2026": too weak without "n°"
    if _DATE_RE.fullmatch(token):
        return False
    if _NOT_A_NUMBER_AFTER_RE.match(folded, match.end("num")):
        return False  # "facture à 30 jours", "facture 1200 €"
    money = _MONEY_RE.match(folded, match.start("num"))
    return not (money and (money.group("pre") or money.group("suf")))


def _number_hits(original: str, folded: str, with_lists: bool = False) -> list[_NumberHit]:
    """Invoice numbers named in a text, in order; lists ("factures F-1 et F-2") if asked."""
    hits: list[_NumberHit] = []
    for regex in (_NUMBER_RE, _REVERSE_NUMBER_RE):
        for match in regex.finditer(folded):
            marked = bool(match.group("colon")) or bool(
                regex is _REVERSE_NUMBER_RE or match.group("mark")
            )
            if not _acceptable_token(folded, original, match, marked):
                continue
            kind = _kind_of(match.group("kw"))
            if (match.groupdict().get("qual") or "").lower() == "d'avoir":
                kind = "credit_note"  # "facture d'avoir"
            labelled = regex is _REVERSE_NUMBER_RE or bool(match.group("colon"))
            hits.append(
                _NumberHit(match.group("num"), kind, match.start(), match.end(), labelled)
            )
            if with_lists:
                hits.extend(_listed_numbers(folded, match.end(), kind))
    hits.sort(key=lambda hit: hit.start)
    return hits


def _listed_numbers(folded: str, position: int, kind: str) -> list[_NumberHit]:
    more: list[_NumberHit] = []
    while (match := _LIST_MORE_RE.match(folded, position)) is not None:
        token = match.group("num")
        if len(token) < 3 or _NOT_A_NUMBER_AFTER_RE.match(folded, match.end()):
            break
        more.append(_NumberHit(token, kind, match.start("num"), match.end()))
        position = match.end()
    return more


def invoice_numbers_in(text: str) -> list[str]:
    """Invoice numbers a text mentions ("concernant la facture F-2026-0042"), in order."""
    original = unicodedata.normalize("NFC", text[:MAX_BODY_CHARS])
    seen: dict[str, None] = {}
    for hit in _number_hits(original, _fold(original), with_lists=True):
        seen.setdefault(hit.number, None)
    return list(seen)


def _number_key(number: str) -> str:
    return re.sub(r"\s+", "", number).upper()


# ---------------------------------------------------------------------------- amounts

_CURRENCY_CODES = (
    "EUR", "USD", "GBP", "CHF", "CAD", "AUD", "JPY", "SEK", "NOK", "DKK", "PLN", "CZK",
    "XOF", "XAF", "XPF", "MAD", "TND", "DZD",
)  # fmt: skip
_CURRENCY = rf"(?:€|\$|£|euros?\b|(?:{'|'.join(_CURRENCY_CODES)})\b)"
_SYMBOLS = {"€": "EUR", "$": "USD", "£": "GBP"}
_AMOUNT = r"\d{1,3}(?:[ .,']\d{3})+(?:[.,]\d{1,2})?|\d+(?:[.,]\d{1,2})?"
_MONEY_RE = re.compile(
    rf"(?<![\w.,/'-])(?:(?P<pre>{_CURRENCY})[ \t]?)?(?P<neg>-[ \t]?)?(?P<num>{_AMOUNT})(?!\d)"
    rf"(?:[ \t]{{0,2}}(?P<suf>{_CURRENCY}))?"
    r"(?:[ \t]*(?P<tax>t\.?t\.?c\.?|toutes taxes comprises|incl\.? (?:vat|tax(?:es)?)"
    r"|h\.?t\.?|hors taxes?|excl\.? (?:vat|tax(?:es)?))(?![a-z]))?",
    re.IGNORECASE,
)
_PERCENT_AFTER_RE = re.compile(r"[ \t]*%")
_LETTER_RE = re.compile(r"[a-z]", re.IGNORECASE)

_DUE_RANK, _TTC_RANK, _LABEL_RANK, _UNLABELLED_RANK = 0, 1, 2, 3
_HT_RANK, _EXCLUDED_RANK = 8, 9
_AMOUNT_LABELS: tuple[tuple[int, str], ...] = (
    (_DUE_RANK, r"net a payer|reste a payer|restant du|solde du|total du|montant du"
     r"|(?:montant|somme|total) a (?:regler|payer)|total due|amount due|balance due"
     r"|amount payable|total payable|due amount"),
    (_TTC_RANK, r"(?:total|montant)(?: total)? (?:t\.?t\.?c\b\.?|\(ttc\))"
     r"|total toutes taxes comprises|grand total|invoice total|total amount"
     r"|total incl(?:\.|uding)? (?:vat|tax(?:es)?)"),
    (_LABEL_RANK, r"(?<![-\w])(?:montant|total|amount|somme)"
     r"(?!\s*(?:h\.?t\b|hors|excl|net h|tva|vat|\(ht\)|paye|regle|paid))"),
    (_HT_RANK, r"(?:total|montant)(?: net)? (?:h\.?t\b\.?|\(ht\)|hors taxes?)|net h\.?t\b"
     r"|sous-total|subtotal|total excl(?:\.|uding)? (?:vat|tax(?:es)?)"),
    (_EXCLUDED_RANK, r"\btva\b|\bvat\b|acompte|deja (?:regle|paye|verse)|prepaid|\bpaid\b"
     r"|\bpaye\b|\bregle\b|escompte|capital|indemnite|penalite|remise|discount|rabais"
     r"|prix unitaire|unit price|p\.u\.|frais de recouvrement|recovery"),
)  # fmt: skip
_LABEL_RES = tuple((rank, re.compile(pattern, re.IGNORECASE)) for rank, pattern in _AMOUNT_LABELS)
_NO_VAT_RE = re.compile(
    r"tva non applicable|293 ?b|franchise en base|vat not applicable", re.IGNORECASE
)
_LABEL_REACH = 50  # characters between a label and its amount


@dataclass(frozen=True)
class _Money:
    amount: Decimal
    currency: str
    rank: int


def parse_money(raw: str) -> Decimal | None:
    """'1 234,56', '1.234,56', '1,234.56', '1234.5' → Decimal; a 3-digit tail is thousands."""
    digits = re.sub(r"[ ']", "", raw)
    separator = max(digits.rfind("."), digits.rfind(","))
    if separator >= 0 and len(digits) - separator - 1 in (1, 2):
        whole, fraction = digits[:separator], digits[separator + 1 :]
    else:
        whole, fraction = digits, ""
    whole = whole.replace(".", "").replace(",", "")
    try:
        return Decimal(f"{whole or '0'}.{fraction}" if fraction else whole)
    except InvalidOperation:
        return None


def _currency_of(symbol: str | None) -> str | None:
    if not symbol:
        return None
    if symbol in _SYMBOLS:
        return _SYMBOLS[symbol]
    return "EUR" if symbol.lower().startswith("euro") else symbol.upper()


def _labels(folded: str) -> list[tuple[int, int, int]]:
    """(end, start, rank) of every amount label, sorted by end."""
    found = [
        (match.end(), match.start(), rank)
        for rank, regex in _LABEL_RES
        for match in regex.finditer(folded)
    ]
    found.sort()
    return found


def _label_before(labels: list[tuple[int, int, int]], floor: int, position: int) -> int | None:
    """Rank of the label that ends closest before `position` (the longest on a tie)."""
    index = bisect.bisect_right(labels, (position, position + 1, _EXCLUDED_RANK + 1))
    if index == 0:
        return None
    end, start, rank = labels[index - 1]
    if end < floor or position - end > _LABEL_REACH:
        return None
    while index > 1 and labels[index - 2][0] == end:
        index -= 1
        if labels[index - 1][1] < start:
            start, rank = labels[index - 1][1], labels[index - 1][2]
    return rank


def _amount_in(folded: str) -> tuple[Decimal, str] | None:
    """The total due: labelled due > TTC > plain total > unlabelled; HT only without VAT."""
    labels = _labels(folded)
    no_vat = bool(_NO_VAT_RE.search(folded))
    candidates: list[_Money] = []
    previous_end = 0
    for match in _MONEY_RE.finditer(folded):
        start, end = match.start(), match.end()
        # Look back a bounded way: a label further than _LABEL_REACH is ignored anyway, and
        # an unbounded search per amount is quadratic on a long line.
        reach = max(0, start - 2 * _LABEL_REACH)
        line_start = max(folded.rfind("\n", reach, start) + 1, reach)
        if line_start > reach and not _LETTER_RE.search(folded, line_start, start):
            line_start = max(folded.rfind("\n", reach, line_start - 1) + 1, reach)  # line above
        floor = max(previous_end, line_start)
        previous_end = end
        if _PERCENT_AFTER_RE.match(folded, match.end("num")):
            continue
        amount = parse_money(match.group("num"))
        if amount is None:
            continue
        symbol = match.group("pre") or match.group("suf")
        label_rank = _label_before(labels, floor, start)
        tax = (match.group("tax") or "").lower()
        if label_rank is None:
            if not symbol:
                continue  # a bare number with no label is a quantity, a year, a page
            rank = _UNLABELLED_RANK
        else:
            if not symbol and "," not in match.group("num") and "." not in match.group("num"):
                continue  # "Total : 3" articles
            rank = label_rank
        if tax.startswith(("h", "excl")) and rank != _EXCLUDED_RANK:
            rank = _HT_RANK
        elif tax and rank in (_LABEL_RANK, _UNLABELLED_RANK):
            rank = _TTC_RANK
        if rank == _HT_RANK and no_vat:
            rank = _TTC_RANK  # "TVA non applicable, art. 293 B du CGI": HT is what is due
        candidates.append(_Money(abs(amount), _currency_of(symbol) or "EUR", rank))
    usable = [money for money in candidates if money.rank <= _UNLABELLED_RANK]
    if not usable:
        return None
    best_rank = min(money.rank for money in usable)
    best = max((money for money in usable if money.rank == best_rank), key=lambda m: m.amount)
    return best.amount, best.currency


# ---------------------------------------------------------------------------- dates

_MONTHS = {
    "janvier": 1, "janv": 1, "jan": 1, "january": 1, "fevrier": 2, "fevr": 2, "fev": 2,
    "february": 2, "feb": 2, "mars": 3, "mar": 3, "march": 3, "avril": 4, "avr": 4,
    "april": 4, "apr": 4, "mai": 5, "may": 5, "juin": 6, "june": 6, "jun": 6,
    "juillet": 7, "juil": 7, "july": 7, "jul": 7, "aout": 8, "august": 8, "aug": 8,
    "septembre": 9, "sept": 9, "sep": 9, "september": 9, "octobre": 10, "october": 10,
    "oct": 10, "novembre": 11, "november": 11, "nov": 11, "decembre": 12, "december": 12,
    "dec": 12,
}  # fmt: skip
_MONTH = "|".join(sorted(_MONTHS, key=len, reverse=True))
_DATE_RE = re.compile(
    r"(?<![\d/.-])(?:"
    r"(?P<iy>\d{4})-(?P<im>\d{1,2})-(?P<id>\d{1,2})"
    r"|(?P<nd>\d{1,2})[/.-](?P<nm>\d{1,2})[/.-](?P<ny>\d{4}|\d{2})"
    rf"|(?P<td>\d{{1,2}})(?:er|st|nd|rd|th)?\s+(?P<tm>{_MONTH})\b\.?,?\s+(?P<ty>\d{{4}})"
    rf"|\b(?P<em>{_MONTH})\b\.?\s+(?P<ed>\d{{1,2}})(?:st|nd|rd|th)?,?\s+(?P<ey>\d{{4}})"
    r")(?![\d/])",
    re.IGNORECASE,
)
_DUE_LABEL_RE = re.compile(
    r"\bdate d'echeance|\bdate limite de (?:paiement|reglement)|\becheance\b"
    r"|\ba (?:regler|payer|acquitter)"
    r"(?: par (?:virement|cheque|carte|prelevement)(?: bancaire)?)?"
    r" (?:avant le|avant|au plus tard le|le|d'ici le)"
    r"|\bpayable (?:avant le|au plus tard le|le|jusqu'au|by|on|before)"
    r"|\b(?:paiement|reglement) (?:avant|au plus tard) le"
    r"|\b(?:due|payment) date|\bdate due\b|\bdue (?:by|on|before)\b|\bdue(?=:?[ \t]*\d)"
    r"|\bpayment due(?: by| on| before)?|\bpay by|\bto be paid (?:by|before|on)"
    r"|\bzahlbar bis(?: zum)?|\bfallig(?:keitsdatum| am)?\b"
    r"|\b(?:preleve|debite)e?s? le|\bdate de prelevement|\b(?:debited|collected) on"
    r"|\b(?:regler|payer|reglement|paiement|virement)\b[^.\n\d]{0,25}?"
    r"\b(?:d'ici (?:le|au)|avant le|au plus tard le)",
    re.IGNORECASE,
)
_ISSUE_LABEL_RE = re.compile(
    r"\bdate de (?:la )?facture|\bdate de facturation|\bdate d'(?:emission|edition)"
    r"|\bemise? le|\betablie? le|\bfacturee? le|\ben date du"
    r"|\binvoice date|\bdate of (?:issue|invoice)|\bissue date|\bissued(?: on)?|\bdated?\s*:",
    re.IGNORECASE,
)
_NUMBER_DATED_RE = re.compile(r"[ \t]+(?:du|dated|of)[ \t]+", re.IGNORECASE)
_DATE_REACH = 40


def _date_of(match: re.Match[str]) -> date | None:
    groups = match.groupdict()
    try:
        if groups["iy"]:
            return date(int(groups["iy"]), int(groups["im"]), int(groups["id"]))
        if groups["nd"]:
            year = int(groups["ny"]) + (2000 if len(groups["ny"]) == 2 else 0)
            day, month = int(groups["nd"]), int(groups["nm"])
            if month > 12 >= day:
                day, month = month, day  # 12/15/2026 written the US way
            return date(year, month, day)
        if groups["td"]:
            return date(int(groups["ty"]), _MONTHS[groups["tm"].lower()], int(groups["td"]))
        return date(int(groups["ey"]), _MONTHS[groups["em"].lower()], int(groups["ed"]))
    except ValueError:
        return None


def _date_after(folded: str, position: int) -> date | None:
    """The date right after a label: a short gap with no digits and at most one line break."""
    window = folded[position : position + _DATE_REACH + 30]
    match = _DATE_RE.search(window)
    if match is None:
        return None
    gap = window[: match.start()]
    if len(gap) > _DATE_REACH or re.search(r"\d", gap) or gap.count("\n") > 1:
        return None
    return _date_of(match)


# "d'ici le 15 janvier", "avant le 15/01": a due date without its year
_YEARLESS_DATE_RE = re.compile(
    rf"(?<![\d/.-])(?:(?P<td>\d{{1,2}})(?:er)?\s+(?P<tm>{_MONTH})\b\.?"
    r"|(?P<nd>\d{1,2})[/.](?P<nm>\d{1,2}))(?![\d/]|\.\d|\s*,?\s*\d{4})",
    re.IGNORECASE,
)


def _yearless_due(folded: str) -> tuple[int, int] | None:
    """(month, day) right after a due label, when the date has no year."""
    for label in _DUE_LABEL_RE.finditer(folded):
        window = folded[label.end() : label.end() + _DATE_REACH]
        match = _YEARLESS_DATE_RE.search(window)
        if match is None or re.search(r"\d", window[: match.start()]):
            continue
        if match.group("td"):
            month, day = _MONTHS[match.group("tm").lower()], int(match.group("td"))
        else:
            month, day = int(match.group("nm")), int(match.group("nd"))
        if 1 <= month <= 12 and 1 <= day <= 31:
            return month, day
    return None


def _next_occurrence(month_day: tuple[int, int], after: date) -> date | None:
    """The first (month, day) on or after a date: "avant le 15 janvier" sent in December."""
    month, day = month_day
    for year in (after.year, after.year + 1):
        try:
            candidate = date(year, month, day)
        except ValueError:
            continue
        if candidate >= after:
            return candidate
    return None


def _labelled_date(folded: str, label_re: re.Pattern[str], skip: list[range]) -> date | None:
    for match in label_re.finditer(folded):
        if any(match.start() in span for span in skip):
            continue
        found = _date_after(folded, match.end())
        if found is not None:
            return found
    return None


# ---------------------------------------------------------------------------- terms

_TERMS_RE = re.compile(
    r"(?P<receipt>(?:paiement|payable|reglement|a regler)\s+(?:a|des)\s+reception"
    r"|a reception de (?:la )?facture|(?:due|payable)\s+(?:on|upon)\s+receipt|upon receipt)"
    r"|(?P<lead>\b(?:conditions de (?:paiement|reglement)|delai de (?:paiement|reglement)"
    r"|(?:payment )?terms?|paiement|reglement|payable|within|net|sous|a)\b\s*:?\s*"
    r"(?:a\s+|net\s+)?)?"
    r"(?P<days>\d{1,3})\s*(?:jours?|j\b|days?)\b"
    r"(?P<tail>(?:\s+nets?\b)?"
    r"(?:\s+(?:le\s+)?(?P<eom>fin de mois|fdm|end of (?:the )?month|eom)\b)?"
    r"(?:\s+(?:date de facture|date d'emission|net|from invoice date|after invoice date)\b)?)",
    re.IGNORECASE,
)
_NET_TERMS_RE = re.compile(r"\bnet\s*(?P<days>\d{1,3})\b(?![.,]?\d)(?!\s*(?:€|eur|%|\d))", re.I)


def _terms_in(folded: str) -> tuple[int, bool] | None:
    """Payment terms: (days, end of month), the first stated; "à réception" is 0 days."""
    found: list[tuple[int, int, bool]] = []
    for match in _TERMS_RE.finditer(folded):
        if match.group("receipt"):
            found.append((match.start(), 0, False))
        elif match.group("lead") or match.group("tail"):
            found.append((match.start(), int(match.group("days")), bool(match.group("eom"))))
    for match in _NET_TERMS_RE.finditer(folded):
        found.append((match.start(), int(match.group("days")), False))
    if not found:
        return None
    _, days, end_of_month = min(found)
    return days, end_of_month


# ---------------------------------------------------------------------------- grids

# Table-based invoicing tools print a row of labels over a row of values; pypdf gives them
# back as two lines ("Numéro Date Échéance" / "F-12 19/11/2026 19/12/2026"). Such a pair is
# rewritten as "label : value" lines, which the rules above read like any other invoice.
_GRID_LABEL_RE = re.compile(
    r"(?<![\w'])(?:"
    r"(?P<due>date d'echeance|echeance|due date|payment due|date limite)"
    r"|(?P<issue>date de (?:la )?facture|date facture|date d'emission|invoice date|date)"
    r"|(?P<number>n ?° ?(?:de )?facture|facture n ?°|numero(?: de facture)?|n ?°"
    r"|invoice (?:no\b\.?|number|#)|number|no\b\.?)"
    r"|(?P<money>net a payer|reste a payer|total a payer|montant a payer|total due|amount due"
    r"|balance due|total (?:h\.?t|t\.?t\.?c|tva)\b\.?|montant (?:h\.?t|t\.?t\.?c)\b\.?|tva|vat"
    r"|sous-total|subtotal|total|montant|amount)"
    r")(?![\w'])",
    re.IGNORECASE,
)
_WORD_RE = re.compile(r"\S+")
_GRID_KEYWORD_RE = re.compile(rf"\b(?:{_KEYWORD})\b", re.IGNORECASE)


def _grid_values(line: str, original: str) -> list[tuple[str, str]]:
    """A value row as (kind, text): "date", "money" (with decimals or a currency) or "word";
    read on the folded line, the text taken from the original one (same positions)."""
    values: list[tuple[str, str]] = []
    position = 0
    while (word := _WORD_RE.search(line, position)) is not None:
        start = word.start()
        found: re.Match[str] = word
        kind = "word"
        if (date_match := _DATE_RE.match(line, start)) is not None:
            found, kind = date_match, "date"
        elif (money := _MONEY_RE.match(line, start)) is not None and (
            money.group("pre") or money.group("suf") or re.search(r"[.,]\d\d$", money["num"])
        ):
            found, kind = money, "money"
        values.append((kind, original[found.start() : found.end()].strip()))
        position = max(found.end(), start + 1)
    return values


def _grid_lines(header: str, row: str, original_row: str, keyword: str) -> list[str] | None:
    """'label : value' lines for a header row over a value row; None if they are not one."""
    labels = list(_GRID_LABEL_RE.finditer(header))
    unknown = len(_WORD_RE.findall(_GRID_LABEL_RE.sub(" ", header)))
    if len(labels) < 2 or unknown > len(labels) or re.search(r"\d", header):
        return None
    values = _grid_values(row, original_row)
    taken: dict[str, list[str]] = {"date": [], "money": [], "word": []}
    for kind, text in values:
        taken[kind].append(text)
    kinds = [label.lastgroup or "" for label in labels]
    for index in range(len(labels) - 1):
        # "Date Échéance" over one date is one column, the due date; over two, two columns.
        if (kinds[index], kinds[index + 1]) == ("issue", "due") and sum(
            kind in ("issue", "due") for kind in kinds
        ) > len(taken["date"]):
            kinds[index] = ""
    lines = []
    for label, kind in zip(labels, kinds, strict=True):
        if not kind:
            continue
        pool = taken["word" if kind == "number" else "date" if kind in ("due", "issue")
                     else "money"]
        if kind == "number":
            while pool and not re.fullmatch(_TOKEN, pool[0], re.IGNORECASE):
                pool.pop(0)
        if not pool:
            continue
        value = pool.pop(0)
        text = {"number": f"{keyword} n° : {value}", "issue": f"Date de facture : {value}",
                "due": f"Date d'echeance : {value}"}.get(kind, f"{label.group()} : {value}")
        lines.append(text)
    return lines or None


def _linearize_grids(text: str) -> str:
    """The text with each label-row/value-row pair rewritten as 'label : value' lines."""
    folded = _fold(text)
    first = _GRID_KEYWORD_RE.search(folded)
    keyword = "Avoir" if first and _kind_of(first.group()) == "credit_note" else "Facture"
    lines, folded_lines = text.split("\n"), folded.split("\n")  # folding keeps positions
    out: list[str] = []
    index = 0
    while index < len(lines):
        if index + 1 < len(lines):
            rewritten = _grid_lines(folded_lines[index], folded_lines[index + 1],
                                    lines[index + 1], keyword)
            if rewritten is not None:
                out.extend(rewritten)
                index += 2
                continue
        out.append(lines[index])
        index += 1
    return "\n".join(out)


# ---------------------------------------------------------------------------- one source


@dataclass(frozen=True)
class _Found:
    """What one source says about one invoice; None where it says nothing."""

    source: str  # "factur-x" | "pdf" | "mail"
    number: str | None = None
    kind: str | None = None
    amount: Decimal | None = None
    currency: str | None = None
    issue_date: date | None = None
    due_date: date | None = None
    terms: tuple[int, bool] | None = None
    client_name: str | None = None
    refers_to: tuple[str, ...] = ()  # invoices a credit note or a corrected invoice names
    due_month_day: tuple[int, int] | None = None  # a due date given without its year

    @property
    def says_something(self) -> bool:
        return any(
            value is not None
            for value in (self.number, self.amount, self.issue_date, self.due_date, self.terms)
        )


_TRUST = ("factur-x", "pdf", "mail")
_CORRECTIVE_RE = re.compile(
    r"rectificati|annule et remplace|en remplacement de|remplace (?:la|notre) facture"
    r"|facture corrigee|corrected invoice|replaces (?:the )?invoice|corrective",
    re.IGNORECASE,
)


def _found_in_text(text: str, source: str, number_text: str | None = None) -> _Found:
    """Facts from free text; the number is looked for in `number_text` first (a subject)."""
    original = unicodedata.normalize("NFC", text[:MAX_BODY_CHARS])
    folded = _fold(original)
    hit: _NumberHit | None = None
    subject_hits: list[_NumberHit] = []
    if number_text:
        subject = unicodedata.normalize("NFC", number_text)
        subject_hits = _number_hits(subject, _fold(subject))
        hit = subject_hits[0] if subject_hits else None
    body_hits = _number_hits(original, folded)
    if hit is None and body_hits:
        hit = body_hits[0]
    return _facts_in(folded, source, hit, body_hits + subject_hits[1:])


def _facts_in(folded: str, source: str, hit: _NumberHit | None,
              hits: list[_NumberHit]) -> _Found:
    money = _amount_in(folded)
    due_spans = [range(m.start(), m.end()) for m in _DUE_LABEL_RE.finditer(folded)]
    issue_date = _labelled_date(folded, _ISSUE_LABEL_RE, due_spans)
    if issue_date is None:
        issue_date = _issue_date_after_number(folded, hits)
    refers_to: tuple[str, ...] = ()
    if hit is not None and (hit.kind == "credit_note" or _CORRECTIVE_RE.search(folded)):
        own = _number_key(hit.number)
        refers_to = tuple(dict.fromkeys(
            other.number for other in hits
            if other.kind == "invoice" and _number_key(other.number) != own
        ))
    due_date = _labelled_date(folded, _DUE_LABEL_RE, [])
    return _Found(
        source=source,
        number=hit.number if hit else None,
        kind=hit.kind if hit else None,
        amount=money[0] if money else None,
        currency=money[1] if money else None,
        issue_date=issue_date,
        due_date=due_date,
        terms=_terms_in(folded),
        refers_to=refers_to,
        due_month_day=_yearless_due(folded) if due_date is None else None,
    )


def _issue_date_after_number(folded: str, hits: list[_NumberHit]) -> date | None:
    """'Facture n° F-12 du 15/11/2026': the date right after the number is the issue date."""
    for hit in hits:
        joint = _NUMBER_DATED_RE.match(folded, hit.end)
        if joint is not None:
            match = _DATE_RE.match(folded, joint.end())
            if match is not None:
                return _date_of(match)
    return None


def _found_in_xml(xml: XmlFacts) -> _Found:
    terms = _terms_in(_fold(xml.terms_text)) if xml.terms_text else None
    return _Found(
        source="factur-x",
        number=xml.number,
        kind=xml.kind,
        amount=xml.amount,
        currency=xml.currency if xml.amount is not None else None,
        issue_date=xml.issue_date,
        due_date=xml.due_date,
        terms=terms,
        client_name=xml.client_name,
        refers_to=xml.refers_to,
    )


_FILENAME_SEPARATORS_RE = re.compile(r"[_+]")
# A quote, an order, a delivery note, general terms: a title that says what the document is,
# at the start of a line, before any invoice number.
_NOT_INVOICE_TITLE_RE = re.compile(
    r"(?m)^[ \t]*(?:facture[ \t]+)?(?:devis|quote|quotation|estimate|pro ?-?forma"
    r"|bon de commande|purchase order|order confirmation|confirmation de commande"
    r"|bon de livraison|delivery note|conditions generales|terms and conditions"
    r"|releve de compte|statement of account)\b",
    re.IGNORECASE,
)


def _is_not_an_invoice(document: Document) -> bool:
    """A document whose own title says quote, order, delivery note, terms..."""
    if document.xml is not None or not document.text:
        return False
    original = unicodedata.normalize("NFC", document.text[:MAX_BODY_CHARS])
    folded = _fold(original)
    title = _NOT_INVOICE_TITLE_RE.search(folded)
    if title is None:
        return False
    hits = _number_hits(original, folded)
    return not hits or title.start() <= hits[0].start


def _found_in_document(document: Document) -> list[_Found]:
    """The document's own sources, most trusted first; the filename may give the number."""
    found: list[_Found] = []
    if document.xml is not None:
        found.append(_found_in_xml(document.xml))
    if document.text.strip():
        text = _linearize_grids(unicodedata.normalize("NFC", document.text[:MAX_BODY_CHARS]))
        text_found = _found_in_text(text, "pdf")
        if text_found.number is None and document.xml is None:
            stem = _FILENAME_SEPARATORS_RE.sub(" ", document.filename.rsplit(".", 1)[0])
            hits = _number_hits(stem, _fold(stem))
            if hits and _KEYWORD_RE.search(_fold(document.text)):
                text_found = replace(text_found, number=hits[0].number, kind=hits[0].kind)
        found.append(text_found)
    return found


# ---------------------------------------------------------------------------- merging


def _fmt(value: object) -> str:
    if isinstance(value, Decimal):
        return f"{value:.2f}"
    if isinstance(value, tuple):
        days, end_of_month = value
        return f"{days} days" + (" end of month" if end_of_month else "")
    return str(value)


def _merge(
    sources: list[_Found],
    fallback_issue_date: date | None,
    notes: tuple[str, ...] = (),
    siblings: frozenset[str] = frozenset(),
) -> InvoiceFacts:
    """Most trusted source wins per fact; the other sources' differing values are recorded.
    `siblings` are the other invoices of the same mail: a credit note sent with the invoice
    that replaces the one it cancels does not credit that new invoice."""
    ordered = sorted(
        (found for found in sources if found.says_something),
        key=lambda found: _TRUST.index(found.source),
    )
    disagreements: list[str] = []

    def pick(field: str) -> _Found | None:
        holders = [found for found in ordered if getattr(found, field) is not None]
        if not holders:
            return None
        winner = holders[0]
        won = getattr(winner, field)
        for other in holders[1:]:
            value = getattr(other, field)
            equal = _number_key(value) == _number_key(won) if field == "number" else value == won
            if not equal:
                note = f"{field}: {winner.source} {_fmt(won)} != {other.source} {_fmt(value)}"
                if note not in disagreements:
                    disagreements.append(note)
        return winner

    number_source = pick("number")
    amount_source = pick("amount")
    pick("currency")
    issue_source = pick("issue_date")
    due_source = pick("due_date")
    terms_source = pick("terms")
    client_source = pick("client_name")
    kinds = [found for found in ordered if found.number is not None and found.kind]
    if kinds and any(found.kind != kinds[0].kind for found in kinds[1:]):
        disagreements.append(
            f"kind: {kinds[0].source} {kinds[0].kind} != "
            + ", ".join(f"{f.source} {f.kind}" for f in kinds[1:] if f.kind != kinds[0].kind)
        )

    issue_date = issue_source.issue_date if issue_source else fallback_issue_date
    due_date = due_source.due_date if due_source else None
    yearless = next((f.due_month_day for f in ordered if f.due_month_day), None)
    if due_date is None and yearless is not None and issue_date is not None:
        due_date = _next_occurrence(yearless, issue_date)
    terms = terms_source.terms if terms_source else None
    amount = amount_source.amount if amount_source else None
    missing = []
    if amount is None:
        missing.append("amount")
    number = (number_source.number or "") if number_source else ""
    kind = (kinds[0].kind or "invoice") if kinds else "invoice"
    if due_date is None and terms is None and kind != "credit_note":
        missing.append("due_date")  # a credit note is not chased: it needs no due date
    if issue_date is None:
        missing.append("issue_date")
    references = next((found.refers_to for found in ordered if found.refers_to), ())
    verb = "credits" if kind == "credit_note" else "replaces"
    reference_notes = tuple(
        f"{number} {verb} invoice {reference}"
        for reference in references
        if _number_key(reference) not in {_number_key(number), *siblings}
    )
    return InvoiceFacts(
        refers_to=tuple(
            reference for reference in references
            if _number_key(reference) not in {_number_key(number), *siblings}
        ),
        number=number,
        kind=kind,
        amount=amount,
        currency=(amount_source.currency if amount_source else None) or "EUR",
        issue_date=issue_date,
        due_date=due_date,
        terms_days=terms[0] if terms else None,
        terms_end_of_month=terms[1] if terms else False,
        client_name=client_source.client_name if client_source else None,
        source=ordered[0].source if ordered else "mail",
        missing=tuple(missing),
        disagreements=tuple(disagreements),
        notes=tuple(dict.fromkeys((*notes, *reference_notes))),
    )


# ---------------------------------------------------------------------------- the mail

_OWN_HEADERS = ("x-relance-step", "x-relance-notice")
_REPLY_PREFIX_RE = re.compile(r"^\s*(?:re|fwd?|tr|aw|wg|sv)\s*(?:\[\d+\])?\s*:", re.IGNORECASE)
_FORWARD_PREFIX_RE = re.compile(r"^\s*(?:(?:re|aw)\s*:\s*)*(?:fwd?|tr|wg)\s*:", re.IGNORECASE)
_REMINDER_RE = re.compile(
    r"\b(?:relance|rappel|reminder|mise en demeure|impayee?s?|unpaid|overdue|past due"
    r"|retard de paiement|nudge|follow[- ]?up|chasing|suivi de (?:votre |la )?facture)\b",
    re.IGNORECASE,
)
_NOT_INVOICE_RE = re.compile(
    r"\b(?:devis|quote|quotation|estimate|pro ?-?forma|confirmation de (?:votre )?commande"
    r"|order confirmation|bon de commande|purchase order|bon de livraison|delivery note"
    r"|newsletter)\b",
    re.IGNORECASE,
)
# Money that came in, and statements of what is owed: about invoices, never a new one.
_PAYMENT_RE = re.compile(
    r"\b(?:avis de (?:virement|paiement|credit|prelevement)|virement recu|paiement recu"
    r"|reglement recu|confirmation de (?:paiement|reglement)|recu de paiement|quittance"
    r"|payment (?:received|confirmation|receipt)|remittance advice|receipt"
    r"|(?:facture|invoice)\s+(?:\S+\s+)?(?:payee|reglee|acquittee|paid)"
    r"|releve de (?:compte|factures)|etat de (?:votre )?compte|situation de compte"
    r"|statement of account|account statement)\b",
    re.IGNORECASE,
)
_AUTO_REPLY_SUBJECT_RE = re.compile(
    r"^\s*(?:reponse automatique|automatic reply|auto(?:matic)?[ -]?(?:reply|response)"
    r"|autoreply|out of (?:the )?office|absent|absence|abwesenheit|auto\s*:)",
    re.IGNORECASE,
)
_KEYWORD_RE = re.compile(r"factur|invoice|avoir|credit ?note|rechnung", re.IGNORECASE)
# The header block of a forwarded message: "De : Name <addr>" after the separator line.
_FORWARDED_FROM_RE = re.compile(
    r"(?:message transfere|forwarded message|original message|message d'origine"
    r"|weitergeleitete nachricht)[\s\S]{0,300}?^[ \t>]*(?:de|from|von)[ \t]*:[^\n@]*?"
    r"(?P<addr>[\w.+-]+@[\w-]+(?:\.[\w-]+)+)",
    re.IGNORECASE | re.MULTILINE,
)


def _is_bulk(mail: Mail) -> bool:
    headers = mail.headers
    return (
        "list-unsubscribe" in headers
        or "list-id" in headers
        or headers.get("precedence", "").strip().lower() in ("bulk", "list", "junk")
    )


def _subject_refuses(subject: str) -> bool:
    """A reminder, a quote, an order, a payment: whatever the attachments, not a new invoice."""
    original = unicodedata.normalize("NFC", subject)
    folded = _fold(original)
    if _REMINDER_RE.search(folded) or _PAYMENT_RE.search(folded):
        return True
    if _AUTO_REPLY_SUBJECT_RE.search(folded):
        return True
    refusal = _NOT_INVOICE_RE.search(folded)
    if refusal is None:
        return False
    hits = _number_hits(original, folded)
    if hits and hits[0].start < refusal.start():
        return False  # "Facture F-12 (devis D-3)"
    keyword = _GRID_KEYWORD_RE.search(folded)
    # "Facture parquet et devis escalier" names both: the attachments decide. "Facture pro
    # forma" is one thing, a pro forma.
    return not (
        keyword is not None
        and keyword.start() < refusal.start()
        and folded[keyword.end() : refusal.start()].strip(" \t-'")
    )


def _is_auto_reply(mail: Mail) -> bool:
    """RFC 3834 auto-replies only: invoicing tools mark their own mail 'auto-generated'."""
    auto = mail.headers.get("auto-submitted", "").strip().lower()
    return auto.startswith("auto-replied") or "x-autoreply" in mail.headers


def _forwards_someone_elses_mail(mail: Mail) -> bool:
    """'TR: Votre facture' with a supplier's mail inside: the firm is the one billed."""
    if not _FORWARD_PREFIX_RE.match(mail.subject):
        return False
    found = _FORWARDED_FROM_RE.search(_fold(mail.text[:MAX_BODY_CHARS]))
    if found is None:
        return False
    domain = found.group("addr").rpartition("@")[2].lower()
    return domain != mail.from_addr.rpartition("@")[2].lower()


def extract_invoices(mail: Mail) -> list[InvoiceFacts]:
    """The invoices and credit notes a mail sends; [] when it sends none."""
    return extract_invoices_with_notes(mail)[0]


def extract_invoices_with_notes(mail: Mail) -> tuple[list[InvoiceFacts], tuple[str, ...]]:
    """Like `extract_invoices`, plus every note on attachments that could not be read (an
    encrypted or corrupt PDF), for the owner's report: never a reason to fail. Each invoice
    also carries the notes that concern it in `InvoiceFacts.notes`."""
    if any(header in mail.headers for header in _OWN_HEADERS):
        return [], ()  # the daemon's own reminders and notices
    if _subject_refuses(mail.subject) or _is_auto_reply(mail):
        return [], ()
    if _forwards_someone_elses_mail(mail):
        return [], ()
    notes: list[str] = []
    loose_notes: list[str] = []  # from attachments that gave no invoice: every invoice gets them
    groups: dict[str, list[_Found]] = {}
    group_notes: dict[str, list[str]] = {}
    anonymous: list[list[_Found]] = []  # invoice-like documents whose number was not found
    for attachment in mail.attachments:
        document = read_document(attachment)
        if document is None:
            continue
        notes.extend(document.notes)
        if _is_not_an_invoice(document):
            continue  # a quote or the general terms sent along
        found = _found_in_document(document)
        number = next((f.number for f in found if f.number), None)
        if number is not None:
            groups.setdefault(_number_key(number), []).extend(found)
            group_notes.setdefault(_number_key(number), []).extend(document.notes)
            continue
        loose_notes.extend(document.notes)
        if any(f.amount is not None for f in found) and _KEYWORD_RE.search(
            _fold(document.text)
        ):
            anonymous.append(found)  # an invoice by its words and its total, not a T&C

    from_mail = _found_in_text(f"{mail.subject}\n{mail.text}", "mail", mail.subject)
    fallback_issue_date = mail.date.date() if mail.date else None
    if groups:
        mail_key = _number_key(from_mail.number) if from_mail.number else None
        if mail_key in groups:
            groups[mail_key].append(from_mail)
        elif len(groups) == 1:
            next(iter(groups.values())).append(from_mail)
        keys = frozenset(groups)
        invoices = [
            _merge(found, fallback_issue_date, (*group_notes[key], *loose_notes), keys - {key})
            for key, found in groups.items()
        ]
        return invoices, tuple(notes)

    if _REPLY_PREFIX_RE.match(mail.subject):
        return [], tuple(notes)  # a reply or forward about an invoice it does not attach
    if from_mail.number is None:
        has_pdf = any(is_pdf(attachment) for attachment in mail.attachments)
        if anonymous or (has_pdf and _KEYWORD_RE.search(_fold(mail.subject))):
            notes.append("looks like an invoice, but no invoice number was found")
        return [], tuple(notes)
    subject = unicodedata.normalize("NFC", mail.subject)
    named_in_subject = bool(_number_hits(subject, _fold(subject)))
    if _is_bulk(mail) and not named_in_subject:
        return [], tuple(notes)  # a newsletter that happens to name an invoice
    listed = _listed_in_body(mail)
    if len(listed) > 1:
        return [_merge([found], fallback_issue_date, tuple(notes)) for found in listed], tuple(
            notes
        )
    if not (named_in_subject or from_mail.amount is not None or anonymous
            or _sends_an_invoice(mail.text)):
        return [], tuple(notes)  # "as our invoice F-12 said...": a mention, not a sending
    sources = [from_mail]
    if len(anonymous) == 1:
        sources = [*anonymous[0], from_mail]
    return [_merge(sources, fallback_issue_date, tuple(notes))], tuple(notes)


def invoice_named_by_headers(mail: Mail) -> InvoiceFacts | None:
    """The one invoice a mail's headers name, for adopting old history without reading
    the mail: its number from the subject, its issue date from the Date header, nothing
    else. None whenever the headers alone cannot tell (no number or several, a credit
    note, a reply, a forward, a subject that refuses): then the body decides, as always.
    The amount and due date stay unknown: an invoice adopted as history is never chased."""
    if any(header in mail.headers for header in _OWN_HEADERS) or _is_auto_reply(mail):
        return None
    subject = unicodedata.normalize("NFC", mail.subject)
    if _REPLY_PREFIX_RE.match(subject) or _subject_refuses(subject):
        return None
    hits = _number_hits(subject, _fold(subject), with_lists=True)
    if len({_number_key(hit.number) for hit in hits}) != 1 or hits[0].kind != "invoice":
        return None
    return InvoiceFacts(number=hits[0].number, source="headers",
                        issue_date=mail.date.date() if mail.date else None)


_LINE_RE = re.compile(r"[^\n]+")
_SENDING_RE = re.compile(
    r"ci-?joint|en piece jointe|veuillez trouver|vous trouverez|voici|je vous (?:adresse"
    r"|envoie|transmets|fais parvenir)|please find|attached|enclosed|here is|here's"
    r"|sending you",
    re.IGNORECASE,
)
_SENDING_REACH = 80


def _sends_an_invoice(text: str) -> bool:
    """The body gives an invoice number as a field, or right after 'ci-joint', 'voici'..."""
    original = unicodedata.normalize("NFC", text[:MAX_BODY_CHARS])
    folded = _fold(original)
    return any(
        hit.labelled
        or _SENDING_RE.search(folded, max(0, hit.start - _SENDING_REACH), hit.start)
        for hit in _number_hits(original, folded)
    )


def _listed_in_body(mail: Mail) -> list[_Found]:
    """Invoices listed one per line with their own amounts ("- facture n° 12 : 320,00 €"),
    sharing the mail's dates and terms; [] unless there are at least two."""
    original = unicodedata.normalize("NFC", mail.text[:MAX_BODY_CHARS])
    folded = _fold(original)
    shared = _facts_in(folded, "mail", None, _number_hits(original, folded))
    listed: dict[str, _Found] = {}
    for line in _LINE_RE.finditer(folded):
        hits = _number_hits(original[line.start() : line.end()], line.group())
        money = _amount_in(line.group())
        if len(hits) != 1 or money is None:
            continue
        listed.setdefault(_number_key(hits[0].number), replace(
            shared, number=hits[0].number, kind=hits[0].kind, amount=money[0],
            currency=money[1], refers_to=(),
        ))
    return list(listed.values()) if len(listed) > 1 else []


# ---------------------------------------------------------------------------- prefilter

_PREFILTER_RE = re.compile(
    r"factur|invoice|avoir|credit\s*-?\s*note|rechnung|fattura|factura", re.IGNORECASE
)


def looks_like_invoice(subject: str, content_type: str) -> bool:
    """Header-only and generous: it only decides whether a body is worth fetching."""
    kind = content_type.strip().lower()
    if kind.startswith(("multipart/mixed", "application/pdf")):
        return True
    return bool(_PREFILTER_RE.search(_fold(unicodedata.normalize("NFC", subject))))


# ---------------------------------------------------------------------------- due date


def due_date_for(
    facts: InvoiceFacts, default_terms_days: int, default_end_of_month: bool = False
) -> date | None:
    """The stated due date, else issue date + terms (the invoice's own, else the default);
    "fin de mois" means the last day of the month that lands in (Code de commerce L441-10)."""
    if facts.due_date is not None:
        return facts.due_date
    if facts.issue_date is None:
        return None
    if facts.terms_days is not None:
        days, end_of_month = facts.terms_days, facts.terms_end_of_month
    else:
        days, end_of_month = default_terms_days, default_end_of_month
    due = facts.issue_date + timedelta(days=days)
    if end_of_month:
        due = due.replace(day=calendar.monthrange(due.year, due.month)[1])
    return due
