"""Listening: what a message in a case's thread says, and whether its sender may be obeyed.

Pure, no I/O and no clock: the shell passes the mail, the open cases and `now`. Each
function answers one question the loop asks about an incoming message:
- `reply_intent`: a client's reply promises to pay, disputes the invoice, or just answers;
- `read_payment` / `match_payment`: a bank or provider says money arrived, for which case;
- `trust_of`: is the sender proven to be who `From:` says (a `From:` alone proves nothing);
- `parse_commands`: the owner's commands in the first lines of a mail;
- `plan_instalments`, `digest`, `digest_due`: instalment plans and the weekly digest.
"""

from __future__ import annotations

import calendar
import dataclasses
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

from relance.core.classify import is_own
from relance.core.commands import CommandRefused, parse_amount, parse_duration
from relance.core.extract import invoice_numbers_in, parse_money
from relance.core.thread import known_numbers_in
from relance.model import Case, CaseState, Mail

CENT = Decimal("0.01")
MAX_TEXT_CHARS = 20_000  # a notice or a reply says what matters at the top

# ---------------------------------------------------------------------------- folding

_FOLD_TABLE: dict[int, str] = {
    cp: base
    for cp in range(0xC0, 0x250)
    if (base := unicodedata.normalize("NFD", chr(cp))[0]).isascii() and base.isalpha()
}
_FOLD_TABLE.update({ord(c): " " for c in "\u00a0\u202f\u2009\u2007\u2002\u2003"})
_FOLD_TABLE.update({ord(c): "'" for c in "\u2019\u2018\u02bc\u00b4`"})
_FOLD_TABLE.update({ord(c): "-" for c in "\u2010\u2011\u2012\u2013\u2014\u2212"})


def _fold(text: str) -> str:
    """Accents off, odd spaces, quotes and dashes plain: one character for one, so a
    position in the folded text is the same position in the original."""
    return unicodedata.normalize("NFC", text).translate(_FOLD_TABLE)


# ---------------------------------------------------------------------------- new part

# Where quoted history starts, as Gmail, Outlook, Thunderbird, Apple Mail and webmails
# write it. An attribution ("Le ... a écrit :", "On ... wrote:") may be wrapped: it ends on
# the line with "a écrit :" and starts up to two lines above, on a line opening "Le"/"On".
_ATTRIBUTION_END_RE = re.compile(r"\b(?:a ecrit|wrote)[ \t]*:[ \t]*$", re.IGNORECASE)
_ATTRIBUTION_START_RE = re.compile(r"^[ \t]*(?:le|on)\b", re.IGNORECASE)
_SEPARATOR_RE = re.compile(
    r"^\s*(?:-{2,}\s*(?:original message|message d'origine|mail original|message original"
    r"|forwarded message|message transfere|reply message)\s*-{2,}|_{10,}|-{10,})\s*$",
    re.IGNORECASE,
)
_HEADER_BLOCK_RE = re.compile(
    r"^\s*\*?(?:de|from)\s*\*?\s*:[^\n]*\n(?:[^\n]*\n){0,2}?\s*\*?"
    r"(?:envoye|sent|date|a|to|objet|subject)\s*\*?\s*:",
    re.IGNORECASE,
)
_SIGNATURE_RE = re.compile(r"^-- ?$")


def _history_starts(lines: list[str]) -> int:
    """Index of the first line of quoted history (len(lines) when there is none)."""
    for index, line in enumerate(lines):
        if (
            _SEPARATOR_RE.match(line)
            or _SIGNATURE_RE.match(line)
            or _HEADER_BLOCK_RE.match("\n".join(lines[index : index + 4]))
        ):
            return index
        if _ATTRIBUTION_END_RE.search(line):
            for start in (index, index - 1, index - 2):
                if start >= 0 and _ATTRIBUTION_START_RE.match(lines[start]):
                    return start
    return len(lines)


def new_part(text: str) -> str:
    """The part of a reply its author wrote now: quoted lines (">") dropped, and everything
    from the first attribution line, separator, quoted header block or signature cut off."""
    original = unicodedata.normalize("NFC", text[:MAX_TEXT_CHARS]).replace("\r\n", "\n")
    original_lines = original.split("\n")
    folded_lines = _fold(original).split("\n")
    end = _history_starts(folded_lines)
    kept = [original_lines[i] for i in range(end) if not folded_lines[i].lstrip().startswith(">")]
    return "\n".join(kept).strip()


# ---------------------------------------------------------------------------- intent

