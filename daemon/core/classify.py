"""What an incoming message is, from its headers and text: pure, no I/O.

The daemon acts differently on each kind: a human reply pauses a case, an auto-reply
does not, a bounce flags the address, the daemon's own mail never triggers anything.
"""

from __future__ import annotations

import re
from datetime import date
from enum import StrEnum

from relance.model import Firm, Mail


class Kind(StrEnum):
    OWN = "own"  # written by relance itself (a reminder or a notice)
    FIRM = "firm"  # written by hand by the firm (from one of its addresses)
    AUTO_REPLY = "auto-reply"  # RFC 3834 or an out-of-office
    BOUNCE = "bounce"  # RFC 3464 delivery status notification
    REPLY = "reply"  # a human wrote back


_OOO_SUBJECT = re.compile(
    r"^\s*(auto(matic)?[ -]?(reply|response)|r[ée]ponse automatique|out of (the )?office|"
    r"absen(ce|te?)\b(?!\s+d[e'’])|auto:|autoreply|abwesen|i am away|je suis absente?|"
    r"en cong[ée]s?)",
    re.IGNORECASE,
)
_BOUNCE_SENDER = re.compile(r"^(mailer-daemon|postmaster)@", re.IGNORECASE)
_BOUNCE_SUBJECT = re.compile(
    r"(undeliver|delivery status notification|returned mail|delivery failure|"
    r"delivery (has )?failed|delivery notification|non remis|non distribu|"
    r"échec de (la )?remise|mail delivery failed)",
    re.IGNORECASE,
)


def is_own(mail: Mail) -> bool:
    """Mail relance wrote carries its own headers; it must never be taken as an event."""
    return "x-relance-step" in mail.headers or "x-relance-notice" in mail.headers


def is_auto_reply(mail: Mail) -> bool:
    """RFC 3834 `Auto-Submitted` other than `no`, the common vendor headers, OOO subjects,
    and read receipts (RFC 8098): a client's mail program saying it was opened is no answer.
    """
    if "disposition-notification" in mail.headers.get("content-type", "").lower():
        return True
    auto = mail.headers.get("auto-submitted", "").strip().lower()
    if auto and not auto.startswith("no"):
        return True
    if "x-autoreply" in mail.headers or "x-autorespond" in mail.headers:
        return True
    if mail.headers.get("precedence", "").strip().lower() in ("auto_reply", "auto-reply"):
        return True
    return bool(_OOO_SUBJECT.search(mail.subject))


def is_bounce(mail: Mail) -> bool:
    """A delivery status notification (RFC 3464) or a classic bounce from the mailer daemon."""
    content_type = mail.headers.get("content-type", "").lower()
    if "multipart/report" in content_type and "delivery-status" in content_type:
        return True
    null_sender = mail.headers.get("return-path", "").strip() == "<>"
    daemon_sender = bool(_BOUNCE_SENDER.match(mail.from_addr))
    if not (daemon_sender or null_sender):
        return False
    return bool(_BOUNCE_SUBJECT.search(mail.subject)) or (daemon_sender and not mail.from_name)


def classify(mail: Mail, firm: Firm) -> Kind:
    """The kind of a message, most specific first."""
    if is_own(mail):
        return Kind.OWN
    if mail.from_addr in firm.addresses:
        return Kind.FIRM
    if is_bounce(mail):
        return Kind.BOUNCE
    if is_auto_reply(mail):
        return Kind.AUTO_REPLY
    return Kind.REPLY


_MONTH_NUMBERS = {
    "janvier": 1, "janv": 1, "jan": 1, "january": 1, "fevrier": 2, "février": 2, "fevr": 2,
    "févr": 2, "fev": 2, "fév": 2, "february": 2, "feb": 2, "mars": 3, "mar": 3, "march": 3,
    "avril": 4, "avr": 4, "april": 4, "apr": 4, "mai": 5, "may": 5, "juin": 6, "june": 6,
    "jun": 6, "juillet": 7, "juil": 7, "july": 7, "jul": 7, "aout": 8, "août": 8,
    "august": 8, "aug": 8, "septembre": 9, "sept": 9, "sep": 9, "september": 9,
    "octobre": 10, "october": 10, "oct": 10, "novembre": 11, "november": 11, "nov": 11,
    "decembre": 12, "décembre": 12, "december": 12, "dec": 12, "déc": 12,
}  # fmt: skip
_MONTH_WORD = "|".join(sorted(_MONTH_NUMBERS, key=len, reverse=True))
_RETURN_CUE = (
    r"(?:jusqu'?(?:au|à)|jusqu’(?:au|à)|de retour (?:le|au bureau le)?|retour (?:le|prévu le)|"
    r"until|till|back (?:on|in the office on)?|returning (?:on)?|return(?:ing)? to the office on)"
)
_RETURN_DATE = re.compile(
    _RETURN_CUE + r"\s*(?:le\s+|the\s+|(?:lundi|mardi|mercredi|jeudi|vendredi|samedi|dimanche|"
    r"monday|tuesday|wednesday|thursday|friday|saturday|sunday),?\s+)?(?:"
    r"(?P<nd>\d{1,2})[/.](?P<nm>\d{1,2})(?:[/.](?P<ny>\d{4}|\d{2}))?"
    rf"|(?P<td>\d{{1,2}})(?:er|st|nd|rd|th)?\s+(?P<tm>{_MONTH_WORD})\.?(?:\s+(?P<ty>\d{{4}}))?"
    rf"|(?P<em>{_MONTH_WORD})\.?\s+(?P<ed>\d{{1,2}})(?:st|nd|rd|th)?(?:,?\s+(?P<ey>\d{{4}}))?"
    r"|(?P<iy>\d{4})-(?P<im>\d{2})-(?P<id>\d{2}))",
    re.IGNORECASE,
)


def stated_return(text: str, today: date) -> date | None:
    """The return date an out-of-office states ("absente jusqu'au 4 janvier", "back on
    January 4"), the year inferred as the next such date on or after `today`."""
    m = _RETURN_DATE.search(text)
    if not m:
        return None
    g = m.groupdict()
    try:
        if g["iy"]:
            return date(int(g["iy"]), int(g["im"]), int(g["id"]))
        if g["nd"]:
            day, month, year = int(g["nd"]), int(g["nm"]), g["ny"]
        elif g["td"]:
            day, month, year = int(g["td"]), _MONTH_NUMBERS[g["tm"].lower()], g["ty"]
        else:
            day, month, year = int(g["ed"]), _MONTH_NUMBERS[g["em"].lower()], g["ey"]
        if year:
            full = int(year) + (2000 if len(year) == 2 else 0)
            return date(full, month, day)
        found = date(today.year, month, day)
        return found if found >= today else date(today.year + 1, month, day)
    except (ValueError, KeyError):
        return None
