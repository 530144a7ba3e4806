"""What `classify` makes of real-looking bounces and out-of-office replies.

DSNs as Postfix, Exim, Exchange / Office 365, Gmail and qmail write them; out-of-office
replies from Exchange, Gmail, Sieve (Dovecot), Zimbra/OVH and client-side rules, in French
and English; plus the DSNs of CPython's email test data when that is installed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from test_listen import raw_mail

from relance.core.classify import Kind, classify, is_auto_reply, is_bounce
from relance.mailbox.parse import parse_message
from relance.model import Firm

FIRM = Firm(
    name="Atelier Dupont",
    sender="Atelier Dupont - Comptabilité <compta@atelier-dupont.fr>",
    addresses=("compta@atelier-dupont.fr",),
    owners=("marie@atelier-dupont.fr",),
)

ORIGINAL_HEADERS = """From: Atelier Dupont - Comptabilite <compta@atelier-dupont.fr>
To: jean@boulangerie-martn.fr
Subject: Facture F-2026-0042 - rappel
Message-ID: <relance.r1.F-2026-0042@atelier-dupont.fr>
X-Relance-Step: 1"""


def dsn(head: str, human: str, status: str, boundary: str = "BOUNDARY-DSN") -> str:
    """A multipart/report DSN (RFC 3464): the words for people, the machine-readable status
    and the returned headers."""
    return f"""{head.strip()}
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="{boundary}"

This is a MIME-encapsulated message.

--{boundary}
Content-Description: Notification
Content-Type: text/plain; charset=utf-8

{human.strip()}

--{boundary}
Content-Description: Delivery report
Content-Type: message/delivery-status

{status.strip()}

--{boundary}
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers

{ORIGINAL_HEADERS}

--{boundary}--
"""


POSTFIX_BOUNCE = dsn(
    """
Return-Path: <>
From: MAILER-DAEMON@mail.atelier-dupont.fr (Mail Delivery System)
Subject: Undelivered Mail Returned to Sender
To: compta@atelier-dupont.fr
Auto-Submitted: auto-replied
Message-Id: <20261123091011.8F1A83A0B2@mail.atelier-dupont.fr>
""",
    """
This is the mail system at host mail.atelier-dupont.fr.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients. It's attached below.

<jean@boulangerie-martn.fr>: Host or domain name not found. Name service error
    for name=boulangerie-martn.fr type=A: Host not found
""",
    """
Reporting-MTA: dns; mail.atelier-dupont.fr
X-Postfix-Queue-ID: 8F1A83A0B2
X-Postfix-Sender: rfc822; compta@atelier-dupont.fr
Arrival-Date: Mon, 23 Nov 2026 10:10:10 +0100 (CET)

Final-Recipient: rfc822; jean@boulangerie-martn.fr
Original-Recipient: rfc822;jean@boulangerie-martn.fr
Action: failed
Status: 5.4.4
Diagnostic-Code: X-Postfix; Host or domain name not found.
""",
)

POSTFIX_USER_UNKNOWN = dsn(
    """
From: MAILER-DAEMON (Mail Delivery System)
Subject: Undelivered Mail Returned to Sender
To: compta@atelier-dupont.fr
Message-Id: <20261123091012.1B2C3D4E5F@mail.atelier-dupont.fr>
""",
    "<jean@boulangerie-martin.fr>: host mx.boulangerie-martin.fr said: 550 5.1.1 User"
    " unknown (in reply to RCPT TO command)",
    """
Reporting-MTA: dns; mail.atelier-dupont.fr

Final-Recipient: rfc822; jean@boulangerie-martin.fr
Action: failed
Status: 5.1.1
Remote-MTA: dns; mx.boulangerie-martin.fr
Diagnostic-Code: smtp; 550 5.1.1 User unknown
""",
)

EXIM_BOUNCE = dsn(
    """
From: Mail Delivery System <Mailer-Daemon@mx1.hebergeur-mutualise.fr>
To: compta@atelier-dupont.fr
Subject: Mail delivery failed: returning message to sender
Message-Id: <E1pXyZ-000Abc-Qr@mx1.hebergeur-mutualise.fr>
X-Failed-Recipients: jean@boulangerie-martin.fr
Auto-Submitted: auto-replied
""",
    """
This message was created automatically by mail delivery software.

A message that you sent could not be delivered to one or more of its
recipients. This is a permanent error. The following address(es) failed:

  jean@boulangerie-martin.fr
    mailbox is full: retry timeout exceeded
""",
    """
Reporting-MTA: dns; mx1.hebergeur-mutualise.fr