_NEGATION_RE = re.compile(
    r"\b(?:ne|n'|pas de|aucune?|sans|not|no|don't|do not|never|nor)\b[^.\n]{0,12}$", re.I
)
_DISPUTE_NEGATABLE_RE = re.compile(
    r"\blitiges?\b|\bcontest(?:e|ee|es|ees|ons|ez|er|ation)\b|\bdisput(?:e|ed|es|ing)\b"
    r"|\breclamation\b|\bcomplaint\b",
    re.IGNORECASE,
)
# Each line one way of saying it, in the folded text (accents off, lower case).
_DISPUTE_WAYS = (
    r"(?:pas|jamais|non) (?:encore |toujours )?(?:ete )?recu (?:la |les |le |l'|notre |nos )?"
    r"(?:marchandise|commande|livraison|colis|produit|materiel|prestation|article)",
    r"(?:marchandise|commande|livraison|colis|produit|materiel)s? (?:\w+ )?(?:non|jamais|pas)"
    r" (?:recue?s?|livree?s?|conformes?)",
    r"erreur (?:sur|dans) (?:la |votre |cette |notre )?facture",
    r"facture (?:est )?(?:erronee|incorrecte|fausse)",
    r"montant (?:est )?(?:errone|incorrect|faux)",
    r"\b(?:non|pas) conformes?\b|ne correspond pas|defectueu|endommage",
    r"refus(?:ons|e) de (?:payer|regler)",
    r"ne (?:vous )?(?:paierons|payerons|reglerons|paierai|payerai|reglerai) pas",
    r"incorrect invoice|invoice is (?:incorrect|wrong)|wrong (?:amount|invoice|price)",
    r"incorrect (?:amount|price)",
    r"(?:not|never) (?:yet )?received (?:the |our |any )?"
    r"(?:goods|order|delivery|items?|parcel|products?|shipment|services?)",
    r"(?:goods|items|order|products?|parcel|shipment) (?:were |was |are |is )?"
    r"(?:damaged|defective|missing|never delivered|not delivered)",
    r"not as ordered|(?:we|i) (?:will not|won't|refuse to) pay",
)
_DISPUTE_RE = re.compile("|".join(_DISPUTE_WAYS))
_DAYS = (
    r"demain|aujourd'hui|ce soir|cette semaine|la semaine prochaine|lundi|mardi|mercredi"
    r"|jeudi|vendredi|fin (?:du|de) mois"
)
_PROMISE_WAYS = (
    r"\bje (?:vous )?(?:regle|reglerai|paie|paye|paierai|payerai|vire|virerai)\b",
    r"\b(?:nous|on) (?:vous )?(?:reglons|reglerons|regle|payons|paierons|payerons|virerons)\b",
    r"\b(?:vais|allons|va) (?:vous )?(?:regler|payer|virer|proceder au|faire (?:le|un))",
    r"\b(?:je|nous) (?:vous )?(?:fais|faisons|ferai|ferons) (?:le|un) "
    r"(?:virement|reglement|paiement|cheque)",
    r"\b(?:virement|paiement|reglement|cheque|versement)s? (?:part\b|partira|est parti"
    r"|a ete (?:fait|effectue|envoye|emis|programme|lance|passe)"
    r"|est (?:programme|prevu|en cours|effectue|fait|envoye)"
    r"|sera (?:fait|effectue|envoye|emis|passe|execute)"
    r"|prevu|programme|en cours|interviendra|effectue)",
    r"\b(?:sera|seront|a ete|ont ete) (?:reglee?s?|payee?s?)",
    r"\bmise? en paiement|\bordre de virement",
    rf"\b(?:regler|payer|reglement|paiement)\b[^.\n]{{0,30}}\b(?:{_DAYS})\b",
    r"\b(?:we|i)(?:'ll| will| shall| are going to| am going to)(?! not| never) (?:\w+ )?"
    r"(?:pay|settle|transfer|wire|send (?:the |a |you )?(?:payment|transfer|funds|money"
    r"|cheque|check)|process (?:the |your )?(?:payment|invoice)|make (?:the |a )?payment)",
    r"\bpayment (?:is |has been |was |will be )?(?:scheduled|planned|on (?:its|the) way"
    r"|sent|made|initiated|released|approved|queued|processed|issued)",
    r"\b(?:will be|has been|have been) paid",
    r"\b(?:we|i) (?:have )?(?:just )?(?:paid|sent (?:the |a )?(?:payment|transfer))",
    r"\btransfer (?:is |has been |was )?(?:scheduled|sent|initiated|made)",
    r"\bnext payment run",
)
_PROMISE_RE = re.compile("|".join(_PROMISE_WAYS))


def reply_intent(text: str) -> str:
    """A "promise" (the money is coming or has gone), "dispute" (the client contests), or
    "reply". Only what the client wrote now counts: a quoted reminder says "litige" too."""
    folded = _fold(new_part(text)).lower()
    for match in _DISPUTE_NEGATABLE_RE.finditer(folded):
        if not _NEGATION_RE.search(folded[max(0, match.start() - 30) : match.start()]):
            return "dispute"
    if _DISPUTE_RE.search(folded):
        return "dispute"
    if _PROMISE_RE.search(folded):
        return "promise"
    return "reply"


# ---------------------------------------------------------------------------- payments


@dataclass(frozen=True)
class PaymentNotice:
    """What a bank alert or a payment provider's mail says arrived."""

    amount: Decimal
    currency: str  # ISO 4217
    payer: str  # as the notice writes it ("BOULANGERIE MARTIN"); "" when not named
    reference: str  # the transfer's reference / motif / libellé, "" when none
    numbers: tuple[str, ...]  # invoice numbers (or number-like tokens of the reference)


