"""Raw invoice mails for the corpus: MIME as mail clients and invoicing tools write it, with
fixed boundaries, dates and Message-IDs so that the same case always gives the same bytes."""

from __future__ import annotations

import datetime as dt
import email.policy
import email.utils
from dataclasses import dataclass
from email.message import EmailMessage
from zoneinfo import ZoneInfo

PARIS = ZoneInfo("Europe/Paris")


@dataclass(frozen=True)
class File:
    filename: str
    data: bytes
    content_type: str = "application/pdf"


def build_mail(
    name: str,
    *,
    sender: str,
    to: str,
    subject: str,
    sent: dt.datetime,
    text: str | None = None,
    html: str | None = None,
    files: tuple[File, ...] = (),
    cc: str = "",
    headers: tuple[tuple[str, str], ...] = (),
    in_reply_to: str = "",
    text_cte: str | None = None,
) -> bytes:
    """One message as it sits in the mailbox (Sent, or INBOX for a BCC copy)."""
    message = EmailMessage(policy=email.policy.SMTP)
    message["From"] = sender
    message["To"] = to
    if cc:
        message["Cc"] = cc
    message["Subject"] = subject
    message["Date"] = email.utils.format_datetime(sent.astimezone(PARIS))
    domain = email.utils.parseaddr(sender)[1].rpartition("@")[2] or "example.invalid"
    message["Message-ID"] = f"<{name}.{sent:%Y%m%d%H%M}@{domain}>"
    if in_reply_to:
        message["In-Reply-To"] = in_reply_to
        message["References"] = in_reply_to
    message["MIME-Version"] = "1.0"
    for key, value in headers:
        message[key] = value
    if text is not None:
        message.set_content(text, cte=text_cte) if text_cte else message.set_content(text)
        if html is not None:
            message.add_alternative(html, subtype="html")
    elif html is not None:
        message.set_content(html, subtype="html")
    for file in files:
        maintype, _, subtype = file.content_type.partition("/")
        message.add_attachment(file.data, maintype=maintype, subtype=subtype,
                               filename=file.filename)
    for index, part in enumerate(message.walk()):
        if part.is_multipart():
            part.set_boundary(f"=_relance_corpus_{name}_{index}")
    return message.as_bytes()


def at(day: str, time: str = "10:15") -> dt.datetime:
    """'2026-11-02', '10:15' in Paris."""
    return dt.datetime.fromisoformat(f"{day}T{time}").replace(tzinfo=PARIS)