Action: failed
Final-Recipient: rfc822;jean@boulangerie-martin.fr
Status: 5.0.0
""",
    boundary="1732359011-eximdsn-1804289383",
)

EXIM_PLAIN_TEXT = """
From: Mail Delivery System <Mailer-Daemon@mx1.hebergeur-mutualise.fr>
To: compta@atelier-dupont.fr
Subject: Mail delivery failed: returning message to sender
Message-Id: <E1pXyZ-000Abd-Rs@mx1.hebergeur-mutualise.fr>
X-Failed-Recipients: jean@boulangerie-martin.fr
Auto-Submitted: auto-replied

This message was created automatically by mail delivery software.

A message that you sent could not be delivered to one or more of its
recipients. This is a permanent error. The following address(es) failed:

  jean@boulangerie-martin.fr
    SMTP error from remote mail server after RCPT TO:<jean@boulangerie-martin.fr>:
    550 No such user

------ This is a copy of the message, including all the headers. ------
"""

EXCHANGE_NDR_EN = dsn(
    """
From: Microsoft Outlook <MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e@atelier-dupont.fr>
To: compta@atelier-dupont.fr
Subject: Undeliverable: Facture F-2026-0042 - rappel
Message-ID: <0d1b2a3c-4e5f-6071-8293-a4b5c6d7e8f9@PR3PR07MB1234.eurprd07.prod.outlook.com>
Auto-Submitted: auto-replied
""",
    """
Your message to jean@boulangerie-martin.fr couldn't be delivered.
jean wasn't found at boulangerie-martin.fr.
""",
    """
Reporting-MTA: dns;PR3PR07MB1234.eurprd07.prod.outlook.com

Final-recipient: RFC822; jean@boulangerie-martin.fr
Action: failed
Status: 5.1.10
Diagnostic-code: smtp;550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found
""",
    boundary="_000_0d1b2a3c_",
)

EXCHANGE_NDR_FR = dsn(
    """
From: Microsoft Outlook <postmaster@atelierdupont.onmicrosoft.com>
To: compta@atelier-dupont.fr
Subject: Non remis : Facture F-2026-0042 - rappel
Message-ID: <1e2f@PR3PR07MB5678.eurprd07.prod.outlook.com>
""",
    """
Votre message à jean@boulangerie-martin.fr n'a pas pu être remis.
jean est introuvable sur boulangerie-martin.fr.
""",
    """
Reporting-MTA: dns;PR3PR07MB5678.eurprd07.prod.outlook.com

Final-recipient: RFC822; jean@boulangerie-martin.fr
Action: failed
Status: 5.1.10
""",
    boundary="_000_1e2f_",
)

EXCHANGE_ONPREM_FR = dsn(
    """
From: Administrateur système <postmaster@client-industrie.fr>
To: compta@atelier-dupont.fr
Subject: Non distribuable : Facture F-2026-0042
Message-ID: <a1b2@EXCH01.client-industrie.local>
""",
    "Votre message n'a pas pu être remis à tous les destinataires.",
    """
Reporting-MTA: dns;EXCH01.client-industrie.local

Final-Recipient: rfc822;achats@client-industrie.fr
Action: failed
Status: 5.2.2
""",
)

GMAIL_BOUNCE = dsn(
    """
From: Mail Delivery Subsystem <mailer-daemon@googlemail.com>
To: compta@atelier-dupont.fr
Subject: Delivery Status Notification (Failure)
Message-ID: <5f8e9d7c.1c69fb81.abcde.1234.GMR@mx.google.com>
Auto-Submitted: auto-replied
""",
    """
** Address not found **

Your message wasn't delivered to paul.leroy@gmial.com because the domain gmial.com
couldn't be found.
""",
    """
Reporting-MTA: dns; googlemail.com

Final-Recipient: rfc822; paul.leroy@gmial.com
Action: failed
Status: 5.1.2
""",
)

QMAIL_FAILURE_NOTICE = """
From: MAILER-DAEMON@mx.petit-hebergeur.net
To: compta@atelier-dupont.fr
Subject: failure notice
Message-ID: <20261123101010.12345.qmail@mx.petit-hebergeur.net>

Hi. This is the qmail-send program at mx.petit-hebergeur.net.
I'm afraid I wasn't able to deliver your message to the following addresses.