_CURRENCIES = {"€": "EUR", "£": "GBP", "$": "USD", "EURO": "EUR", "EUROS": "EUR"}
_MONEY = (
    r"(?<![\w.,/-])\+?(?:(?P<pre>€|£|\$|EUR|GBP|USD|CHF)[ \t]?)?"
    r"(?P<num>\d{1,3}(?:[ .,']\d{3})+(?:[.,]\d{1,2})?|\d+(?:[.,]\d{1,2})?)(?![\d])"
    r"(?:[ \t]?(?P<suf>€|£|\$|(?:EUR|GBP|USD|CHF|euros?)\b))?"
)
_MONEY_RE = re.compile(_MONEY, re.IGNORECASE)
_CREDIT_CUE_RE = re.compile(
    r"vous avez recu|vir(?:ement)? (?:sepa |inst |instantane |entrant )*recu|virement entrant"
    r"|\bcredit (?:de|sur|recu)|a ete credite|\bcredite\b|paiement recu|versement recu"
    r"|encaissement|reglement recu|operation creditrice"
    r"|payment (?:of [^\n]{1,25} )?received|received a payment"
    r"|(?:you|you've|you have) (?:just )?(?:received|got)|sent you"
    r"|has been (?:paid out|confirmed|collected)|\bpaid out\b",
    re.IGNORECASE,
)
_NOT_CREDIT_RE = re.compile(
    r"a echoue|\bechec\b|has failed|payment failed|failed payment|was declined|rejete|refuse"
    r"|impaye|chargeback|charged back|\brefund|rembourse|vous avez (?:effectue|emis|envoye)"
    r"|virement emis|you sent|prelevement|\bdebit (?:de|sur)|a ete debite|annule|cancel+ed",
    re.IGNORECASE,
)
_AMOUNT_LABEL_RE = re.compile(
    r"(?:montant|amount(?: paid| received)?|somme|total|virement(?: sepa)?(?: instantane)? de"
    r"|credit de|paiement de|payment of|versement de|recu|received|sent you|got)"
    r"[^\n\d€£$]{0,12}$",
    re.IGNORECASE,
)
_AMOUNT_EXCLUDED_RE = re.compile(
    r"(?:solde|balance|frais|fees?|commission|\bnet\b|disponible|plafond|available)"
    r"[^\n\d]{0,20}$",
    re.IGNORECASE,
)
_PAYER_STOP = (
    r"(?=[ \t]*(?:$|[,;(\n<]|\.[ \t]*$| (?:a ete|has been|was|sur votre|sur le compte|on your"
    r"|to your|into your|le \d|on \d|pour|for|via|avec|with|ref|reference|motif)\b))"
)
_PAYER_AFTER_AMOUNT_RE = re.compile(
    _MONEY + r"(?:[ \t]*(?:EUR|USD|GBP|CHF)\b)?[ \t]+(?:de la part de|provenant de"
    r"|en provenance de|emis par|from|de|d')[ \t]*(?P<payer>[^\n]{2,80}?)" + _PAYER_STOP,
    re.IGNORECASE | re.MULTILINE,
)
_PAYER_LABEL_RE = re.compile(
    r"^[ \t]*(?:emetteur|nom de l'emetteur|donneur d'ordre|nom du donneur d'ordre|ordonnateur"
    r"|de la part de|expediteur|payeur|customer|client|payer|paid by|remitter|debtor"
    r"|sender)(?:[ \t]*:[ \t]*|[ \t]+(?=\S+@))(?P<payer>[^\n]+)",
    re.IGNORECASE | re.MULTILINE,
)
# Statement style: "VIR SEPA RECU /DE BOULANGERIE MARTIN /MOTIF FACTURE F-1 /REF 123".
_PAYER_SLASH_RE = re.compile(r"/de[ \t]+(?P<payer>[^/\n]+)", re.IGNORECASE)
_REFERENCE_SLASH_RE = re.compile(r"/(?:motif|ref)[ \t]+(?P<ref>[^/\n]+)", re.IGNORECASE)
_PAYER_SENT_YOU_RE = re.compile(
    r"^[ \t]*(?P<payer>[^\n]{2,60}?) (?:sent you|vous a envoye)", re.IGNORECASE | re.MULTILINE
)
_REFERENCE_RE = re.compile(
    r"^[ \t]*(?:reference(?: de l'operation| du virement| de paiement| bancaire)?|ref\.?"
    r"|motif|libelle|communication|objet du virement|remittance information|memo"
    r"|informations? (?:de paiement|complementaires?)|description|note)"
    r"[ \t]*(?:\([^)\n]*\))?[ \t]*:[ \t]*(?P<ref>[^\n]+)",
    re.IGNORECASE | re.MULTILINE,
)
_REFERENCE_TOKEN_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9]|[._/-](?=[A-Za-z0-9]))*")


def _currency(symbol: str | None) -> str | None:
    if not symbol:
        return None
    return _CURRENCIES.get(symbol.upper(), symbol.upper())


def _notice_amount(folded: str) -> tuple[Decimal, str] | None:
    """The credited amount: one labelled "montant" / "payment of" / "reçu" first, else the
    first sum with a currency that is not a balance or a fee."""
    labelled: tuple[Decimal, str] | None = None
    plain: tuple[Decimal, str] | None = None
    for match in _MONEY_RE.finditer(folded):
        symbol = match.group("pre") or match.group("suf")
        amount = parse_money(match.group("num"))
        if not symbol or amount is None or amount <= 0:
            continue
        before = folded[max(0, match.start() - 40) : match.start()]
        if _AMOUNT_EXCLUDED_RE.search(before):
            continue
        found = (amount, _currency(symbol) or "EUR")
        if labelled is None and _AMOUNT_LABEL_RE.search(before):
            labelled = found
        if plain is None:
            plain = found
    return labelled or plain


def _clean_payer(raw: str) -> str:
    payer = " ".join(raw.split()).strip(" .:-\"'«»")
    return payer if any(ch.isalpha() for ch in payer) else ""


def _notice_payer(original: str, folded: str) -> str:
    for regex in (_PAYER_AFTER_AMOUNT_RE, _PAYER_LABEL_RE, _PAYER_SLASH_RE, _PAYER_SENT_YOU_RE):
        for match in regex.finditer(folded):
            payer = _clean_payer(original[match.start("payer") : match.end("payer")])
            if payer:
                return payer
    return ""


def read_payment(mail: Mail, known_numbers: Iterable[str] = ()) -> PaymentNotice | None:
    """The payment a bank alert or a provider's notice reports, or None when the mail does
    not say money arrived (an outgoing transfer, a failed payment, a newsletter).

    `known_numbers` are the open cases' numbers: a reference "F-2026-0040" names one even
    without the word "facture". Call this only for mail `trust_of` vouched for."""
    text = f"{mail.subject}\n{mail.text}"[:MAX_TEXT_CHARS].replace("\r\n", "\n")
    original = unicodedata.normalize("NFC", text)
    folded = _fold(original)
    head = "\n".join([line for line in folded.split("\n") if line.strip()][:6])
    if not _CREDIT_CUE_RE.search(folded) or _NOT_CREDIT_RE.search(head):
        return None
    money = _notice_amount(folded)
    if money is None:
        return None
    reference_match = _REFERENCE_RE.search(folded) or _REFERENCE_SLASH_RE.search(folded)
    reference = ""
    if reference_match:
        reference = " ".join(
            original[reference_match.start("ref") : reference_match.end("ref")].split()
        )
    numbers: dict[str, None] = dict.fromkeys(invoice_numbers_in(original))
    for token in _REFERENCE_TOKEN_RE.findall(reference):
        if any(ch.isdigit() for ch in token) and len(token) >= 3:
            numbers.setdefault(token, None)
    for number in known_numbers_in(original, known_numbers):
        numbers.setdefault(number, None)
    return PaymentNotice(
        amount=money[0],
        currency=money[1],
        payer=_notice_payer(original, folded),
        reference=reference,
        numbers=tuple(numbers),
    )


