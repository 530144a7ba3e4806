"""Building the messages relance sends, from a case and a rendered template.

Pure: no I/O, no clock. The shell renders a template (`relance.templates`) against the
context made here, then hands the text back to `build_reminder` or `build_owner_notice`,
which turn it into a ready-to-send `EmailMessage`. Everything that goes into a header is
cleaned here, because header values come from mail the daemon read (subjects, names,
numbers) and must never be able to add a header of their own.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from email import policy as email_policy
from email.headerregistry import Address, BaseHeader, HeaderRegistry, UnstructuredHeader
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from typing import Any, cast
from urllib.parse import quote

from relance.model import (
    Attachment,
    Case,
    Channel,
    Decision,
    Firm,
    InvoiceFacts,
    Mail,
    StepRecord,
)

# Art. D441-5 Code de commerce: the fixed indemnity for recovery costs owed by a business
# client for each invoice paid late (art. L441-10 makes it due without any reminder).
RECOVERY_INDEMNITY = Decimal("40.00")  # EUR

# Art. L441-10 II Code de commerce: unless the terms say otherwise (and never below three
# times the legal interest rate), late-payment penalties run at the ECB refinancing rate
# plus 10 percentage points.
PENALTY_RATE_TEXT = {
    "fr": "taux BCE majoré de 10 points",
    "en": "the ECB rate plus 10 percentage points",
}

_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]+")
_SPACES = re.compile(r"\s+")
_REPLY_PREFIX = re.compile(r"^\s*re\s*(\[\d+\]|\^\d+)?\s*:", re.IGNORECASE)
_DOMAIN_JUNK = re.compile(r"[^A-Za-z0-9.-]")
_KIND_JUNK = re.compile(r"[^A-Za-z0-9-]+")
_QUOTE_START = re.compile(
    r"^\s*(>|(le|on)\b.*(a écrit|wrote)\s*:?\s*$|-{2,}\s*(original|message d'origine|"
    r"forwarded|message transféré)|_{10,}\s*$|(de|from)\s*:.*@)",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Rendered:
    """A template rendered for one message: its subject line, text body, optional HTML."""

    subject: str
    text: str
    html: str | None = None


# The objects templates see. Frozen dataclasses rather than dicts: a dict's own methods
# (`items`, `keys`...) would shadow variables of the same name, and a misspelt attribute
# of a dataclass is reported with the list of the right ones.


@dataclass(frozen=True)
class FirmVars:
    name: str
    sender: str
    email: str  # the bare address of `sender`: the contact a reminder gives
    iban: str
    payment_link: str  # with the invoice number filled in; "" when the firm has none


@dataclass(frozen=True)
class ClientVars:
    name: str
    addresses: tuple[str, ...]


@dataclass(frozen=True)
class InvoiceVars:
    number: str
    amount: Decimal | None
    balance: Decimal | None  # what is still owed: the amount the reminder asks for
    paid: Decimal
    currency: str
    issue_date: date | None
    due_date: date | None
    days_late: int | None  # 0 until the due date has passed; None without a due date
    subject: str


@dataclass(frozen=True)
class StepVars:
    index: int
    name: str
    tone: str


@dataclass(frozen=True)
class InstalmentVars:
    """The instalment a reminder asks for, when the owner agreed a plan."""

    index: int = 1  # counting from 1
    count: int = 1
    date: date | None = None
    owed: Decimal = Decimal("0.00")  # due by this instalment and not yet paid
    plan: tuple[tuple[date, Decimal], ...] = ()


@dataclass(frozen=True)
class LateVars:
    """Late-payment penalties and indemnity as of today, for the later reminders.

    `shown` is false before the rules' `show_from_step`, and for a client who is not a
    business (the indemnity is owed by businesses only).
    """

    rate: Decimal = Decimal("12.15")  # percent a year
    penalties: Decimal = Decimal("0.00")
    indemnity: Decimal = Decimal("40.00")
    total: Decimal = Decimal("0.00")  # balance + penalties + indemnity
    shown: bool = False


@dataclass(frozen=True)
class NoticeVars:
    """What an owner notice reports, beyond the case itself.

    One shape for every kind of notice, so that a misspelt field is caught by
    `relance check` whatever the template: each kind fills the fields it needs.
    """

    kind: str  # "reply" | "bounce" | "letter" | "task" | "needs-facts" | "send-unknown"
    reply_from: str = ""
    reply_date: datetime | None = None
    reply_excerpt: str = ""
    paused_until: datetime | None = None  # None while paused: until the owner resumes
    missing: tuple[str, ...] = ()  # InvoiceFacts.missing: "amount", "due_date"...
    disagreements: tuple[str, ...] = ()
    step_index: int = 0
    step_name: str = ""
    message_id: str = ""
    attempted_at: datetime | None = None
    detail: str = ""  # the server's reply or the reason, as is
    document: str = ""  # the rendered letter or task, for the owner to read and act on
    failed_addresses: tuple[str, ...] = ()  # a bounce: the client addresses refused


def notice_vars(
    kind: str,
    *,
    mail: Mail | None = None,
    facts: InvoiceFacts | None = None,
    missing: Sequence[str] = (),
    letter: Rendered | None = None,
    message_id: str = "",
    step_name: str = "",
    step_index: int = 0,
    attempted_at: datetime | None = None,
    detail: str = "",
    paused_until: datetime | None = None,
    failed_addresses: Sequence[str] = (),
) -> NoticeVars:
    """`NoticeVars` from what the shell has at hand when something needs the owner.

    The mail that triggered the notice gives who wrote, when, and a short excerpt (the
    quoted history cut off: the owner has the whole thread in their mailbox).
    """
    sender = ""
    if mail is not None:
        sender = f"{mail.from_name} <{mail.from_addr}>" if mail.from_name else mail.from_addr
    facts_missing = tuple(facts.missing) if facts is not None else ()
    return NoticeVars(
        kind=kind,
        reply_from=one_line(sender),
        reply_date=mail.date if mail is not None else None,
        reply_excerpt=reply_excerpt(mail.text) if mail is not None else "",
        paused_until=paused_until,
        missing=tuple(dict.fromkeys((*facts_missing, *missing))),
        disagreements=tuple(facts.disagreements) if facts is not None else (),
        step_index=step_index,
        step_name=step_name,
        message_id=message_id,
        attempted_at=attempted_at,
        detail=detail,
        document=letter.text if letter is not None else "",
        failed_addresses=tuple(failed_addresses),
    )


def reply_excerpt(text: str, max_lines: int = 15, max_chars: int = 1200) -> str:
    """The new part of a reply: up to the quoted history, trimmed to a few lines.

    Stops at the first quoted line ("> ..."), at "Le ... a écrit :" / "On ... wrote:",
    or at a forwarded/original-message block, as mail programs write them.
    """
    kept: list[str] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if _QUOTE_START.match(line):
            break
        kept.append(line.rstrip())
    excerpt = "\n".join(kept).strip("\n")
    lines = excerpt.split("\n")
    cut = len(lines) > max_lines or len(excerpt) > max_chars
    excerpt = "\n".join(lines[:max_lines])[:max_chars].rstrip()
    return f"{excerpt}\n[…]" if cut else excerpt


def reminder_message_id(case: Case, step_index: int, domain: str) -> str:
    """The Message-ID of a case's step: the same case and step always give the same id.

    Sending at most once relies on it: the id is recorded before the send, and after a
    crash the Sent folder is searched for it before anything is sent again.
    """
    digest = hashlib.sha256((case.number + case.root_message_id).encode("utf-8")).hexdigest()
    return f"<relance.{digest[:16]}.{int(step_index)}@{_id_domain(domain)}>"


_REMINDER_ID = re.compile(r"^<relance\.[0-9a-f]{16}\.(\d+)@")


def step_of_message_id(message_id: str) -> int | None:
    """The step index a `reminder_message_id` carries, or None for any other id."""
    match = _REMINDER_ID.match(message_id or "")
    return int(match[1]) if match else None


def notice_message_id(
    case_number: str | None, kind: str, at: datetime, domain: str, secret: bytes = b""
) -> str:
    """The Message-ID of a notice to the owner: deterministic, and signed.

    `at` should be the instant of the event reported, so two notices of one kind for one
    case differ and the same event noticed twice gives the same id. The last part is an
    HMAC under the state's secret: a reply to a notice carries this id in In-Reply-To,
    which proves it comes from someone who received the notice (see `is_notice_id`).
    """
    key = f"{case_number or ''}\x00{kind}\x00{at.isoformat()}"
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]
    label = _KIND_JUNK.sub("-", kind).strip("-") or "notice"
    return f"<relance.notice.{label}.{digest}.{_sign(digest, secret)}@{_id_domain(domain)}>"


def _sign(value: str, secret: bytes) -> str:
    return hmac.new(secret, value.encode("ascii"), hashlib.sha256).hexdigest()[:20]


_NOTICE_ID = re.compile(
    r"^<relance\.notice\.[\w-]+\.(?P<digest>[0-9a-f]{16})\.(?P<sig>[0-9a-f]{20})@"
)


def is_notice_id(message_id: str, secret: bytes) -> bool:
    """Whether `message_id` is one of our notices' ids, signed with `secret`."""
    m = _NOTICE_ID.match(message_id.strip())
    return bool(m) and bool(secret) and hmac.compare_digest(_sign(m["digest"], secret), m["sig"])