<contact@garage-petit.fr>:
Sorry, no mailbox here by that name. (#5.1.1)
"""

SENDMAIL_RETURNED = """
From: Mail Delivery Subsystem <MAILER-DAEMON@relay.example.net>
To: compta@atelier-dupont.fr
Subject: Returned mail: see transcript for details
Message-ID: <202611231010.2AN9AAbc012345@relay.example.net>

The original message was received at Mon, 23 Nov 2026 10:10:10 +0100

   ----- The following addresses had permanent fatal errors -----
<contact@garage-petit.fr>
"""

BOUNCES = [
    ("postfix-host-not-found", POSTFIX_BOUNCE),
    ("postfix-user-unknown", POSTFIX_USER_UNKNOWN),
    ("exim-dsn", EXIM_BOUNCE),
    ("exim-plain-text", EXIM_PLAIN_TEXT),
    ("exchange-online-en", EXCHANGE_NDR_EN),
    ("exchange-online-fr", EXCHANGE_NDR_FR),
    ("exchange-on-premises-fr", EXCHANGE_ONPREM_FR),
    ("gmail", GMAIL_BOUNCE),
    ("qmail", QMAIL_FAILURE_NOTICE),
    ("sendmail-plain-text", SENDMAIL_RETURNED),
]


@pytest.mark.parametrize("raw", [c[1] for c in BOUNCES], ids=[c[0] for c in BOUNCES])
def test_bounces_are_bounces(raw: str) -> None:
    mail = raw_mail(raw)
    assert is_bounce(mail)
    assert classify(mail, FIRM) is Kind.BOUNCE


POSTFIX_DELAYED = dsn(
    """
From: MAILER-DAEMON@mail.atelier-dupont.fr (Mail Delivery System)
Subject: Delayed Mail (still being retried)
To: compta@atelier-dupont.fr
Auto-Submitted: auto-replied
Message-Id: <20261123141011.9A8B7C6D5E@mail.atelier-dupont.fr>
""",
    """
This is the mail system at host mail.atelier-dupont.fr.

####################################################################
# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #
####################################################################

Your message could not be delivered for more than 4 hour(s).
It will be retried until it is 5 day(s) old.
""",
    """
Reporting-MTA: dns; mail.atelier-dupont.fr

Final-Recipient: rfc822; jean@boulangerie-martin.fr
Action: delayed
Status: 4.4.1
Will-Retry-Until: Sat, 28 Nov 2026 10:10:10 +0100 (CET)
""",
)


def test_a_delay_warning_flags_no_address() -> None:
    """A delay warning looks like a bounce, but only permanent failures flag an address."""
    from relance.listening import _bounce_addresses

    assert classify(raw_mail(POSTFIX_DELAYED), FIRM) is Kind.BOUNCE
    assert _bounce_addresses(POSTFIX_DELAYED.strip().encode()) == frozenset()
    assert _bounce_addresses(POSTFIX_USER_UNKNOWN.strip().encode()) == {
        b"jean@boulangerie-martin.fr"
    }


# ------------------------------------------------------------------ out of office

OOO_EXCHANGE_FR = """
From: Jean Martin <jean.martin@boulangerie-martin.fr>
To: compta@atelier-dupont.fr
Subject: Réponse automatique : Facture F-2026-0042 - rappel
Message-ID: <ooo1@boulangerie-martin.fr>
Auto-Submitted: auto-generated
X-Auto-Response-Suppress: All

Bonjour, je suis absent jusqu'au 4 janvier. Pour toute urgence : 01 23 45 67 89.
"""

OOO_EXCHANGE_EN = """
From: Anna Smith <anna.smith@acme-trading.co.uk>
To: compta@atelier-dupont.fr
Subject: Automatic reply: Invoice F-2026-0051 overdue
Message-ID: <ooo2@acme-trading.co.uk>
Auto-Submitted: auto-generated

I am out of the office until January 4 with no access to email.
"""

OOO_GMAIL_VACATION = """
From: Paul Leroy <paul.leroy@gmail.com>
To: compta@atelier-dupont.fr
Subject: Re: Facture F-2026-0044
Message-ID: <CAvac@mail.gmail.com>
Auto-Submitted: auto-replied

Bonjour, je suis en congés jusqu'au 3 janvier inclus.
"""

OOO_SIEVE_VACATION = """
From: Sophie Bernard <sophie@bernard-archi.fr>
To: compta@atelier-dupont.fr
Subject: Auto: Rappel : facture F-2026-0046
Message-ID: <dovecot-sieve-1732359011-123456-0@mail.bernard-archi.fr>
Auto-Submitted: auto-replied (vacation)
Precedence: bulk

Absente du 21 décembre au 4 janvier.
"""

OOO_ZIMBRA_X_AUTOREPLY = """
From: Compta Durand <compta@durand-sa.fr>
To: compta@atelier-dupont.fr
Subject: Absence du bureau
Message-ID: <z2@durand-sa.fr>
X-Autoreply: yes

Le service comptable est fermé jusqu'au 2 janvier.
"""

OOO_PRECEDENCE = """
From: Tom Baker <tom@bakerdesign.com>
To: compta@atelier-dupont.fr
Subject: Re: Invoice F-2026-0045
Message-ID: <pre@bakerdesign.com>
Precedence: auto_reply

Thanks for your email. I'm away and back on Monday, January 4.
"""

OOO_X_AUTORESPOND = """
From: Claire Petit <c.petit@garage-petit.fr>
To: compta@atelier-dupont.fr
Subject: Re: Facture F-2026-0060
Message-ID: <ar@garage-petit.fr>
X-Autorespond: Facture F-2026-0060

Le garage est fermé pour congés annuels.
"""

AUTO_REPLIES = [
    ("exchange-fr", OOO_EXCHANGE_FR),
    ("exchange-en", OOO_EXCHANGE_EN),
    ("gmail-vacation", OOO_GMAIL_VACATION),
    ("sieve-vacation", OOO_SIEVE_VACATION),
    ("zimbra-x-autoreply", OOO_ZIMBRA_X_AUTOREPLY),
    ("precedence-auto-reply", OOO_PRECEDENCE),
    ("x-autorespond", OOO_X_AUTORESPOND),
]


@pytest.mark.parametrize("raw", [c[1] for c in AUTO_REPLIES], ids=[c[0] for c in AUTO_REPLIES])
def test_out_of_office_by_its_headers(raw: str) -> None:
    mail = raw_mail(raw)
    assert is_auto_reply(mail)
    assert classify(mail, FIRM) is Kind.AUTO_REPLY


OOO_SUBJECTS = [
    "Absence du bureau",
    "Absence du bureau : Facture F-2026-0042",
    "Absent du bureau jusqu'au 4 janvier",
    "Réponse automatique : Facture F-2026-0042 - rappel",
    "RE: Réponse automatique",
    "réponse automatique",
    "Automatic reply: Invoice F-2026-0051",
    "Auto Reply: Invoice F-2026-0051",
    "Autoreply: Facture F-2026-0042",
    "Out of Office: Invoice F-2026-0051 overdue",
    "Out of the office",
    "AUTO: Jean Martin est absent(e)",
    "Je suis absent",
    "En congés",
    "Abwesenheitsnotiz: Rechnung F-2026-0042",
]
_RE_PREFIXED = {"RE: Réponse automatique"}


@pytest.mark.parametrize("subject", OOO_SUBJECTS)
def test_out_of_office_by_its_subject_alone(subject: str) -> None:
    """Client-side rules and old responders send no Auto-Submitted: the subject tells."""
    mail = raw_mail(
        f"From: Jean Martin <jean@boulangerie-martin.fr>\nTo: compta@atelier-dupont.fr\n"
        f"Subject: {subject}\nMessage-ID: <s@b>\n\nJe suis absent."
    )
    expected = Kind.REPLY if subject in _RE_PREFIXED else Kind.AUTO_REPLY
    assert classify(mail, FIRM) is expected


def test_feminine_out_of_office_subject() -> None:
    mail = raw_mail(
        "From: Claire Petit <c.petit@garage-petit.fr>\nTo: compta@atelier-dupont.fr\n"
        "Subject: Absente du bureau jusqu'au 4 janvier\nMessage-ID: <f@b>\n\nAbsente."
    )
    assert classify(mail, FIRM) is Kind.AUTO_REPLY


HUMAN_REPLIES = [
    ("re-subject", "Re: Facture F-2026-0042", {}),
    ("auto-submitted-no", "Re: Facture F-2026-0042", {"Auto-Submitted": "no"}),
    ("auto-submitted-no-upper", "Re: Facture F-2026-0042", {"Auto-Submitted": "No"}),
    ("reply-to-an-ooo", "RE: Réponse automatique : Facture F-2026-0042", {}),
    ("words-inside", "Re: Facture F-2026-0042 (absence de bon de commande)", {}),
    ("list-precedence", "Re: Facture F-2026-0042", {"Precedence": "list"}),
]


@pytest.mark.parametrize(
    ("subject", "headers"), [c[1:] for c in HUMAN_REPLIES], ids=[c[0] for c in HUMAN_REPLIES]
)
def test_human_replies_are_replies(subject: str, headers: dict[str, str]) -> None:
    extra = "".join(f"{k}: {v}\n" for k, v in headers.items())
    mail = raw_mail(
        f"From: Jean Martin <jean@boulangerie-martin.fr>\nTo: compta@atelier-dupont.fr\n"
        f"Subject: {subject}\nMessage-ID: <h@b>\n{extra}\nBonjour, bien reçu."
    )
    assert classify(mail, FIRM) is Kind.REPLY


def test_a_subject_about_a_missing_attachment_is_a_reply() -> None:
    mail = raw_mail(
        "From: Jean Martin <jean@boulangerie-martin.fr>\nTo: compta@atelier-dupont.fr\n"
        "Subject: Absence de pièce jointe - facture F-2026-0042\nMessage-ID: <pj@b>\n\n"
        "Bonjour, la facture n'était pas jointe à votre relance."
    )
    assert classify(mail, FIRM) is Kind.REPLY


READ_RECEIPT = """
From: Jean Martin <jean@boulangerie-martin.fr>
To: compta@atelier-dupont.fr
Subject: Lu : Facture F-2026-0042 - rappel
Message-ID: <mdn1@boulangerie-martin.fr>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=disposition-notification;
\tboundary="MDN"

--MDN
Content-Type: text/plain; charset=utf-8

Votre message a été lu le lundi 23 novembre 2026 11:02:03 (UTC+01:00).

--MDN
Content-Type: message/disposition-notification

Reporting-UA: boulangerie-martin.fr; Microsoft Outlook 16.0
Final-Recipient: rfc822;jean@boulangerie-martin.fr
Original-Message-ID: <relance.r1.F-2026-0042@atelier-dupont.fr>
Disposition: manual-action/MDN-sent-manually; displayed

--MDN--
"""


def test_a_read_receipt_is_not_a_reply() -> None:
    assert classify(raw_mail(READ_RECEIPT), FIRM) is Kind.AUTO_REPLY


def test_the_daemons_own_mail_and_the_firms() -> None:
    own = raw_mail(
        "From: compta@atelier-dupont.fr\nTo: jean@boulangerie-martin.fr\n"
        "Subject: Réponse automatique : test\nMessage-ID: <o@a>\nX-Relance-Step: 2\n\nRappel"
    )
    assert classify(own, FIRM) is Kind.OWN
    notice = raw_mail(
        "From: compta@atelier-dupont.fr\nTo: marie@atelier-dupont.fr\n"
        "Subject: [relance] F-2026-0042\nMessage-ID: <n@a>\nX-Relance-Notice: reply\n\nx"
    )
    assert classify(notice, FIRM) is Kind.OWN
    firm = raw_mail(
        "From: Atelier Dupont <Compta@Atelier-Dupont.fr>\nTo: jean@boulangerie-martin.fr\n"
        "Subject: Re: Facture F-2026-0042\nMessage-ID: <f@a>\n\nBien noté."
    )
    assert classify(firm, FIRM) is Kind.FIRM


# ------------------------------------------------------------------ CPython's test data


def _cpython_email_data() -> Path | None:
    spec = importlib.util.find_spec("test")
    if spec is None or not spec.submodule_search_locations:
        return None
    data = Path(next(iter(spec.submodule_search_locations))) / "test_email" / "data"
    return data if data.is_dir() else None


CPYTHON_DATA = _cpython_email_data()
CPYTHON_DSNS = {"msg_05.txt", "msg_25.txt", "msg_43.txt"}  # multipart/report delivery-status
CPYTHON_DSN_MISSED = "msg_16.txt"  # Sun Internet Mail Server, no report-type parameter
needs_cpython_data = pytest.mark.skipif(
    CPYTHON_DATA is None, reason="CPython's Lib/test/test_email/data is not installed"
)


def _cpython_message(name: str) -> bytes:
    assert CPYTHON_DATA is not None
    return (CPYTHON_DATA / name).read_bytes()


@needs_cpython_data
@pytest.mark.parametrize("name", sorted(CPYTHON_DSNS))
def test_cpython_dsns_are_bounces(name: str) -> None:
    assert classify(parse_message(_cpython_message(name)), FIRM) is Kind.BOUNCE


@needs_cpython_data
def test_cpython_dsn_without_report_type_is_a_bounce() -> None:
    assert classify(parse_message(_cpython_message(CPYTHON_DSN_MISSED)), FIRM) is Kind.BOUNCE


@needs_cpython_data
def test_cpython_ordinary_messages_are_neither_bounces_nor_auto_replies() -> None:
    assert CPYTHON_DATA is not None
    names = sorted(
        p.name
        for p in CPYTHON_DATA.glob("msg_*.txt")
        if p.name not in CPYTHON_DSNS | {CPYTHON_DSN_MISSED}
    )
    assert len(names) > 30
    kinds = {name: classify(parse_message(_cpython_message(name)), FIRM) for name in names}
    assert {name: kind for name, kind in kinds.items() if kind is not Kind.REPLY} == {}