@dataclass(frozen=True)
class Allocation:
    """What one payment pays on one case."""

    number: str
    amount: Decimal
    settles: bool  # the balance is covered (or unknown): the case is paid


@dataclass(frozen=True)
class PaymentMatch:
    """Which case(s) a payment notice pays, and how much each; unmatched says why."""

    allocations: tuple[Allocation, ...] = ()
    how: str = ""  # "number" | "amount" | "" (unmatched)
    surplus: Decimal = Decimal("0")  # paid beyond the balances matched
    reason: str = ""

    @property
    def matched(self) -> bool:
        return bool(self.allocations)


def money_text(amount: Decimal, currency: str = "EUR") -> str:
    """1234.5 → "1 234,50 €": how the owner reads sums in reasons and notices."""
    value = amount.quantize(CENT, rounding=ROUND_HALF_UP)
    units, _, cents = f"{abs(value):.2f}".partition(".")
    grouped = f"{int(units):,}".replace(",", " ")
    symbol = {"EUR": "€", "GBP": "£", "USD": "$"}.get(currency, currency)
    return f"{'-' if value < 0 else ''}{grouped},{cents} {symbol}"


_LEGAL_FORMS = frozenset(
    {
        "sarl", "sas", "sasu", "eurl", "sa", "sci", "snc", "scop", "selarl", "ei", "eirl", "earl",
        "gaec", "ets", "etablissements", "ste", "societe", "ltd", "limited", "llc", "inc", "corp",
        "plc", "gmbh", "bv", "srl", "sl", "the", "and", "et", "de", "la", "le", "les", "du", "des",
        "m", "mr", "mme", "mlle", "mrs", "ms", "dr",
    }
)  # fmt: skip
_WEBMAIL = frozenset(
    {
        "gmail", "googlemail", "hotmail", "outlook", "live", "msn", "yahoo", "ymail", "orange",
        "wanadoo", "free", "sfr", "neuf", "laposte", "icloud", "me", "mac", "aol", "gmx",
        "protonmail", "proton", "bbox", "numericable", "club-internet", "aliceadsl", "yandex",
        "mail",
    }
)  # fmt: skip
_ROLE_MAILBOXES = frozenset(
    {
        "contact", "compta", "comptabilite", "accounting", "accounts", "billing", "facturation",
        "factures", "invoices", "info", "infos", "admin", "administration", "direction", "office",
        "secretariat", "bonjour", "hello", "paiement", "payments", "noreply", "no-reply",
    }
)  # fmt: skip


_SECOND_LEVEL = frozenset({"co", "com", "org", "net", "ac", "gov", "gouv", "asso", "ltd", "plc"})


def _name_words(text: str) -> tuple[str, ...]:
    words = re.findall(r"[a-z0-9]+", _fold(text).lower())
    return tuple(w for w in words if len(w) >= 2 and w not in _LEGAL_FORMS)


def _address_words(address: str) -> tuple[str, ...]:
    """A domain's words ("boulangerie-martin.fr"), or for a webmail the mailbox's
    ("jean.martin@gmail.com"); a role mailbox ("compta@") names nobody."""
    local, _, domain = address.lower().rpartition("@")
    labels = domain.split(".")
    if len(labels) >= 3 and labels[-2] in _SECOND_LEVEL:
        labels = labels[:-1]  # acme.co.uk: the name is "acme"
    label = labels[-2] if len(labels) >= 2 else labels[0]
    if label in _WEBMAIL:
        return () if local in _ROLE_MAILBOXES else _name_words(local)
    return _name_words(label)


def payer_matches(payer: str, case: Case) -> bool:
    """Loosely the same party: all the words of one name are among the other's (legal
    forms and titles left out), or the same letters once spaces go (domains glue words):
    "BOULANGERIE MARTIN" is "Boulangerie Martin SARL", boulangerie-martin.fr and
    boulangeriemartin.fr, but "BOULANGERIE DUPONT" is none of them."""
    paying = _address_words(payer) if "@" in payer else _name_words(payer)
    if not paying:
        return False
    names = [_name_words(case.client_name)] + [_address_words(a) for a in case.client_addrs]
    for name in names:
        if not name:
            continue
        if set(paying) <= set(name) or set(name) <= set(paying):
            return True
        if "".join(paying) == "".join(name):
            return True
    return False


def _allocate(notice: PaymentNotice, cases: Sequence[Case], how: str) -> PaymentMatch:
    remaining = notice.amount
    allocations: list[Allocation] = []
    notes: list[str] = []
    for case in cases:
        if remaining <= 0:
            notes.append(f"nothing left for {case.number}")
            continue
        balance = case.balance
        if balance is None:
            allocations.append(Allocation(case.number, remaining, True))
            notes.append(
                f"{case.number}: {money_text(remaining, notice.currency)} paid, "
                "its amount is unknown"
            )
            remaining = Decimal("0")
        elif remaining >= balance:
            allocations.append(Allocation(case.number, balance, True))
            notes.append(f"{case.number} paid ({money_text(balance, case.currency)})")
            remaining -= balance
        else:
            allocations.append(Allocation(case.number, remaining, False))
            notes.append(
                f"{case.number} partly paid: {money_text(remaining, case.currency)} of "
                f"{money_text(balance, case.currency)}, "
                f"{money_text(balance - remaining, case.currency)} still due"
            )
            remaining = Decimal("0")
    if remaining > 0:
        notes.append(f"surplus {money_text(remaining, notice.currency)}")
    return PaymentMatch(tuple(allocations), how, remaining, f"by {how}: " + "; ".join(notes))


