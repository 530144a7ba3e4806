"""What an incoming message is, from its headers and text: pure, no I/O.

The daemon acts differently on each kind: a human reply pauses a case, an auto-reply
does not, a bounce flags the address, the daemon's own mail never triggers anything.
"""

from __future__ import annotations

import re
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
    r"absen(ce|t)\b|auto:|autoreply|abwesen|i am away|je suis absent|en cong[ée]s?)",
    re.IGNORECASE,
)
_BOUNCE_SENDER = re.compile(r"^(mailer-daemon|postmaster)@", re.IGNORECASE)
_BOUNCE_SUBJECT = re.compile(
    r"(undeliver|delivery status notification|returned mail|delivery failure|"
    r"non remis|non distribu|échec de (la )?remise|mail delivery failed)",
    re.IGNORECASE,
)


def is_own(mail: Mail) -> bool:
    """Mail relance wrote carries its own headers; it must never be taken as an event."""
    return "x-relance-step" in mail.headers or "x-relance-notice" in mail.headers


def is_auto_reply(mail: Mail) -> bool:
    """RFC 3834 `Auto-Submitted` other than `no`, the common vendor headers, OOO subjects."""
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
    return bool(_BOUNCE_SENDER.match(mail.from_addr)) and bool(
        _BOUNCE_SUBJECT.search(mail.subject) or not mail.from_name
    )


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