def thread_subject(subject: str) -> str:
    """The subject of a reply in the thread: "Re: " in front, unless it is already there.

    Only "Re:" variants count ("RE:", "re :", "Re[2]:"); "TR:" or "Fwd:" stay and get a
    "Re: " like any subject, so the client's mail program files the reply in the thread.
    """
    subject = one_line(subject)
    if _REPLY_PREFIX.match(subject):
        return subject
    return f"Re: {subject}".rstrip()


def template_context(
    case: Case,
    decision: Decision | None,
    firm: Firm,
    now: datetime,
    previous: Sequence[StepRecord],
    *,
    notice: NoticeVars | None = None,
    attachments: Sequence[str] = (),
    penalty_rate_text: str | None = None,
    others: Sequence[Case] = (),
    late: LateVars | None = None,
    instalment: InstalmentVars | None = None,
) -> dict[str, object]:
    """The variables a template sees for one case.

    `decision` is the step being carried out (None for a notice that is about no step);
    `previous` the steps already carried out: only those that were really sent are named
    in `previous_reminders`, since a reminder must not cite a message the client never
    got. `attachments` are the file names the message will carry, so a template can say
    what is attached without claiming an invoice that could not be found. `notice` is
    always there (empty when not given), so one sample context can check every template.
    `others` are the client's other invoices due in the same reminder: `invoices` lists
    them all (the case first) so one mail asks for everything, never one mail each.
    """
    today = now.date()
    current = decision.step_index if decision is not None else None
    sent = sorted(
        (r for r in previous if r.outcome == "sent" and (current is None or r.index < current)),
        key=lambda r: r.at,
    )
    previous_dates = tuple(_local(r.at, now).date() for r in sent)
    language = "en" if case.language.lower().startswith("en") else "fr"
    link = firm.payment_link.replace("{number}", quote(case.number, safe=""))
    return {
        "firm": FirmVars(
            name=firm.name,
            sender=firm.sender,
            email=parseaddr(firm.sender)[1],
            iban=firm.iban,
            payment_link=link,
        ),
        "client": ClientVars(name=case.client_name, addresses=tuple(case.client_addrs)),
        "invoice": _invoice_vars(case, today),
        "invoices": tuple(_invoice_vars(c, today) for c in (case, *others)),
        "total_balance": sum((c.balance or Decimal(0) for c in (case, *others)), Decimal(0)),
        "step": None
        if decision is None
        else StepVars(index=decision.step_index, name=decision.step_name, tone=decision.tone),
        "tone": decision.tone if decision is not None else "",
        "previous_reminders": previous_dates,
        "indemnity": RECOVERY_INDEMNITY,
        "penalty_rate_text": penalty_rate_text or PENALTY_RATE_TEXT[language],
        "attachments": tuple(attachments),
        "late": late if late is not None else LateVars(),
        "instalment": instalment if instalment is not None else InstalmentVars(),
        "notice": notice if notice is not None else NoticeVars(kind=""),
        "now": now,
        "today": today,
    }