def match_payment(notice: PaymentNotice, open_cases: Sequence[Case]) -> PaymentMatch:
    """The case(s) a payment pays: by invoice number (exact, case-insensitive), else by an
    exact open balance unique for that payer. Never guessed: unmatched says why."""
    by_number = {case.number.casefold(): case for case in open_cases}
    named: list[Case] = []
    for number in notice.numbers:
        case = by_number.get(number.casefold())
        if case is not None and case not in named:
            named.append(case)
    if named:
        other = [c for c in named if c.currency != notice.currency]
        if other:
            return PaymentMatch(
                reason=f"{other[0].number} is in {other[0].currency}, "
                f"the payment is in {notice.currency}"
            )
        return _allocate(notice, named, "number")

    shown = money_text(notice.amount, notice.currency)
    same_amount = [
        case
        for case in open_cases
        if case.balance == notice.amount and case.currency == notice.currency
    ]
    if not same_amount:
        return PaymentMatch(reason=f"no open invoice of {shown}")
    if not notice.payer:
        return PaymentMatch(
            reason=f"{_invoices(len(same_amount))} of {shown}, and the payer is not named"
        )
    theirs = [case for case in same_amount if payer_matches(notice.payer, case)]
    if len(theirs) == 1:
        return _allocate(notice, theirs, "amount")
    if theirs:
        return PaymentMatch(reason=f"{_invoices(len(theirs))} of {shown} for {notice.payer}")
    return PaymentMatch(reason=f"{_invoices(len(same_amount))} of {shown}, none for {notice.payer}")


def _invoices(count: int) -> str:
    return f"{count} open invoice{'s' if count > 1 else ''}"


# ---------------------------------------------------------------------------- trust


@dataclass(frozen=True)
class Trust:
    """Whether a command or a payment notice may be acted on, and what proved it."""

    trusted: bool
    how: str  # "notice-reply" | "dkim" | "spf" | "sent-folder" | ""
    reason: str


def _domain_of(value: str) -> str:
    return value.strip().strip("<>\"'").rpartition("@")[2].strip().rstrip(".").lower()


def _aligned(domain: str, from_domain: str) -> bool:
    """Same organisation, the relaxed way: equal, or one a subdomain of the other (a
    single-label domain such as a TLD never aligns)."""
    if not domain or not from_domain or "." not in domain or "." not in from_domain:
        return False
    return (
        domain == from_domain
        or domain.endswith("." + from_domain)
        or from_domain.endswith("." + domain)
    )


def _without_comments(value: str) -> str:
    previous = None
    while previous != value:
        previous, value = value, re.sub(r"\([^()]*\)", " ", value)
    return value


def _auth_results(header: str) -> list[tuple[str, list[tuple[str, str, dict[str, str]]]]]:
    """Each Authentication-Results header (one per line, as parse.py joins them) as
    (authserv-id, [(method, result, {ptype.property: value})])."""
    parsed = []
    for line in header.split("\n"):
        parts = _without_comments(line).split(";")
        head = parts[0].split()
        if not head:
            continue
        results = []
        for part in parts[1:]:
            method = re.match(r"\s*([\w.-]+)\s*=\s*([\w-]+)", part)
            if not method:
                continue
            props = {
                key.lower(): value.strip("\"'")
                for key, value in re.findall(r"([\w-]+\.[\w-]+)\s*=\s*(\"[^\"]*\"|[^\s;]+)", part)
            }
            results.append((method[1].lower(), method[2].lower(), props))
        parsed.append((head[0].lower(), results))
    return parsed


def _authenticated(mail: Mail, authserv_id: str) -> tuple[str, str]:
    """("dkim" | "spf", reason) when our own server vouches for the From domain, else
    ("", why not). Only headers bearing our authserv-id count: anyone can add others.
    This relies on our server removing such headers from incoming mail (RFC 8601 §5),
    which Postfix+OpenDKIM, rspamd and the large providers do."""
    from_domain = _domain_of(mail.from_addr)
    ours = authserv_id.strip().lower()
    seen: list[str] = []
    ignored: list[str] = []
    for server, results in _auth_results(mail.headers.get("authentication-results", "")):
        if server != ours:
            ignored.append(server)
            continue
        for method, result, props in results:
            if method == "dkim":
                domain = props.get("header.d") or _domain_of(props.get("header.i", ""))
                if result == "pass" and _aligned(domain, from_domain):
                    return "dkim", f"dkim=pass for {domain} ({server})"
                seen.append(f"dkim={result} for {domain or '?'}")
            elif method == "spf":
                domain = _domain_of(props.get("smtp.mailfrom", ""))
                if result == "pass" and _aligned(domain, from_domain):
                    return "spf", f"spf=pass for {domain} ({server})"
                seen.append(f"spf={result} for {domain or '?'}")
    if seen:
        return "", f"{ours} saw {', '.join(seen)}, none passing for {from_domain}"
    if ignored:
        return "", f"no Authentication-Results from {ours} (ignored: {', '.join(ignored)})"
    return "", f"no Authentication-Results from {ours}"


def _is_listed(address: str, senders: Iterable[str]) -> bool:
    """An address entry matches exactly; "@bank.fr" or "bank.fr" matches the domain."""
    address = address.lower()
    for entry in senders:
        entry = entry.strip().lower()
        if not entry:
            continue
        if "@" in entry.lstrip("@"):
            if address == entry:
                return True
        elif _domain_of(address) == entry.lstrip("@"):
            return True
    return False


def trust_of(
    mail: Mail,
    *,
    owners: Iterable[str],
    firm_addresses: Iterable[str],
    authserv_id: str,
    notice_ids: frozenset[str],
    folder_is_sent: bool,
) -> Trust:
    """Whether the owner (or, with owners=payment_senders, a bank) really sent this mail.

    Proof, in order: (a) it replies to one of the daemon's notifications, whose
    Message-ID holds a token only the owner received; (b) our receiving server's
    Authentication-Results shows DKIM or SPF passing for the From domain; (c) it sits in
    the mailbox's own Sent folder. The sender must be an owner (in Sent: also a firm
    address), and a mail in Sent must be addressed to the firm or its owners: the firm's
    own mails to clients are never commands. The daemon's own mail never counts."""
    if is_own(mail):
        return Trust(False, "", "written by relance itself")
    owners = tuple(owners)
    firm = tuple(firm_addresses)
    if folder_is_sent:
        if not (_is_listed(mail.from_addr, owners) or _is_listed(mail.from_addr, firm)):
            return Trust(False, "", f"in Sent but from {mail.from_addr or '(nobody)'}")
        strangers = [
            a for a in mail.recipients if not (_is_listed(a, owners) or _is_listed(a, firm))
        ]
        if strangers:
            return Trust(False, "", f"in Sent but addressed to {strangers[0]}: not a command")
    elif not _is_listed(mail.from_addr, owners):
        return Trust(False, "", f"{mail.from_addr or '(nobody)'} is not an owner address")
    replied_to = {i for i in (mail.in_reply_to, *mail.references) if i}
    if replied_to & notice_ids:
        return Trust(True, "notice-reply", "replies to one of relance's notifications")
    how, why = _authenticated(mail, authserv_id)
    if how:
        return Trust(True, how, why)
    if folder_is_sent:
        return Trust(True, "sent-folder", "in the mailbox's own Sent folder")
    return Trust(False, "", f"unverified: not a reply to a notification; {why}")


# ---------------------------------------------------------------------------- commands

VERBS = {
    "paid": "paid", "paye": "paid", "payee": "paid", "regle": "paid", "reglee": "paid",
    "pause": "pause", "resume": "resume", "reprendre": "resume", "reprise": "resume",
    "stop": "stop", "arret": "stop", "arreter": "stop", "stopper": "stop",
    "facts": "facts", "faits": "facts", "plan": "plan", "echeancier": "plan",
    "sent-lrar": "sent-lrar", "lrar": "sent-lrar",
}  # fmt: skip
_PERIODS = {
    "monthly": "monthly", "mensuel": "monthly", "mensuelle": "monthly", "mois": "monthly",
    "month": "monthly", "weekly": "weekly", "hebdo": "weekly", "hebdomadaire": "weekly",
    "semaine": "weekly", "week": "weekly",
}  # fmt: skip


@dataclass(frozen=True)
class Command:
    """One command line the owner wrote; `number` None means "the case of this thread"."""

    verb: str  # "paid" | "pause" | "resume" | "stop" | "facts" | "plan" | "sent-lrar"
    line: str  # as written, for the confirmation
    number: str | None = None
    amount: Decimal | None = None  # paid AMOUNT; facts amount=
    duration: timedelta | None = None  # pause 14d
    until: date | None = None  # pause until DATE
    due: date | None = None  # facts due=
    count: int | None = None  # plan 3x
    period: str | None = None  # plan: "monthly" | "weekly"
    sent_on: date | None = None  # sent-lrar DATE (None: today)


_DATE_RE = re.compile(
    r"(?P<y>\d{4})-(?P<m>\d{1,2})-(?P<d>\d{1,2})|(?P<d2>\d{1,2})[/.](?P<m2>\d{1,2})[/.](?P<y2>\d{4})"
)
_DURATION_RE = re.compile(r"\d+\s*(?:d|days?|j|jours?|w|weeks?|semaines?)", re.IGNORECASE)
_NUMBER_TOKEN_RE = re.compile(
    r"(?<!\S)(?=\S*\d)(?=\S*[A-Za-z/_-])[A-Za-z0-9](?:[A-Za-z0-9]|[._/-](?=[A-Za-z0-9]))*(?!\S)"
)


def _parse_date(text: str) -> date | None:
    m = _DATE_RE.fullmatch(text.strip())
    if not m:
        return None
    try:
        if m["y"]:
            return date(int(m["y"]), int(m["m"]), int(m["d"]))
        return date(int(m["y2"]), int(m["m2"]), int(m["d2"]))
    except ValueError:
        return None


def _take_number(args: str) -> tuple[str | None, str]:
    """An invoice number among the arguments (letters or a dash with digits, and not a
    duration, a date, a count or an amount), and the arguments without it."""
    for match in _NUMBER_TOKEN_RE.finditer(args):
        token = match.group()
        if (
            _DURATION_RE.fullmatch(token)
            or _DATE_RE.fullmatch(token)
            or re.fullmatch(r"\d{1,2}[/.]\d{1,2}", token)  # a date without its year
            or re.fullmatch(r"\d+x", token, re.IGNORECASE)
            or re.fullmatch(r"(?:EUR)?[\d.,]+(?:EUR)?", token, re.IGNORECASE)
        ):
            continue
        rest = (args[: match.start()] + " " + args[match.end() :]).strip()
        return token, " ".join(rest.split())
    return None, args