def _invoice_vars(case: Case, today: date) -> InvoiceVars:
    days_late = None if case.due_date is None else max(0, (today - case.due_date).days)
    return InvoiceVars(
        number=case.number,
        amount=case.amount,
        balance=case.balance,
        paid=case.paid,
        currency=case.currency,
        issue_date=case.issue_date,
        due_date=case.due_date,
        days_late=days_late,
        subject=case.subject,
    )


def build_reminder(
    case: Case,
    decision: Decision,
    firm: Firm,
    rendered: Rendered,
    now: datetime,
    message_id: str,
    attachments: Sequence[Attachment] = (),
    extra_to: Sequence[str] = (),
) -> EmailMessage:
    """A reminder to the client, as a reply to the invoice mail.

    The thread keeps its own subject (the template's Subject line is only used when the
    invoice mail had none), so the client's mail program shows the reminder under the
    invoice. No `Auto-Submitted`: a reminder is business mail and must reach a person.
    Raises ValueError for a step that is not an email, a case with nothing owed, or an
    address that is not one.
    """
    if decision.channel is not Channel.EMAIL:
        raise ValueError(f"step {decision.step_name!r} is a {decision.channel}, not an email")
    if decision.number != case.number:
        raise ValueError(f"decision for {decision.number!r} applied to case {case.number!r}")
    if case.balance is None or case.balance <= 0:
        raise ValueError(f"invoice {case.number!r}: nothing to ask for (balance {case.balance})")
    root = _message_id(case.root_message_id)
    if root is None:
        raise ValueError(f"invoice {case.number!r}: bad Message-ID {case.root_message_id!r}")

    msg = EmailMessage(policy=MAIL_POLICY)
    msg["From"] = one_line(firm.sender)
    msg["To"] = _addresses((*case.client_addrs, *extra_to))
    thread = one_line(case.subject)
    msg["Subject"] = thread_subject(thread) if thread else one_line(rendered.subject)
    msg["Date"] = format_datetime(now)
    msg["Message-ID"] = _checked_id(message_id)
    msg["In-Reply-To"] = root
    msg["References"] = " ".join(_references((*case.root_references, root)))
    msg["X-Relance-Invoice"] = one_line(case.number)
    msg["X-Relance-Step"] = str(decision.step_index)
    _set_body(msg, rendered.text, rendered.html)
    _attach(msg, attachments)
    return msg