def _parse_command(verb: str, line: str, args: str) -> Command:
    number, args = _take_number(args)
    folded = _fold(args).lower()
    if verb == "paid":
        amount = parse_amount(args) if args else None
        return Command(verb, line, number, amount=amount)
    if verb in ("resume", "stop"):
        if args:
            raise CommandRefused(f"{verb} takes nothing but an invoice number")
        return Command(verb, line, number)
    if verb == "pause":
        if not args:
            return Command(verb, line, number)  # until `resume`
        until = re.fullmatch(r"(?:until|jusqu'(?:au|a)|jusqu'|au)\s*(.+)", folded)
        if until:
            on = _parse_date(until[1])
            if on is None:
                raise CommandRefused(
                    f'"{until[1]}" is not a date; expected 2026-12-20 or 20/12/2026'
                )
            return Command(verb, line, number, until=on)
        if _DURATION_RE.fullmatch(folded):
            return Command(verb, line, number, duration=parse_duration(folded))
        on = _parse_date(folded)
        if on is not None:
            return Command(verb, line, number, until=on)
        raise CommandRefused("pause needs a duration like 14d or a date (pause until 2026-12-20)")
    if verb == "facts":
        pairs = re.findall(r"([\w-]+)\s*=\s*(.*?)(?=\s+[\w-]+\s*=|$)", args)
        if not pairs:
            raise CommandRefused("facts needs amount=1234.56 and/or due=2026-12-15")
        amount, due = None, None
        for key, value in pairs:
            key = _fold(key).lower()
            if key in ("amount", "montant"):
                amount = parse_amount(value)
            elif key in ("due", "echeance"):
                due = _parse_date(value)
                if due is None:
                    raise CommandRefused(f'"{value}" is not a date; expected 2026-12-15')
            else:
                raise CommandRefused(f'unknown fact "{key}"; expected amount= or due=')
        return Command(verb, line, number, amount=amount, due=due)
    if verb == "plan":
        m = re.fullmatch(r"(\d+)\s*x\s*(?:par\s+)?(\S+)", folded)
        if not m or m[2] not in _PERIODS:
            raise CommandRefused("plan needs a count and a period, like 3x monthly or 4x weekly")
        count = int(m[1])
        if not 2 <= count <= 36:
            raise CommandRefused(f"a plan has 2 to 36 instalments, not {count}")
        return Command(verb, line, number, count=count, period=_PERIODS[m[2]])
    # sent-lrar
    if not args:
        return Command(verb, line, number)
    on = _parse_date(folded)
    if on is None:
        raise CommandRefused("sent-lrar takes the posting date, like sent-lrar 2026-12-18")
    return Command(verb, line, number, sent_on=on)


def parse_commands(text: str) -> tuple[list[Command], list[str]]:
    """The commands in the first lines of a mail, and an error per malformed command line.
    Reading stops at the first line that is not a command (a greeting, a signature) and
    at quoted history, so a quoted "stop" never counts."""
    commands: list[Command] = []
    errors: list[str] = []
    for raw in new_part(text).split("\n"):
        line = raw.strip()
        if not line:
            continue
        words = line.rstrip(".!").split(None, 1)
        verb = VERBS.get(_fold(words[0]).lower().rstrip(":"))
        if verb is None:
            break
        args = words[1].strip() if len(words) > 1 else ""
        try:
            commands.append(_parse_command(verb, line, args))
        except CommandRefused as refused:
            errors.append(f'"{line}": {refused}')
    return commands, errors


# ---------------------------------------------------------------------------- instalments


def _add_months(start: date, months: int) -> date:
    month_index = start.month - 1 + months
    year, month = start.year + month_index // 12, month_index % 12 + 1
    return date(year, month, min(start.day, calendar.monthrange(year, month)[1]))


def plan_instalments(
    balance: Decimal, count: int, period: str, start: date
) -> list[tuple[date, Decimal]]:
    """The instalments of a plan: equal parts, the odd cents on the first ones, so that
    they add up to the balance exactly; monthly dates keep the day (or the month's last)."""
    if count < 1:
        raise CommandRefused(f"a plan needs at least one instalment, not {count}")
    if period not in ("monthly", "weekly"):
        raise CommandRefused(f'unknown period "{period}"; expected monthly or weekly')
    cents = int((balance.quantize(CENT, rounding=ROUND_HALF_UP) * 100).to_integral_value())
    if cents <= 0:
        raise CommandRefused("nothing is left to pay")
    share, odd = divmod(cents, count)
    return [
        (
            _add_months(start, i) if period == "monthly" else start + timedelta(weeks=i),
            (Decimal(share + (1 if i < odd else 0)) / 100).quantize(CENT),
        )
        for i in range(count)
    ]


# ---------------------------------------------------------------------------- digest

BUCKETS = ("0-30", "31-60", "61-90", "90+")
OWING_STATES = frozenset(
    {CaseState.CHASING, CaseState.PAUSED, CaseState.NEEDS_FACTS, CaseState.BAD_ADDRESS,
     CaseState.FORMAL_NOTICE}
)  # fmt: skip
_NEEDS_OWNER = {
    CaseState.NEEDS_FACTS: "needs its amount or due date",
    CaseState.BAD_ADDRESS: "every client address bounced",
    CaseState.FORMAL_NOTICE: "formal notice letter waiting to be sent",
}


@dataclass(frozen=True)
class DigestLine:
    number: str
    client: str
    balance: Decimal | None
    currency: str
    days_late: int | None  # None: no due date known
    note: str  # why paused / what the owner must do / "" for plain open cases


@dataclass(frozen=True)
class Digest:
    """The weekly digest's facts; the template words them."""

    at: datetime
    not_yet_due: tuple[DigestLine, ...]
    late: tuple[tuple[str, tuple[DigestLine, ...]], ...]  # (bucket, lines), BUCKETS order
    outstanding: tuple[tuple[str, Decimal], ...]  # (currency, total), by currency
    paid: tuple[DigestLine, ...]  # balance: the amount paid
    paused: tuple[DigestLine, ...]
    needs_owner: tuple[DigestLine, ...]

    @property
    def empty(self) -> bool:
        return not (
            self.not_yet_due
            or any(lines for _, lines in self.late)
            or self.paid
            or self.paused
            or self.needs_owner
        )


def _bucket(days_late: int) -> str:
    if days_late <= 30:
        return BUCKETS[0]
    if days_late <= 60:
        return BUCKETS[1]
    if days_late <= 90:
        return BUCKETS[2]
    return BUCKETS[3]