def build_owner_notice(
    firm: Firm,
    subject: str,
    text: str,
    now: datetime,
    message_id: str,
    case: Case | None = None,
    in_reply_to: str | None = None,
    *,
    kind: str = "notice",
    attachments: Sequence[Attachment] = (),
) -> EmailMessage:
    """A message to the firm's owners: something needs a human.

    Marked `Auto-Submitted: auto-generated` (RFC 3834) so that no out-of-office answers
    it, and `X-Relance-Notice` so the daemon knows its own notices (an owner's command is
    trusted when it replies to one). `in_reply_to` threads the notices of one case
    together in the owner's mail program. With no owners configured, the notice goes to
    the sender's own address rather than nowhere.
    """
    msg = EmailMessage(policy=MAIL_POLICY)
    msg["From"] = one_line(firm.sender)
    owners = firm.owners or (parseaddr(firm.sender)[1],)
    msg["To"] = _addresses(owners)
    msg["Subject"] = one_line(subject)
    msg["Date"] = format_datetime(now)
    msg["Message-ID"] = _checked_id(message_id)
    if in_reply_to:
        parent = _message_id(in_reply_to)
        if parent is not None:
            msg["In-Reply-To"] = parent
            msg["References"] = parent
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-Relance-Notice"] = one_line(kind) or "notice"
    if case is not None:
        msg["X-Relance-Invoice"] = one_line(case.number)
    _set_body(msg, text, None)
    _attach(msg, attachments)
    return msg


def one_line(value: str) -> str:
    """`value` made safe for a header: line breaks and control characters become spaces.

    This is what stops a client name or subject holding "\\r\\nBcc: ..." from adding a
    header; the email library refuses such values, this keeps the message instead.
    """
    return _SPACES.sub(" ", _CONTROL.sub(" ", value)).strip()


class _MessageIdListHeader(UnstructuredHeader):
    """In-Reply-To and References: folded between ids, never encoded.

    The standard library treats these headers as free text and RFC 2047-encodes an id
    longer than a line (Outlook's often are), which breaks threading. The header object
    folds itself, so this holds whatever policy later flattens the message (aiosmtplib
    flattens with `email.policy.SMTP`).
    """

    def fold(self, *, policy: Any) -> str:
        name = str(cast("BaseHeader", self).name)
        limit = policy.max_line_length or 998
        lines: list[str] = []
        line = f"{name}:"
        for mid in str(self).split():
            if len(line) + 1 + len(mid) > limit and line != f"{name}:":
                lines.append(line)
                line = ""
            line += f" {mid}"
        lines.append(line)
        linesep = str(policy.linesep)
        return linesep.join(lines) + linesep