def digest(cases: Sequence[Case], now: datetime, paid_since: Sequence[Case]) -> Digest:
    """Open cases by how late they are (1-30 days late is "0-30"; due today or later is
    "not yet due"), sums owed per currency, what was paid, what waits and why."""
    today = now.date()
    not_yet_due: list[DigestLine] = []
    late: dict[str, list[DigestLine]] = {bucket: [] for bucket in BUCKETS}
    outstanding: dict[str, Decimal] = {}
    paused: list[DigestLine] = []
    needs_owner: list[DigestLine] = []
    for case in sorted(cases, key=lambda c: (c.due_date or date.max, c.number)):
        if case.state not in OWING_STATES:
            continue
        days_late = None if case.due_date is None else (today - case.due_date).days
        line = DigestLine(
            case.number,
            case.client_name or ", ".join(case.client_addrs),
            case.balance,
            case.currency,
            days_late,
            "",
        )
        if case.balance is not None:
            outstanding[case.currency] = outstanding.get(case.currency, Decimal("0")) + (
                case.balance
            )
        if days_late is not None:
            if days_late <= 0:
                not_yet_due.append(line)
            else:
                late[_bucket(days_late)].append(line)
        if case.state == CaseState.PAUSED:
            until = f" until {case.paused_until:%Y-%m-%d}" if case.paused_until else ""
            paused.append(dataclasses.replace(line, note=(case.reason or "paused") + until))
        elif case.state in _NEEDS_OWNER:
            needs_owner.append(
                dataclasses.replace(line, note=case.reason or _NEEDS_OWNER[case.state])
            )
    paid = tuple(
        DigestLine(
            c.number, c.client_name or ", ".join(c.client_addrs), c.paid, c.currency, None, c.reason
        )
        for c in paid_since
    )
    return Digest(
        at=now,
        not_yet_due=tuple(not_yet_due),
        late=tuple((bucket, tuple(late[bucket])) for bucket in BUCKETS),
        outstanding=tuple(sorted(outstanding.items())),
        paid=paid,
        paused=tuple(paused),
        needs_owner=tuple(needs_owner),
    )


_WEEKDAYS = {
    "mon": 0, "monday": 0, "lundi": 0, "tue": 1, "tuesday": 1, "mardi": 1,
    "wed": 2, "wednesday": 2, "mercredi": 2, "thu": 3, "thursday": 3, "jeudi": 3,
    "fri": 4, "friday": 4, "vendredi": 4, "sat": 5, "saturday": 5, "samedi": 5,
    "sun": 6, "sunday": 6, "dimanche": 6,
}  # fmt: skip


def digest_due(
    now: datetime, last_digest_at: datetime | None, day: str = "mon", hour: int = 8
) -> bool:
    """Whether the latest weekly slot (`day` at `hour`, in now's time zone) has passed
    without a digest; a slot missed while the daemon was down is caught up once."""
    weekday = _WEEKDAYS.get(day.strip().lower())
    if weekday is None:
        raise ValueError(f'unknown day "{day}"; expected mon, tue, ... or lundi, mardi, ...')
    if not 0 <= hour <= 23:
        raise ValueError(f"the digest hour is 0 to 23, not {hour}")
    slot = now.replace(hour=hour, minute=0, second=0, microsecond=0) - timedelta(
        days=(now.weekday() - weekday) % 7
    )
    if slot > now:
        slot -= timedelta(days=7)
    return last_digest_at is None or last_digest_at < slot


_DIGEST_WORDS = {
    "fr": {"nothing": "Rien en cours.", "owed": "Restant dû", "not_yet_due": "Pas encore échues",
           "late": "En retard de {bucket} jours", "paid": "Réglées depuis le dernier point",
           "paused": "En pause", "owner": "Attendent votre action", "days": "j",
           "more": "  … et {count} autres : `relance status` les liste toutes"},
    "en": {"nothing": "Nothing open.", "owed": "Outstanding", "not_yet_due": "Not yet due",
           "late": "{bucket} days late", "paid": "Paid since the last digest",
           "paused": "Paused", "owner": "Waiting for you", "days": "d",
           "more": "  … and {count} more: `relance status` lists them all"},
}  # fmt: skip


# A digest is read on a phone: each section names its first invoices (the latest first, or
# the soonest due) and counts the rest; a first read of years of mail opened 10k at once.
DIGEST_SECTION_LINES = 25


def format_digest(summary: Digest, language: str = "fr") -> str:
    """The digest as plain text, one section per group, one line per invoice, at most
    `DIGEST_SECTION_LINES` per section."""
    words = _DIGEST_WORDS["en" if language.lower().startswith("en") else "fr"]

    def line(item: DigestLine) -> str:
        amount = money_text(item.balance, item.currency) if item.balance is not None else "?"
        late = f", {item.days_late} {words['days']}" if item.days_late and item.days_late > 0 \
            else ""
        note = f" — {item.note}" if item.note else ""
        return f"  - {item.number}  {item.client}  {amount}{late}{note}"

    out: list[str] = []
    if summary.outstanding:
        totals = ", ".join(money_text(total, cur) for cur, total in summary.outstanding)
        out.append(f"{words['owed']} : {totals}" if language.startswith("fr")
                   else f"{words['owed']}: {totals}")
    sections = [(words["owner"], summary.needs_owner)]
    sections += [(words["late"].format(bucket=bucket), lines) for bucket, lines in summary.late]
    sections += [(words["not_yet_due"], summary.not_yet_due), (words["paused"], summary.paused),
                 (words["paid"], summary.paid)]
    for title, lines in sections:
        if lines:
            out += ["", f"{title} ({len(lines)})",
                    *(line(item) for item in lines[:DIGEST_SECTION_LINES])]
            if len(lines) > DIGEST_SECTION_LINES:
                out.append(words["more"].format(count=len(lines) - DIGEST_SECTION_LINES))
    return "\n".join(out) if out else words["nothing"]