def _mail_policy() -> email_policy.EmailPolicy[EmailMessage]:
    registry = HeaderRegistry()
    id_list = cast("type[BaseHeader]", _MessageIdListHeader)
    registry.map_to_type("in-reply-to", id_list)
    registry.map_to_type("references", id_list)
    return email_policy.SMTP.clone(header_factory=registry)


# email.policy.SMTP (CRLF line ends), with message-id lists that survive folding.
MAIL_POLICY = _mail_policy()


def _id_domain(domain: str) -> str:
    return _DOMAIN_JUNK.sub("", one_line(domain)).strip(".") or "relance.invalid"


def _message_id(value: str) -> str | None:
    """`value` as one `<id>` fit for a header, or None when it cannot be one."""
    mid = one_line(value)
    if not mid:
        return None
    if not (mid.startswith("<") and mid.endswith(">")):
        mid = f"<{mid.strip('<>')}>"
    inner = mid[1:-1]
    if not inner or not inner.isascii() or any(c in inner for c in " <>"):
        return None
    return mid


def _checked_id(value: str) -> str:
    mid = _message_id(value)
    if mid is None:
        raise ValueError(f"not a Message-ID: {value!r}")
    return mid


def _references(ids: Sequence[str]) -> list[str]:
    """The thread's ids in order, once each; ids that cannot be written are left out."""
    out: list[str] = []
    for value in ids:
        mid = _message_id(value)
        if mid is not None and mid not in out:
            out.append(mid)
    return out


def _addresses(values: Sequence[str]) -> tuple[Address, ...]:
    """Bare addresses as header values, once each; a malformed one is an error, since
    leaving it out would quietly chase fewer people than the invoice named."""
    seen: set[str] = set()
    out: list[Address] = []
    for value in values:
        addr = one_line(value)
        if not addr or addr.lower() in seen:
            continue
        try:
            out.append(Address(addr_spec=addr))
        except (ValueError, TypeError) as exc:  # the header parser's defects are ValueErrors
            raise ValueError(f"not a mail address: {value!r}") from exc
        seen.add(addr.lower())
    if not out:
        raise ValueError("no recipient")
    return tuple(out)


def _set_body(msg: EmailMessage, text: str, html: str | None) -> None:
    msg.set_content(text if text.endswith("\n") else f"{text}\n")
    if html is not None:
        msg.add_alternative(html, subtype="html")


def _attach(msg: EmailMessage, attachments: Sequence[Attachment]) -> None:
    for att in attachments:
        filename = one_line(att.filename) or "attachment"
        maintype, _, subtype = one_line(att.content_type).lower().partition("/")
        if (maintype, subtype) == ("message", "rfc822"):
            if msg.get_content_type() != "multipart/mixed":
                msg.make_mixed()
            msg.attach(_message_part(att.data, filename))
        elif not maintype or not subtype or maintype in ("multipart", "message"):
            msg.add_attachment(
                att.data, maintype="application", subtype="octet-stream", filename=filename
            )
        else:
            msg.add_attachment(att.data, maintype=maintype, subtype=subtype, filename=filename)


def _message_part(raw: bytes, filename: str) -> EmailMessage:
    """An earlier message attached as it was sent, byte for byte.

    Parsing it and letting the library write it out again would refold its headers (and
    encode its long Message-IDs); the attached copy must read as the original did.
    """
    text = raw.decode("ascii", "surrogateescape")
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    body = "\r\n".join(lines)
    if not body.endswith("\r\n"):
        body += "\r\n"
    part = EmailMessage(policy=MAIL_POLICY)
    part["Content-Type"] = "message/rfc822"
    part["Content-Disposition"] = "attachment"
    part.set_param("filename", filename, header="Content-Disposition")
    part["Content-Transfer-Encoding"] = "7bit" if raw.isascii() else "8bit"
    part.set_payload(body)
    return part


def _local(at: datetime, now: datetime) -> datetime:
    """`at` in the time zone of `now` (the firm's), so a date reads as the firm lived it."""
    if at.tzinfo is not None and now.tzinfo is not None:
        return at.astimezone(now.tzinfo)
    return at
